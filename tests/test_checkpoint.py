"""Model references resolve to checked folders, and every failure reads as one useful sentence.

Hub behaviour is tested for real, in subprocesses (huggingface_hub reads HF_HUB_OFFLINE and
HF_ENDPOINT at import time): offline mode, this machine's own network (the hub is unreachable
here), and a hub that accepts connections but never answers, which must not hang the command.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from utter.engine import checkpoint as ck
from utter.engine.checkpoint import KNOWN_MODELS, CheckpointError, download_checkpoint, resolve_checkpoint

MODEL = KNOWN_MODELS[0]
REQUIRED = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "speech_tokenizer/config.json",
    "speech_tokenizer/model.safetensors",
    "speech_tokenizer/preprocessor_config.json",
]
BASE_CONFIG = {
    "architectures": ["Qwen3TTSForConditionalGeneration"],
    "model_type": "qwen3_tts",
    "tokenizer_type": "qwen3_tts_tokenizer_12hz",
    "tts_model_size": "0b6",
    "tts_model_type": "base",
}


def _write_checkpoint(folder: Path, config: dict | None = None) -> Path:
    """The official layout with stand-in contents: only names and the config fields are checked."""
    (folder / "speech_tokenizer").mkdir(parents=True, exist_ok=True)
    for name in REQUIRED:
        (folder / name).write_text("{}", encoding="utf-8")
    (folder / "config.json").write_text(json.dumps(config or BASE_CONFIG), encoding="utf-8")
    (folder / "speech_tokenizer" / "config.json").write_text(
        json.dumps({"model_type": "qwen3_tts_tokenizer_12hz"}), encoding="utf-8"
    )
    return folder


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything asks the hub."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the hub must not be contacted here")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", refuse)
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", refuse)


def _run(code: str, env: dict[str, str], timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``code`` in a fresh interpreter (so huggingface_hub reads ``env`` at import)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and k != "UTTER_HUB_TIMEOUT"}
    full_env.update(env)
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc, time.monotonic() - start


RESOLVE_HUB_ID = f"""
    from utter.engine.checkpoint import CheckpointError, resolve_checkpoint
    try:
        resolve_checkpoint({MODEL!r})
    except CheckpointError as exc:
        print("CHECKPOINT-ERROR", exc)
    else:
        print("RESOLVED")
