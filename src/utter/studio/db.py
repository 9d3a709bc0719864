"""Database engine, sessions and migrations (SQLite by default, PostgreSQL by URL).

SQLite is run in WAL mode with ``BEGIN IMMEDIATE`` transactions: several worker processes then
queue for the write lock (up to the busy timeout) instead of failing with "database is locked"
when a read transaction tries to become a write one. Alembic owns the schema and runs at
start-up, under a lock so that several processes starting at once migrate only once.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, exc, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Any constant shared by all studio processes: the key of the advisory lock held while migrating.
_PG_MIGRATION_LOCK = 0x75747465  # "utte"


class DatabaseError(RuntimeError):
    """The database cannot be opened or migrated; the message says which and why."""


UNAVAILABLE_MESSAGE = (
    "The studio's database is unavailable right now (restarting or unreachable); retry shortly."
)


_SQLITE_PASSING = {5, 6, 10, 14, 15}  # SQLITE_BUSY, _LOCKED, _IOERR, _CANTOPEN, _PROTOCOL


def is_unavailable(error: BaseException) -> bool:
    """Whether ``error`` says the database could not be reached or used for now (a PostgreSQL
    server restarting or gone, a connection dropped, SQLite locked past its busy timeout): the
    DB-API's OperationalError and InterfaceError, and any error that invalidated its connection.
    Such an error is no fault of the request and passes: 503, and jobs wait instead of failing.
    A full disk is told apart by ``is_storage_full`` before this is asked."""
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    if not isinstance(error, (exc.OperationalError, exc.InterfaceError)):
        return False
    code = getattr(error.orig, "sqlite_errorcode", None)
    # SQLite calls a missing table an OperationalError too: only busy, locked, I/O and "cannot
    # open" pass (primary codes; the extended ones carry them in their low byte).
    return code is None or code & 0xFF in _SQLITE_PASSING


def _normalise_url(url: str) -> str:
    """Plain ``postgresql://`` URLs use psycopg 3 (the driver we ship), not psycopg2."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str) -> Engine:
    try:
        url = _normalise_url(url)
        parsed = make_url(url)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises several kinds for a bad URL
        raise DatabaseError(f"not a database URL ({exc})") from exc
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise DatabaseError(f"{parsed.get_backend_name()} is not supported: use SQLite or PostgreSQL")
    if parsed.get_backend_name() == "postgresql":
        try:
            return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
        except ImportError as exc:
            raise DatabaseError(f"the driver of {describe(url)} is not installed ({exc})") from exc
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # noqa: ANN001 - DBAPI connection
        dbapi_conn.isolation_level = None  # let SQLAlchemy's "begin" event issue BEGIN itself
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # noqa: ANN001 - SQLAlchemy Connection
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def describe(url: str) -> str:
    """The URL without its password, for logs and error messages."""
    return make_url(_normalise_url(url)).render_as_string(hide_password=True)


class Database:
    """One engine and its session factory; ``migrate()`` brings the schema to the newest version."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions: sessionmaker[Session] = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def migrate(self) -> None:
        """Run Alembic up to head, programmatically (the migrations ship inside the package)."""
        # Quiet first: importing alembic's commands logs a line per autogenerate plugin (seven
        # INFO lines per start); the one line that matters is ours, below.
        logging.getLogger("alembic").setLevel(logging.WARNING)
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        try:
            with self.engine.begin() as conn:
                if self.dialect == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except Exception as exc:
            reason = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DatabaseError(
                f"cannot open or migrate the database {describe(self.url)}: {reason}"
            ) from exc
        logger.info("database %s is at the newest schema", describe(self.url))

    def check(self) -> bool:
        """True when the database answers (for the health endpoint)."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception as error:  # noqa: BLE001 - any failure means "not reachable"
            logger.warning("database check failed: %s", error, exc_info=not is_unavailable(error))
            return False

    def dispose(self) -> None:
        self.engine.dispose()
