"""Studio test fixtures: real uvicorn servers over loopback, on SQLite and on PostgreSQL.

PostgreSQL: ``UTTER_TEST_DATABASE_URL`` (a server URL whose user may CREATE DATABASE) when set;
otherwise a throwaway cluster is started with Debian's ``initdb``/``pg_ctl`` (package
``postgresql``) in a temporary folder, as the ``postgres`` user when the tests run as root.
The PostgreSQL tests skip only when neither is available.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.studio.support import (
    Cluster,
    StudioServer,
    new_pg_database,
    pg_bin,
    running_cluster,
    studio_settings,
)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A PostgreSQL server URL (admin database); skips when PostgreSQL is not available."""
    url = os.environ.get("UTTER_TEST_DATABASE_URL")
    if url:
        yield url
        return
    bindir = pg_bin()
    if bindir is None:
        pytest.skip(
            "PostgreSQL is not installed (apt-get install -y postgresql) and UTTER_TEST_DATABASE_URL is unset"
        )
    Cluster.sweep(bindir)  # clusters of earlier sessions killed before their cleanup
    with running_cluster(bindir) as cluster:
        yield cluster.url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database of each kind, for tests below the HTTP layer."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'utter.db'}"
    return new_pg_database(request.getfixturevalue("pg_server"))


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def studio(request: pytest.FixtureRequest, tmp_path_factory, tiny_checkpoint: Path) -> Iterator[StudioServer]:
    """One studio server per database kind, shared by the API tests (they do not depend on order)."""
    data = tmp_path_factory.mktemp(f"studio-{request.param}")
    url = None if request.param == "sqlite" else new_pg_database(request.getfixturevalue("pg_server"))
    server = StudioServer(studio_settings(data, tiny_checkpoint, url)).start()
    yield server
    server.stop()


@pytest.fixture
def client(studio: StudioServer) -> httpx.Client:
    return studio.client