"""


def _assert_one_clear_offline_message(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout.strip()
    assert proc.returncode == 0, proc.stderr
    assert out.startswith("CHECKPOINT-ERROR "), (out, proc.stderr)
    message = out.removeprefix("CHECKPOINT-ERROR ")
    assert "\n" not in message
    assert MODEL in message
    assert "--model /path/to/folder" in message
    assert f"utter download {MODEL}" in message
    assert "Traceback" not in proc.stderr
    return message


# --- local folders ------------------------------------------------------------------------------


def test_complete_folder_resolves_to_itself(tmp_path: Path, no_network: None) -> None:
    folder = _write_checkpoint(tmp_path / "ckpt")
    assert resolve_checkpoint(str(folder)) == folder.resolve()
    assert resolve_checkpoint(f"  {folder}  ") == folder.resolve()


@pytest.mark.parametrize("name", REQUIRED)
def test_each_missing_file_is_named(tmp_path: Path, name: str, no_network: None) -> None:
    folder = _write_checkpoint(tmp_path / "ckpt")
    (folder / name).unlink()
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint(str(folder))
    message = str(info.value)
    assert f"missing: {name} (" in message
    assert str(folder) in message
    others = [n for n in REQUIRED if n != name and n not in name]
    assert not [n for n in others if f"{n} (" in message]


def test_all_missing_files_are_listed_at_once(tmp_path: Path, no_network: None) -> None:
    folder = _write_checkpoint(tmp_path / "ckpt")
    for name in ("generation_config.json", "speech_tokenizer/model.safetensors"):
        (folder / name).unlink()
    with pytest.raises(
        CheckpointError, match=r"generation_config\.json .*; speech_tokenizer/model\.safetensors"
    ):
        resolve_checkpoint(str(folder))


def test_empty_folder(tmp_path: Path, no_network: None) -> None:
    with pytest.raises(CheckpointError, match="incomplete; missing: config.json") as info:
        resolve_checkpoint(str(tmp_path))
    assert "speech_tokenizer/preprocessor_config.json" in str(info.value)


def test_sharded_weights(tmp_path: Path, no_network: None) -> None:
    folder = _write_checkpoint(tmp_path / "ckpt")
    (folder / "model.safetensors").unlink()
    index = {
        "metadata": {},
        "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    (folder / "model-00001-of-00002.safetensors").write_text("x", encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"missing: model-00002-of-00002\.safetensors \(weight shard"):
        resolve_checkpoint(str(folder))
    (folder / "model-00002-of-00002.safetensors").write_text("x", encoding="utf-8")
    assert resolve_checkpoint(str(folder)) == folder.resolve()
    assert [p.name for p in ck.weight_files(folder)] == sorted(set(index["weight_map"].values()))


def test_tokenizer_json_replaces_vocab_and_merges(tmp_path: Path, no_network: None) -> None:
    folder = _write_checkpoint(tmp_path / "ckpt")
    (folder / "vocab.json").unlink()
    (folder / "merges.txt").unlink()
    (folder / "tokenizer.json").write_text("{}", encoding="utf-8")
    assert resolve_checkpoint(str(folder)) == folder.resolve()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"tts_model_type": "voice_conversion"}, "unknown kind (tts_model_type 'voice_conversion')"),
        ({"tokenizer_type": "qwen3_tts_tokenizer_25hz"}, "qwen3_tts_tokenizer_25hz speech tokenizer"),
        ({"model_type": "qwen2"}, "holds a qwen2 model"),
    ],
)
def test_refuses_other_models(tmp_path: Path, change: dict, expected: str, no_network: None) -> None:
    folder = _write_checkpoint(tmp_path / "ckpt", {**BASE_CONFIG, **change})
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint(str(folder))
    message = str(info.value)
    assert expected in message
    assert all(m in message for m in KNOWN_MODELS)


def test_refuses_a_25hz_speech_tokenizer_folder(tmp_path: Path, no_network: None) -> None:
    folder = _write_checkpoint(tmp_path / "ckpt")
    (folder / "speech_tokenizer" / "config.json").write_text(
        json.dumps({"model_type": "qwen3_tts_tokenizer_25hz"}), encoding="utf-8"
    )
    with pytest.raises(CheckpointError, match="qwen3_tts_tokenizer_25hz speech tokenizer"):
        resolve_checkpoint(str(folder))


def test_broken_config_json_is_named(tmp_path: Path, no_network: None) -> None:
    folder = _write_checkpoint(tmp_path / "ckpt")
    (folder / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"config\.json \(model configuration\) cannot be read as JSON"):
        resolve_checkpoint(str(folder))


def test_a_file_is_not_a_folder(tmp_path: Path, no_network: None) -> None:
    folder = _write_checkpoint(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=r"is a file; it must be the checkpoint folder\. Did you mean"):
        resolve_checkpoint(str(folder / "config.json"))


@pytest.mark.parametrize(
    "model", ["/no/such/folder", "./models/missing", "~/definitely-missing-utter", "a/b/c"]
)
def test_nonexistent_path_that_is_no_hub_id(model: str, no_network: None) -> None:
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint(model)
    message = str(info.value)
    assert message.startswith("There is no checkpoint folder at ")
    assert str(Path(model).expanduser().absolute()) in message
    assert "not a hub id" in message


def test_empty_model(no_network: None) -> None:
    with pytest.raises(CheckpointError, match="No model given"):
        resolve_checkpoint("  ")


def test_hub_id_shapes() -> None:
    assert all(ck.looks_like_hub_id(m) for m in KNOWN_MODELS)
    assert ck.looks_like_hub_id("someone/my-model_v1.2")
    for not_an_id in ("/abs/path", "./x/y", "../x", "~/x", "a/b/c", "x", "a//b", "a/../b", ".hidden/x"):
        assert not ck.looks_like_hub_id(not_an_id), not_an_id


# --- hub ids --------------------------------------------------------------------------------------


def _fake_cache(cache: Path, complete: bool = True) -> Path:
    """A Hugging Face cache holding a snapshot of MODEL, in the layout huggingface_hub writes."""
    commit = "5d83992436eae1d760afd27aff78a71d676296fc"
    repo = cache / ("models--" + MODEL.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")
    snapshot = _write_checkpoint(repo / "snapshots" / commit)
    if not complete:
        (snapshot / "speech_tokenizer" / "model.safetensors").unlink()
    return snapshot


def test_cached_hub_id_resolves_without_network(tmp_path: Path, no_network: None) -> None:
    snapshot = _fake_cache(tmp_path / "hub")
    assert resolve_checkpoint(MODEL, cache_dir=str(tmp_path / "hub")) == snapshot


def test_cached_hub_id_in_offline_mode(tmp_path: Path) -> None:
    snapshot = _fake_cache(tmp_path / "hub")
    proc, _ = _run(
        f"""
        from utter.engine.checkpoint import resolve_checkpoint
        print(resolve_checkpoint({MODEL!r}))
        """,
        {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(snapshot)


def test_incomplete_cache_offline_says_how_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cache(tmp_path / "hub", complete=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="offline mode is on") as info:
        resolve_checkpoint(MODEL, cache_dir=str(tmp_path / "hub"))
    assert "--model /path/to/folder" in str(info.value)


def test_offline_mode_fails_fast_with_one_message(tmp_path: Path) -> None:
    proc, seconds = _run(RESOLVE_HUB_ID, {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    message = _assert_one_clear_offline_message(proc)
    assert "HF_HUB_OFFLINE=1" in message
    assert seconds < 30


def _hub_reachable() -> bool:
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=3):
            return True
    except OSError:
        return False


def test_real_network_without_the_hub_fails_fast_with_one_message(tmp_path: Path) -> None:
    """This machine's own network: the hub is not reachable, so no download can start."""
    if _hub_reachable():
        pytest.skip("the hub is reachable from here; this test is about machines where it is not")
    proc, seconds = _run(RESOLVE_HUB_ID, {"HF_HOME": str(tmp_path / "hf"), "UTTER_HUB_TIMEOUT": "5"})
    message = _assert_one_clear_offline_message(proc)
    assert "hub cannot be reached" in message
    assert seconds < 30


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never answers: a hub behind a broken proxy."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=2)
    for conn in held:
        conn.close()
    server.close()


