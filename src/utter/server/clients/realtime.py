"""``utter client realtime``: pipe text in (an LLM's output, a terminal), get speech out as it is made.

    llm ... | utter client --endpoint http://127.0.0.1:8000 realtime --voice ID -o reply.wav
    echo "Hello there." | utter client --endpoint URL realtime --voice ID -o - | aplay -f S16_LE -r 24000

Text is sent as it arrives on stdin (whatever the pipe delivers, not line by line), the input
is closed at end of file, and the audio is written as it comes: a WAV file, or raw 16-bit PCM
at 24 kHz to stdout with ``-o -`` for a player. The log says when the first audio came.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

from ...audio.encode import wav_header

logger = logging.getLogger(__name__)


def add_realtime_args(sub: Any) -> None:
    r = sub.add_parser("realtime", help="WS /v1/realtime/speech: speak stdin as it arrives")
    r.add_argument("--voice", required=True, help="id (or unique name) of a stored voice")
    r.add_argument("--language", default=None, help="default: the voice's language")
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--max-frames", type=int, default=None)
    r.add_argument(
        "-o", "--output", default="realtime_output.wav", help="WAV file, or - for raw PCM on stdout"
    )


def _ws_url(endpoint: str, api_key: str | None) -> str:
    base = endpoint.rstrip("/").replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    return base + "/v1/realtime/speech" + (f"?api_key={api_key}" if api_key else "")


def _pump_stdin(ws: Any, stream: BinaryIO) -> None:
    """Send stdin's text as it comes (UTF-8 split safely between reads), then close the input."""
    pending = b""
    fd = stream.fileno()
    while True:
        data = os.read(fd, 4096)
        if not data:
            break
        pending += data
        try:
            text, pending = pending.decode("utf-8"), b""
        except UnicodeDecodeError as exc:  # a character cut between two reads: send the rest later
            text, pending = pending[: exc.start].decode("utf-8"), pending[exc.start :]
        if text:
            ws.send(json.dumps({"type": "text", "text": text}))
    if pending:
        ws.send(json.dumps({"type": "text", "text": pending.decode("utf-8", errors="replace")}))
    ws.send(json.dumps({"type": "close"}))


def run_realtime(args: argparse.Namespace, error: type[Exception]) -> dict[str, Any]:
    """Run one session; returns what it did (for stdout as JSON when writing a file)."""
    from websockets.exceptions import InvalidStatus, WebSocketException
    from websockets.sync.client import connect

    start: dict[str, Any] = {"type": "start", "voice": args.voice, "response_format": "pcm"}
    for field in ("language", "seed", "max_frames"):
        if getattr(args, field) is not None:
            start[field] = getattr(args, field)
    to_stdout = args.output == "-"
    out: BinaryIO = sys.stdout.buffer if to_stdout else open(args.output, "wb")  # noqa: SIM115
    size, first_at, done = 0, None, None
    try:
        if not to_stdout:
            out.write(wav_header())  # unknown length; fixed below once the audio is complete
        with connect(_ws_url(args.endpoint, args.api_key), open_timeout=30, max_size=None) as ws:
            ws.send(json.dumps(start))
            started = time.perf_counter()
            sender = threading.Thread(target=_pump_stdin, args=(ws, sys.stdin.buffer), daemon=True)
            sender.start()
            for message in ws:
                if isinstance(message, bytes):
                    first_at = first_at or time.perf_counter() - started
                    out.write(message)
                    out.flush()
                    size += len(message)
                    continue
                event = json.loads(message)
                if event["type"] == "error":
                    raise error(f"realtime session failed (code {event['code']}): {event['message']}")
                if event["type"] == "done":
                    done = event
    except InvalidStatus as exc:
        status = exc.response.status_code
        raise error(f"the server refused the session (HTTP {status}): check --api-key") from exc
    except (OSError, WebSocketException) as exc:
        raise error(f"cannot reach {args.endpoint}: {exc}") from exc
    finally:
        if not to_stdout:
            if size:
                out.seek(0)
                out.write(wav_header(data_bytes=size))
            out.close()
    if first_at is not None:
        logger.info("first audio %.2f s after the session started", first_at)
    if not to_stdout and not size:
        Path(args.output).unlink(missing_ok=True)
    return {"output": args.output, "size_bytes": size, "done": done}
