"""``utter serve``: the studio (pages + API + TTS service under /tts), or the TTS API alone.

Flags become ``UTTER_*`` environment variables before uvicorn starts, so each of the
``--workers`` processes (started fresh by uvicorn) builds the same :class:`StudioSettings`.
The database is migrated once here, before any worker starts, so a bad ``--database-url``
fails at once with one line instead of in every worker.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

logger = logging.getLogger(__name__)

# argparse dest -> environment variable read by StudioSettings / ServerSettings.
_ENV = {
    "model": "UTTER_MODEL",
    "device": "UTTER_DEVICE",
    "dtype": "UTTER_DTYPE",
    "cache_dir": "UTTER_CACHE_DIR",
    "host": "UTTER_HOST",
    "port": "UTTER_PORT",
    "data_dir": "UTTER_DATA_DIR",
    "api_key": "UTTER_API_KEY",
    "max_batch": "UTTER_MAX_BATCH",
    "max_queue": "UTTER_MAX_QUEUE",
    "max_text_chars": "UTTER_MAX_TEXT_CHARS",
    "allow_ref_audio_url": "UTTER_ALLOW_REF_AUDIO_URL",
    "extra_models": "UTTER_EXTRA_MODELS",
    "database_url": "UTTER_DATABASE_URL",
    "tts_endpoint": "UTTER_TTS_ENDPOINT",
    "tts_api_key": "UTTER_TTS_API_KEY",
    "workers": "UTTER_WORKERS",
}
_STUDIO_ONLY = ("database_url", "tts_endpoint", "tts_api_key", "workers")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``utter serve`` to the CLI's subcommands (dispatched through ``args.func``)."""
    from ..server.commands import add_server_args

    serve = subparsers.add_parser(
        "serve",
        help="run the studio in the browser (voices, generate, history) and the TTS API",
        description="Start the Utter studio on an embedded default: SQLite and files under the data "
        "directory, the in-process engine. It serves at once while the model downloads and loads.",
    )
    add_server_args(serve)
    g = serve.add_argument_group("studio")
    g.add_argument(
        "--database-url",
        default=None,
        help="SQLAlchemy URL, e.g. postgresql://user:pass@host/db (default: SQLite in the data directory)",
    )
    g.add_argument(
        "--tts-endpoint",
        default=None,
        help="use a remote utter service (e.g. on Modal) instead of a local model",
    )
    g.add_argument(
        "--tts-api-key", default=None, help="API key of --tts-endpoint (better: UTTER_TTS_API_KEY)"
    )
    g.add_argument(
        "--workers", type=int, default=None, help="worker processes sharing the database (default: 1)"
    )
    g.add_argument("--api-only", action="store_true", help="serve only the TTS API (no studio, no database)")
    serve.set_defaults(func=run_serve)


def _export(args: argparse.Namespace) -> None:
    for dest, var in _ENV.items():
        value = getattr(args, dest, None)
        if value is not None:
            os.environ[var] = str(value).lower() if isinstance(value, bool) else str(value)


def serve_app():  # -> FastAPI; uvicorn's factory, run in every worker process
    """The studio app built from the environment, with logging set up (workers start bare)."""
    from ..server.commands import configure_logging
    from ..server.http.connections import GuardedH11Protocol
    from .app import create_studio_app

    if not logging.getLogger().handlers:
        configure_logging(logging.DEBUG if os.environ.get("UTTER_DEBUG") else logging.INFO)
    app = create_studio_app()
    # Worker processes import the protocol class afresh: give them the configured deadline too.
    GuardedH11Protocol.header_timeout_s = app.state.studio.settings.header_timeout_s
    return app


def run_serve(args: argparse.Namespace) -> None:
    from ..server.commands import configure_logging

    if args.api_only:
        given = [f"--{d.replace('_', '-')}" for d in _STUDIO_ONLY if getattr(args, d, None) is not None]
        if given:
            raise SystemExit(f"utter: error: {', '.join(given)} cannot be used with --api-only")
        from ..server.commands import run_api_server

        run_api_server(args)
        return

    import uvicorn
    from pydantic import ValidationError

    from ..server.http.connections import check_address, uvicorn_limits
    from ..server.settings import bad_setting
    from .db import Database, DatabaseError, describe
    from .login import needs_password
    from .settings import StudioSettings

    _export(args)
    if getattr(args, "debug", False):
        os.environ["UTTER_DEBUG"] = "1"
    configure_logging(logging.DEBUG if getattr(args, "debug", False) else logging.INFO)
    try:
        settings = StudioSettings()
    except ValidationError as exc:
        raise SystemExit(bad_setting(exc)) from exc
    if needs_password(settings.host) and not settings.password_value() and not settings.open_network:
        raise SystemExit(
            f"utter: error: listening on {settings.host} opens the studio to other machines; set a "
            "password (UTTER_PASSWORD) or, on a trusted network, UTTER_OPEN_NETWORK=1"
        )
    check_address(settings.host, settings.port)
    try:
        db = Database(settings.db_url)
        db.migrate()
        db.dispose()
    except DatabaseError as exc:
        raise SystemExit(f"utter: error: {exc}") from exc
    tts = settings.tts_endpoint or f"local model {settings.model}"
    logger.info(
        "Utter studio on http://%s:%d (data %s, database %s, %s, %d worker(s))",
        settings.host,
        settings.port,
        settings.data_dir,
        describe(settings.db_url),
        tts,
        settings.workers,
    )
    uvicorn.run(
        "utter.studio.commands:serve_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers if settings.workers > 1 else None,
        access_log=False,
        log_config=None,
        **uvicorn_limits(settings),
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m utter.studio.commands serve ...`` (the same as ``utter serve ...``)."""
    parser = argparse.ArgumentParser(prog="utter")
    parser.add_argument("--debug", action="store_true")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