def test_a_silent_hub_times_out_instead_of_hanging(tmp_path: Path, silent_server: int) -> None:
    env = {
        "HF_HOME": str(tmp_path / "hf"),
        "HF_ENDPOINT": f"http://127.0.0.1:{silent_server}",
        "UTTER_HUB_TIMEOUT": "1",
    }
    proc, seconds = _run(RESOLVE_HUB_ID, env, timeout=60)
    message = _assert_one_clear_offline_message(proc)
    assert "no answer within 1 s" in message
    assert seconds < 20


def test_hub_timeout_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UTTER_HUB_TIMEOUT", raising=False)
    monkeypatch.delenv("HF_HUB_ETAG_TIMEOUT", raising=False)
    assert ck.hub_timeout() == ck.DEFAULT_HUB_TIMEOUT_S
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "7")
    assert ck.hub_timeout() == 7.0
    monkeypatch.setenv("UTTER_HUB_TIMEOUT", "2.5")
    assert ck.hub_timeout() == 2.5
    monkeypatch.setenv("UTTER_HUB_TIMEOUT", "soon")
    assert ck.hub_timeout() == 7.0


# --- utter download ---------------------------------------------------------------------------------


def test_download_of_a_local_folder_is_a_no_op(tmp_path: Path, no_network: None) -> None:
    folder = _write_checkpoint(tmp_path / "ckpt")
    assert download_checkpoint(str(folder), None) == folder.resolve()


def test_download_into_a_complete_target_is_a_no_op(tmp_path: Path, no_network: None) -> None:
    target = _write_checkpoint(tmp_path / "target")
    assert download_checkpoint(MODEL, str(target)) == target.resolve()


def test_download_needs_a_hub_id(no_network: None) -> None:
    with pytest.raises(CheckpointError, match="not a hub id"):
        download_checkpoint("/no/such/folder", None)


def test_download_offline_fails_with_one_message(tmp_path: Path) -> None:
    code = f"""
        from utter.engine.checkpoint import CheckpointError, download_checkpoint
        try:
            download_checkpoint({MODEL!r}, {str(tmp_path / "out")!r})
        except CheckpointError as exc:
            print("CHECKPOINT-ERROR", exc)
    """
    proc, seconds = _run(code, {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    _assert_one_clear_offline_message(proc)
    assert seconds < 30


def test_download_to_a_file_is_refused(tmp_path: Path, no_network: None) -> None:
    target = tmp_path / "file"
    target.write_text("x", encoding="utf-8")
    with pytest.raises(CheckpointError, match="is a file"):
        download_checkpoint(MODEL, str(target))
