"""The tests' throwaway PostgreSQL clusters do not outlive a killed test session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.studio.support import Cluster, pg_bin


def _dead_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_a_cluster_whose_session_was_killed_is_stopped_and_removed_by_the_next() -> None:
    """A session killed by a signal never runs its fixture's cleanup; the next session's sweep
    stops that cluster's server and removes its folder, and leaves a live session's alone."""
    bindir = pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql)")
    root = tempfile.mkdtemp(prefix="utter-pg-sweep-")
    os.chmod(root, 0o755)  # the postgres user reaches its cluster's folder when tests run as root
    try:
        orphan, live = Cluster(bindir, root), Cluster(bindir, root)
        orphan.start()
        (orphan.dir / "owner.pid").write_text(str(_dead_pid()))  # as if its session were killed
        assert _listening(orphan.port)
        swept = Cluster.sweep(bindir, root)
        assert swept == [orphan.dir]
        assert not orphan.dir.exists() and not _listening(orphan.port)
        assert live.dir.exists()  # its owner (this process) still runs
        assert Cluster.sweep(bindir, root) == []
        (Path(root) / f"{Cluster.PREFIX}stranger").mkdir()  # not ours: no owner file, kept
        assert Cluster.sweep(bindir, root) == [] and (Path(root) / f"{Cluster.PREFIX}stranger").exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)
