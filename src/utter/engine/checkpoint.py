"""Turn ``--model`` (a local folder or a Hugging Face hub id) into a checked checkpoint folder.

Users meet this module first, usually with a typo, a half-copied folder or no internet, so every
failure is a :class:`CheckpointError` whose message says what is wrong and what to do, in one
line the CLI can print as is. Offline use is the normal case, not an error path: a folder is used
as is, a hub id is looked up in the local cache before any network access, and when the hub has
to be asked the question is bounded by a short timeout instead of the OS's TCP timeouts.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# The checkpoints this engine implements (Qwen3-TTS, 12.5 Hz codec): the voice-cloning "Base"
# models, the preset-speaker "CustomVoice" ones and the "VoiceDesign" one.
KNOWN_MODELS = (
    "Qwen/Qwen3-TTS-12Hz-0.6B-Base",
    "Qwen/Qwen3-TTS-12Hz-1.7B-Base",
    "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice",
    "Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice",
    "Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign",
)

# Values of the released configs (verified against the official ``qwen_tts`` package and the
# published config.json files): config.json ``model_type``/``tokenizer_type``/``tts_model_type``
# and speech_tokenizer/config.json ``model_type``.
MODEL_TYPE = "qwen3_tts"
TOKENIZER_TYPE = "qwen3_tts_tokenizer_12hz"
VARIANTS = {"base": "Base", "custom_voice": "CustomVoice", "voice_design": "VoiceDesign"}

# Files the official loader (and ours) reads, with what each one is for.
SPEECH_TOKENIZER_FILES = {
    "speech_tokenizer/config.json": "speech tokenizer configuration",
    "speech_tokenizer/model.safetensors": "speech tokenizer weights",
    "speech_tokenizer/preprocessor_config.json": "speech tokenizer feature extractor settings",
}
TEXT_TOKENIZER_FILES = {
    "tokenizer_config.json": "text tokenizer configuration",
    "vocab.json": "text tokenizer vocabulary",
    "merges.txt": "text tokenizer merges",
}

DEFAULT_HUB_TIMEOUT_S = 10.0
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}$")


class CheckpointError(RuntimeError):
    """A model reference that cannot be used; the message is written for the end user."""


def hub_timeout() -> float:
    """Seconds to wait for the hub before calling it unreachable.

    ``UTTER_HUB_TIMEOUT`` wins, then huggingface_hub's own ``HF_HUB_ETAG_TIMEOUT``; the default
    keeps a blocked network from stalling a command for the two minutes a TCP connect can take.
    """
    for name in ("UTTER_HUB_TIMEOUT", "HF_HUB_ETAG_TIMEOUT"):
        value = os.environ.get(name, "").strip()
        if value:
            try:
                seconds = float(value)
            except ValueError:
                logger.warning("ignoring %s=%r: not a number of seconds", name, value)
                continue
            if seconds > 0:
                return seconds
    return DEFAULT_HUB_TIMEOUT_S


def looks_like_hub_id(model: str) -> bool:
    """``owner/name`` with the characters the hub allows, and nothing path-like (``./``, ``~``, ``..``)."""
    return bool(_HUB_ID.match(model)) and ".." not in model and not model.startswith(".")


def _offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub saw it at import, or as the environment says now."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return bool(constants.HF_HUB_OFFLINE) or env in {"1", "ON", "YES", "TRUE"}


def _how_to_get_it(model: str) -> str:
    return (
        f"Point Utter at a local copy with `--model /path/to/folder`, or pre-fetch it where the hub is "
        f"reachable with `utter download {model} --dir /path/to/folder` and copy that folder here."
    )


def _unreachable(model: str, reason: str) -> CheckpointError:
    return CheckpointError(
        f"Cannot get model {model!r}: there is no local folder of that name, it is not in the local "
        f"Hugging Face cache, and the hub cannot be reached ({reason}). {_how_to_get_it(model)}"
    )


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} ({what}) cannot be read as JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} ({what}) is not a JSON object")
    return data


def weight_files(folder: Path) -> list[Path]:
    """``model.safetensors``, or the shards named by ``model.safetensors.index.json``."""
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index, "weight index").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no weight_map, so the weight shards are unknown")
        return [folder / name for name in sorted(set(weight_map.values()))]
    return []


def missing_files(folder: Path) -> list[str]:
    """Every required file absent from ``folder``, as ``"relative/path (what it is)"``."""
    missing: list[str] = []
    for name, what in (
        ("config.json", "model configuration"),
        ("generation_config.json", "sampling defaults"),
    ):
        if not (folder / name).is_file():
            missing.append(f"{name} ({what})")
    if (folder / "model.safetensors").is_file():
        pass
    elif (folder / "model.safetensors.index.json").is_file():
        for shard in weight_files(folder):
            if not shard.is_file():
                missing.append(f"{shard.name} (weight shard listed in model.safetensors.index.json)")
    else:
        missing.append("model.safetensors (model weights; or model.safetensors.index.json with its shards)")
    text_files = dict(TEXT_TOKENIZER_FILES)
    if (folder / "tokenizer.json").is_file():  # a fast-tokenizer file replaces vocab.json + merges.txt
        text_files = {"tokenizer_config.json": TEXT_TOKENIZER_FILES["tokenizer_config.json"]}
    for name, what in {**text_files, **SPEECH_TOKENIZER_FILES}.items():
        if not (folder / name).is_file():
            missing.append(f"{name} ({what})")
    return missing


def check_model_kind(folder: Path) -> None:
    """Refuse checkpoints that are not Qwen3-TTS 12 Hz models of a known variant, naming what they are."""
    config = _read_json(folder / "config.json", "model configuration")
    supported = " or ".join(KNOWN_MODELS)
    model_type = config.get("model_type")
    if model_type != MODEL_TYPE:
        raise CheckpointError(
            f"{folder} holds a {model_type or 'unknown'!s} model (config.json model_type), not Qwen3-TTS; "
            f"Utter runs {supported}."
        )
    tts_type = config.get("tts_model_type")
    if tts_type not in VARIANTS:
        raise CheckpointError(
            f"{folder} holds a Qwen3-TTS checkpoint of an unknown kind (tts_model_type {tts_type!r}); "
            f"Utter runs {', '.join(VARIANTS.values())} models: {supported}."
        )
    tokenizer_type = config.get("tokenizer_type")
    if tokenizer_type != TOKENIZER_TYPE:
        raise CheckpointError(
            f"{folder} uses the {tokenizer_type or 'unknown'!s} speech tokenizer (config.json "
            f"tokenizer_type); Utter needs the 12 Hz one ({TOKENIZER_TYPE}), as in {supported}."
        )
    codec = _read_json(folder / "speech_tokenizer" / "config.json", "speech tokenizer configuration")
    codec_type = codec.get("model_type")
    if codec_type != TOKENIZER_TYPE:
        raise CheckpointError(
            f"{folder / 'speech_tokenizer' / 'config.json'} describes a {codec_type or 'unknown'!s} speech "
            f"tokenizer; Utter needs {TOKENIZER_TYPE}."
        )


def validate_checkpoint(folder: Path, model: str | None = None) -> None:
    """Check the official on-disk layout and the model kind; say exactly what is wrong."""
    missing = missing_files(folder)
    if missing:
        where = f"{folder}" if model is None or model == str(folder) else f"{folder} (for {model})"
        raise CheckpointError(
            f"The checkpoint folder {where} is incomplete; missing: {'; '.join(missing)}. "
            "Copy the whole checkpoint folder, including its speech_tokenizer/ subfolder."
        )
    check_model_kind(folder)


def _local_folder(model: str) -> Path | None:
    """The folder ``model`` names on disk, or None when nothing exists there."""
    path = Path(model).expanduser()
    if not path.exists():
        return None
    if not path.is_dir():
        hint = f" Did you mean its folder, {path.parent}?" if path.name.endswith(".json") else ""
        raise CheckpointError(f"--model {model} is a file; it must be the checkpoint folder.{hint}")
    return path.resolve()


def _cached_snapshot(repo_id: str, cache_dir: str | None) -> Path | None:
    """The cached snapshot of ``repo_id`` if one exists, without any network access."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True))
    except LocalEntryNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - a damaged cache should fall through to a download
        logger.debug("no usable cached snapshot of %s: %s", repo_id, exc)
        return None


