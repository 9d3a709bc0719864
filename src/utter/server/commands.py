"""Command-line pieces of the service, for ``cli.py`` to wire in.

* :func:`register` adds ``utter client`` (the seed's test client, see :mod:`utter.server.client`).
* :func:`add_server_args` defines the server's options; the studio's ``utter serve`` reuses it.
* :func:`run_api_server` is what ``utter serve --api-only`` calls.

Command-line values override ``UTTER_*`` environment variables, which override the defaults in
:class:`~utter.server.settings.ServerSettings`.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from .settings import DEFAULT_MODEL, ServerSettings, bad_setting

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"

# argparse dest -> ServerSettings field, for every option add_server_args defines.
_SETTING_ARGS = {
    "model": "model",
    "device": "device",
    "dtype": "dtype",
    "cache_dir": "cache_dir",
    "host": "host",
    "port": "port",
    "data_dir": "data_dir",
    "api_key": "api_key",
    "max_batch": "max_batch",
    "max_queue": "max_queue",
    "max_text_chars": "max_text_chars",
    "allow_ref_audio_url": "allow_ref_audio_url",
    "extra_models": "extra_models",
}


def add_server_args(parser: argparse.ArgumentParser) -> None:
    """Options of the TTS server. Defaults are None so that UTTER_* variables still apply."""
    g = parser.add_argument_group("TTS service")
    g.add_argument("--model", default=None, help=f"hub id or checkpoint folder (default: {DEFAULT_MODEL})")
    g.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if available)")
    g.add_argument(
        "--dtype",
        "--weight-mode",
        dest="dtype",
        default=None,
        choices=["float32", "bfloat16", "float16", "int8"],
        help="weight format (default: fastest safe for the device and batch size)",
    )
    g.add_argument(
        "--extra-models",
        default=None,
        help="more models beside --model, comma-separated (a CustomVoice and/or VoiceDesign model)",
    )
    g.add_argument("--cache-dir", default=None, help="Hugging Face cache folder for hub ids")
    g.add_argument("--host", default=None, help="address to listen on (default: 127.0.0.1)")
    g.add_argument("--port", type=int, default=None, help="port to listen on (default: 8000)")
    g.add_argument(
        "--data-dir", default=None, help="stored voices and job results (default: ~/.local/share/utter)"
    )
    g.add_argument("--api-key", default=None, help="require this key (better: set UTTER_API_KEY)")
    g.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="requests decoded together (default: 8 on CPUs, 16 on GPUs)",
    )
    g.add_argument("--max-queue", type=int, default=None, help="requests waiting before 429 (default: 64)")
    g.add_argument(
        "--max-text-chars", type=int, default=None, help="longest text per request (default: 5000)"
    )
    g.add_argument(
        "--allow-ref-audio-url",
        action="store_true",
        default=None,
        help="let clients pass ref_audio_url (public http(s) addresses only)",
    )


def settings_from_args(args: argparse.Namespace, **overrides: Any) -> ServerSettings:
    """ServerSettings from the environment, with the options given on the command line on top."""
    given = {
        field: getattr(args, dest)
        for dest, field in _SETTING_ARGS.items()
        if getattr(args, dest, None) is not None
    }
    from pydantic import ValidationError

    try:
        return ServerSettings(**{**given, **overrides})
    except ValidationError as exc:
        raise SystemExit(bad_setting(exc)) from None


def configure_logging(level: int = logging.INFO) -> None:
    """Logs with the request id of each line (``[-]`` outside requests)."""
    from .http.middleware import RequestIdFilter, SingleLineFormatter

    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(SingleLineFormatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def run_api_server(args: argparse.Namespace) -> None:
    """``utter serve --api-only``: the TTS service alone, loading the model in the background."""
    import uvicorn

    from .app import create_app
    from .http.connections import check_address, uvicorn_limits
    from .runtime import EngineHolder

    configure_logging(logging.DEBUG if getattr(args, "debug", False) else logging.INFO)
    settings = settings_from_args(args)
    check_address(settings.host, settings.port)
    holder = EngineHolder.from_settings(settings)
    app = create_app(settings, holder)
    logger.info("serving the TTS API on http://%s:%d (docs at /docs)", settings.host, settings.port)
    # Our middleware logs each request with its id; uvicorn's own access log would repeat it.
    limits = uvicorn_limits(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, access_log=False, log_config=None, **limits)


def _run_client(args: argparse.Namespace) -> None:
    from .clients.client import run

    run(args)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``utter client`` to the CLI's subcommands (dispatched through ``args.func``)."""
    from .clients.client import add_client_args

    client = subparsers.add_parser("client", help="call a running Utter/seed TTS service (test client)")
    add_client_args(client)
    client.set_defaults(func=_run_client)
