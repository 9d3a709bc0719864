"""``utter client``: the seed's test client, against any Utter (or seed) TTS endpoint.

    utter client --endpoint http://127.0.0.1:8000 health
    utter client --endpoint URL languages
    utter client --endpoint URL clone --ref ref.wav --ref-text "..." --text "Hello" -o out.wav
    utter client --endpoint URL batch --ref ref.wav --text "One." --text "Two." --out-dir outs/
    llm ... | utter client --endpoint URL realtime --voice ID -o reply.wav     (realtime.py)

Results (JSON, file names) go to stdout; progress and timings go to the log.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import httpx

logger = logging.getLogger(__name__)


class ClientError(ValueError):
    """A failed call, said in one line. A ValueError so that ``utter`` prints it without a traceback."""


def add_client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint", required=True, help="base URL of the service, e.g. http://127.0.0.1:8000")
    p.add_argument("--api-key", default=None, help="API key, if the service needs one")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for an answer")
    sub = p.add_subparsers(dest="client_command", required=True)
    sub.add_parser("health", help="GET /health")
    sub.add_parser("languages", help="GET /languages")
    for name in ("clone", "batch"):
        c = sub.add_parser(name, help="POST /clone" if name == "clone" else "POST /clone-batch")
        c.add_argument("--ref", required=True, help="reference recording")
        c.add_argument("--ref-text", default=None, help="transcript of the reference (best quality)")
        c.add_argument("--ref-text-file", default=None, help="file holding the transcript")
        c.add_argument("--x-vector-only", action="store_true", help="no transcript; speaker embedding only")
        c.add_argument("--text", action="append", required=True, help="text to speak (batch: repeat it)")
        c.add_argument(
            "--language", action="append", default=None, help="Auto or a language (batch: one per text)"
        )
        c.add_argument("--max-new-tokens", type=int, default=None)
        c.add_argument("--seed", type=int, default=None)
        c.add_argument("--greedy", action="store_true", help="do_sample false")
        if name == "clone":
            c.add_argument("-o", "--output", default="clone_output.wav", help="WAV file to write")
            c.add_argument("--stream", action="store_true", help="receive the audio while it is generated")
        else:
            c.add_argument("--out-dir", default="batch_output", help="folder for the WAV files")
    from .realtime import add_realtime_args

    add_realtime_args(sub)


def _out(data: Any) -> None:
    sys.stdout.write(
        (json.dumps(data, indent=2, ensure_ascii=False) if not isinstance(data, str) else data) + "\n"
    )


def _check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        try:
            body = response.json()
            message = body.get("detail") or body.get("error", {}).get("message") or response.text
        except ValueError:
            message = response.text[:300]
        raise ClientError(
            f"{response.request.method} {response.request.url.path} -> HTTP {response.status_code}: {message}"
        )
    return response


def _reference(args: argparse.Namespace) -> dict[str, Any]:
    ref = Path(args.ref)
    if not ref.is_file():
        raise ClientError(f"reference audio not found: {ref}")
    ref_text = args.ref_text
    if args.ref_text_file:
        ref_text = Path(args.ref_text_file).read_text(encoding="utf-8").strip()
    body: dict[str, Any] = {"ref_audio_base64": base64.b64encode(ref.read_bytes()).decode()}
    if ref_text and not args.x_vector_only:
        body["ref_text"] = ref_text
    else:
        body["x_vector_only"] = True
    for field in ("max_new_tokens", "seed"):
        if getattr(args, field) is not None:
            body[field] = getattr(args, field)
    if args.greedy:
        body["do_sample"] = False
    return body


def run(args: argparse.Namespace) -> None:
    """Run one ``utter client`` command."""
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    base = args.endpoint.rstrip("/")
    started = time.perf_counter()
    if args.client_command == "realtime":
        from .realtime import run_realtime

        result = run_realtime(args, ClientError)
        if args.output != "-":
            _out(result)
        return
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=args.timeout) as http:
            _COMMANDS[args.client_command](http, args)
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot reach {base}: {exc}") from exc
    logger.info("%s took %.2f s", args.client_command, time.perf_counter() - started)


def _health(http: httpx.Client, args: argparse.Namespace) -> None:
    _out(_check(http.get("/health")).json())


def _languages(http: httpx.Client, args: argparse.Namespace) -> None:
    _out(_check(http.get("/languages")).json())


def _clone(http: httpx.Client, args: argparse.Namespace) -> None:
    body = _reference(args) | {"text": " ".join(args.text), "language": (args.language or ["Auto"])[0]}
    output = Path(args.output)
    if args.stream:
        body["stream"] = True
        chunks, first_at, size = 0, None, 0
        started = time.perf_counter()
        with http.stream("POST", "/clone", json=body) as response:
            if response.status_code >= 400:
                response.read()
                _check(response)
            with open(output, "wb") as f:
                for data in response.iter_bytes():
                    first_at = first_at or time.perf_counter() - started
                    chunks, size = chunks + 1, size + len(data)
                    f.write(data)
        logger.info("first audio after %.2f s, %d chunks", first_at or 0.0, chunks)
    else:
        response = _check(http.post("/clone", json=body))
        output.write_bytes(response.content)
        size = len(response.content)
    _out({"output": str(output), "size_bytes": size})


def _batch(http: httpx.Client, args: argparse.Namespace) -> None:
    languages = args.language or ["Auto"]
    if len(languages) == 1:  # one language for every text
        languages = languages * len(args.text)
    body = _reference(args) | {"texts": args.text, "languages": languages}
    result = _check(http.post("/clone-batch", json=body)).json()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for item in result["audio_files"]:
        path = out_dir / f"batch_{item['index']:03d}.wav"
        path.write_bytes(base64.b64decode(item["audio_base64"]))
        written.append(str(path))
    _out({"status": result["status"], "count": result["count"], "files": written})


_COMMANDS = {"health": _health, "languages": _languages, "clone": _clone, "batch": _batch}