def _probe_hub(repo_id: str, known: tuple[str, ...] = KNOWN_MODELS) -> Any:
    """Ask the hub about ``repo_id`` with a bounded timeout; map failures to user messages."""
    import requests
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    timeout = hub_timeout()
    try:
        return HfApi().model_info(repo_id, timeout=timeout, files_metadata=True)
    except OfflineModeIsEnabled as exc:
        raise _unreachable(repo_id, "offline mode is on: HF_HUB_OFFLINE=1") from exc
    except GatedRepoError as exc:
        raise CheckpointError(
            f"Model {repo_id!r} is gated on the Hugging Face hub: accept its terms on huggingface.co and "
            f"log in with `hf auth login`, then try again. {_how_to_get_it(repo_id)}"
        ) from exc
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise CheckpointError(
            f"There is no local folder {repo_id!r} and no model of that name on the Hugging Face hub. "
            f"Check the spelling; Utter runs {' or '.join(known)}, or give the path of a local folder."
        ) from exc
    except requests.exceptions.Timeout as exc:
        raise _unreachable(
            repo_id, f"no answer within {timeout:g} s; set UTTER_HUB_TIMEOUT to wait longer"
        ) from exc
    except requests.exceptions.ConnectionError as exc:
        raise _unreachable(repo_id, _connection_reason(exc)) from exc
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        raise _unreachable(repo_id, f"the hub answered HTTP {status}") from exc


