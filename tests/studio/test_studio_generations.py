"""``/api/generations``: the history list (search, status filter, pages), audio download, delete."""

from __future__ import annotations

import time

import pytest

from tests.studio.support import clone, unique, wait_task


@pytest.fixture(scope="module")
def history(studio) -> dict:
    """Two finished generations and one failed one, tagged so the searches below find only them."""
    client = studio.client
    tag = unique("hist")
    voice = clone(client, f"{tag} voice")
    jobs = [
        client.post(
            "/api/generate", json={"voice_id": voice, "text": f"{tag} number {i}.", "max_frames": 2}
        ).json()
        for i in range(2)
    ]
    gone = clone(client, unique("gone"))
    # Delete the voice's file behind the studio's back (before the job is queued: after, a fast
    # worker may have read it already): the job fails with a reason, nothing crashes.
    (studio.settings.data_dir / "voices" / gone / "reference.wav").unlink()
    failed = client.post(
        "/api/generate", json={"voice_id": gone, "text": f"{tag} fails.", "max_frames": 2}
    ).json()
    for job in [*jobs, failed]:
        wait_task(client, job["task_id"])
    return {"tag": tag, "voice": voice, "jobs": jobs, "failed": failed}


def test_list_shows_each_item_with_its_audio_url(client, history) -> None:
    body = client.get("/api/generations", params={"search": history["tag"]}).json()
    assert body["total"] == 3 and body["page"] == 1 and body["pages"] == 1
    items = {g["id"]: g for g in body["generations"]}
    for job in history["jobs"]:
        g = items[job["generation_id"]]
        assert g["status"] == "completed" and g["task_id"] == job["task_id"]
        assert g["audio_url"] == f"/api/generations/{g['id']}/audio"
        assert g["duration_seconds"] > 0 and g["generation_seconds"] > 0 and g["error_message"] is None
        assert g["voice_name"] == f"{history['tag']} voice" and g["language"] == "Auto"
    bad = items[history["failed"]["generation_id"]]
    assert bad["status"] == "failed" and bad["audio_url"] is None and "deleted" in bad["error_message"]


def test_filters_and_pages(client, history) -> None:
    tag = history["tag"]
    done = client.get("/api/generations", params={"search": tag, "status": "completed"}).json()
    assert done["total"] == 2 and all(g["status"] == "completed" for g in done["generations"])
    assert client.get("/api/generations", params={"search": tag, "status": "failed"}).json()["total"] == 1
    page = client.get("/api/generations", params={"search": tag, "per_page": 1, "page": 3}).json()
    assert page["pages"] == 3 and len(page["generations"]) == 1
    assert (
        client.get("/api/generations", params={"search": f"{tag} voice"}).json()["total"] == 2
    )  # by voice name (the failed one had another voice)
    assert client.get("/api/generations", params={"search": "_"}).json()["total"] == 0
    r = client.get("/api/generations", params={"status": "exploded"})
    assert r.status_code == 422 and "status" in r.json()["detail"]


def test_audio_download(client, history) -> None:
    gen_id = history["jobs"][0]["generation_id"]
    inline = client.get(f"/api/generations/{gen_id}/audio")
    assert inline.status_code == 200 and inline.content[:4] == b"RIFF"
    download = client.get(f"/api/generations/{gen_id}/audio", params={"download": 1})
    assert (
        "attachment" in download.headers["content-disposition"]
        and ".wav" in download.headers["content-disposition"]
    )
    failed = history["failed"]["generation_id"]
    r = client.get(f"/api/generations/{failed}/audio")
    assert r.status_code == 404 and "failed" in r.json()["detail"]


def test_delete_removes_the_row_and_its_audio(client, studio, history) -> None:
    gen_id = history["jobs"][1]["generation_id"]
    wav = studio.settings.data_dir / "generations" / f"{gen_id}.wav"
    assert wav.is_file()
    assert client.delete(f"/api/generations/{gen_id}").status_code == 204
    assert not wav.exists()
    assert client.get(f"/api/generations/{gen_id}").status_code == 404
    assert client.get(f"/api/tasks/{history['jobs'][1]['task_id']}").status_code == 404  # its task went too
    assert client.delete(f"/api/generations/{gen_id}").status_code == 404


def test_deleting_a_running_generation_cancels_it_and_leaves_no_files(client, studio, history) -> None:
    job = client.post(
        "/api/generate", json={"voice_id": history["voice"], "text": "Long text. " * 12, "max_frames": 40}
    ).json()
    wait_task(client, job["task_id"], until=("processing",))
    assert client.delete(f"/api/generations/{job['generation_id']}").status_code == 204
    folder = studio.settings.data_dir / "generations"
    for _ in range(50):  # the worker notices within a heartbeat
        if not any(p.name.startswith(job["generation_id"]) for p in folder.iterdir()):
            break
        time.sleep(0.1)
    assert not any(p.name.startswith(job["generation_id"]) for p in folder.iterdir())
    assert client.get(f"/api/tasks/{job['task_id']}").status_code == 404
