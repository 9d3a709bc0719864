"""The studio's routes walked with hostile values (see ``tests/test_fuzz_routes.py``), on a studio
of its own (the jobs the walk queues must not slow the shared one), on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import REF_TEXT
from tests.studio.support import StudioServer, audio_bytes, clone, studio_settings
from tests.test_fuzz_routes import Walker


def test_the_studio_answers_every_hostile_request_with_a_4xx(
    database_url, tmp_path: Path, tiny_checkpoint
) -> None:
    url = None if database_url.startswith("sqlite") else database_url
    studio = StudioServer(studio_settings(tmp_path / "data", tiny_checkpoint, url)).start()
    try:
        http = studio.client
        voice = clone(http, "Fuzzed")
        known = {"voice_id": voice, "lang": "English", "transcript": REF_TEXT, "id": voice}
        walker = Walker(http, http.get("/openapi.json").json(), known, audio_bytes(2.0))
        walker.walk()
        assert walker.sent > 300 and not walker.problems, walker.problems[:20]
        assert http.get("/api/health").status_code == 200
    finally:
        studio.stop()