def _connection_reason(exc: Exception) -> str:
    text = str(exc)
    if "Name or service not known" in text or "NameResolution" in text or "getaddrinfo" in text:
        return "the hub's address cannot be resolved; no internet access?"
    if "ProxyError" in type(exc).__name__ or "Proxy" in text:
        return "the proxy refused the connection"
    return "connection failed"


def _wanted_bytes(info: Any, allow_patterns: list[str] | None) -> int:
    """Bytes of the repository's files a download will fetch (those matching ``allow_patterns``)."""
    total = 0
    for sibling in getattr(info, "siblings", None) or []:
        name, size = getattr(sibling, "rfilename", ""), getattr(sibling, "size", None) or 0
        if allow_patterns is None or any(fnmatch.fnmatch(name, p) for p in allow_patterns):
            total += size
    return total


def _folder_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder``, partial downloads (``*.incomplete``) included."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            try:
                if not os.path.islink(path):
                    total += os.stat(path).st_size
            except OSError:  # renamed or removed while we looked
                pass
    return total


def _watch_progress(
    folder: Path, total: int, progress: Callable[[float], None], done: threading.Event
) -> threading.Thread:
    """Report the downloaded fraction every half second by measuring the files being written.

    huggingface_hub's ``tqdm_class`` only counts finished files (the 2 GB weights file is one
    of ~40), so the bytes on disk are the honest measure for a progress bar.
    """

    def run() -> None:
        while not done.wait(0.5):
            try:
                progress(min(_folder_bytes(folder) / total, 0.99))
            except Exception:  # noqa: BLE001 - a progress display must never break a download
                logger.debug("progress callback failed", exc_info=True)

    thread = threading.Thread(target=run, name="utter-download-progress", daemon=True)
    thread.start()
    return thread


def _download(
    model: str,
    cache_dir: str | None,
    local_dir: str | None,
    progress: Callable[[float], None] | None = None,
    known: tuple[str, ...] = KNOWN_MODELS,
    allow_patterns: list[str] | None = None,
) -> Path:
    """Fetch ``model`` from the hub into the cache (or ``local_dir``) with a progress bar.

    ``progress``, when given, is called from a helper thread with the fraction downloaded (0..1).
    ``known`` are the repositories Utter was tested with (others get a warning);
    ``allow_patterns`` limits the files fetched (hub repos often hold the weights three times:
    safetensors, PyTorch and TensorFlow).
    """
    import requests
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
    from huggingface_hub.file_download import repo_folder_name

    if _offline():
        raise _unreachable(model, "offline mode is on: HF_HUB_OFFLINE=1")
    info = _probe_hub(model, known)
    if model not in known:
        logger.warning("%s is not one of the models Utter was tested with (%s)", model, ", ".join(known))
    where = local_dir or "the Hugging Face cache"
    total = _wanted_bytes(info, allow_patterns)
    logger.info("downloading %s%s to %s", model, f" ({total / 1e9:.1f} GB)" if total else "", where)
    finished = threading.Event()
    if progress is not None and total > 0:
        progress(0.0)
        watched = Path(local_dir) if local_dir else Path(cache_dir or constants.HF_HUB_CACHE)
        if not local_dir:
            watched = watched / repo_folder_name(repo_id=model, repo_type="model")
        _watch_progress(watched, total, progress, finished)
    try:
        # huggingface_hub draws tqdm progress bars (one for the file count, one per large file);
        # HF_HUB_DISABLE_PROGRESS_BARS=1 turns them off.
        path = snapshot_download(
            model,
            revision=getattr(info, "sha", None),
            cache_dir=cache_dir,
            local_dir=local_dir,
            etag_timeout=hub_timeout(),
            allow_patterns=allow_patterns,
        )
    except (OfflineModeIsEnabled, LocalEntryNotFoundError) as exc:
        raise _unreachable(model, "the connection was lost while downloading") from exc
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise _unreachable(model, f"the connection was lost while downloading: {type(exc).__name__}") from exc
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        raise _unreachable(model, f"the hub answered HTTP {status} while downloading") from exc
    finally:
        finished.set()
    if progress is not None:
        progress(1.0)
    return Path(path)


def resolve_checkpoint(
    model: str, cache_dir: str | None = None, progress: Callable[[float], None] | None = None
) -> Path:
    """The checked local folder for ``model``: an existing folder, or a hub id (cache first).

    ``progress`` is called with the downloaded fraction (0..1) only when a download happens, so
    a server can tell "downloading 40%" from "loading".

    Raises :class:`CheckpointError` with a message for the user when the folder is incomplete or
    of the wrong kind, when the path does not exist and is not a hub id, or when a hub id is not
    cached and the hub cannot be reached (HF_HUB_OFFLINE=1 or no network) within the timeout.
    """
    model = model.strip()
    if not model:
        raise CheckpointError("No model given: pass `--model` with a checkpoint folder or a hub id.")
    folder = _local_folder(model)
    if folder is not None:
        validate_checkpoint(folder, model)
        return folder
    if not looks_like_hub_id(model):
        raise CheckpointError(
            f"There is no checkpoint folder at {Path(model).expanduser().absolute()}, and {model!r} is not a "
            f"hub id either (like {KNOWN_MODELS[0]}). Pass `--model` with the folder that holds config.json "
            "and speech_tokenizer/."
        )
    cached = _cached_snapshot(model, cache_dir)
    if cached is not None and not missing_files(cached):
        logger.debug("using the cached snapshot %s", cached)
        validate_checkpoint(cached, model)
        return cached
    if cached is not None:
        logger.info("the cached copy of %s is incomplete; downloading the rest", model)
    folder = _download(model, cache_dir, None, progress)
    validate_checkpoint(folder, model)
    return folder


def download_checkpoint(model: str, target_dir: str | None = None) -> Path:
    """``utter download MODEL [--dir DIR]``: fetch a hub checkpoint and check it.

    With ``target_dir`` the files land there as a plain folder (to copy to an offline machine and
    pass as ``--model``); without it they go to the Hugging Face cache, where
    :func:`resolve_checkpoint` finds them later by hub id.
    """
    model = model.strip()
    folder = _local_folder(model) if model else None
    if folder is not None:
        validate_checkpoint(folder, model)
        logger.info("%s is already a local checkpoint folder; nothing to download", folder)
        return folder
    if not looks_like_hub_id(model):
        raise CheckpointError(
            f"{model!r} is not a hub id (like {KNOWN_MODELS[0]}); `utter download` fetches models from the "
            "Hugging Face hub."
        )
    if target_dir is None:
        return resolve_checkpoint(model)
    target = Path(target_dir).expanduser().resolve()
    if target.is_file():
        raise CheckpointError(f"--dir {target_dir} is a file; give a folder to download into.")
    if target.is_dir() and any(target.iterdir()) and not missing_files(target):
        validate_checkpoint(target, model)
        logger.info("%s already holds a complete checkpoint; nothing to download", target)
        return target
    target.mkdir(parents=True, exist_ok=True)
    folder = _download(model, None, str(target))
    validate_checkpoint(folder, model)
    return folder
