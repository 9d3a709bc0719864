"""Serve Utter's TTS API on Modal: the same FastAPI app as ``utter serve --api-only``.

This file only wires things together: an image with Utter installed, a Volume for the model
weights (downloaded once, not at every cold start), a Volume for stored voices, one GPU sized
for the model, a scaledown window, and many concurrent requests per container (they are batched
on the GPU by the engine). Everything the service does lives in ``utter.server``.

    modal run deploy/modal_app.py              # download the model into the Volume (once)
    modal deploy deploy/modal_app.py           # serve it; prints the URL
    UTTER_MODAL_SIZE=0.6B modal deploy deploy/modal_app.py   # the smaller model on a T4

Only ``modal`` and the standard library are imported at the top: Modal parses this file on the
deploying machine, which may not have Utter's dependencies (the seed's first deploy failed so).
"""

from __future__ import annotations

import os
from pathlib import Path

import modal

ROOT = Path(__file__).resolve().parent.parent

# Model size -> (checkpoint, GPU). A10G/T4 as the seed's benchmarks chose (1.7B: 24 GB, 0.6B: 16 GB).
SIZES = {
    "1.7B": ("Qwen/Qwen3-TTS-12Hz-1.7B-Base", "A10G"),
    "0.6B": ("Qwen/Qwen3-TTS-12Hz-0.6B-Base", "T4"),
}
SIZE = os.environ.get("UTTER_MODAL_SIZE", "1.7B")
if SIZE not in SIZES:
    raise ValueError(f"UTTER_MODAL_SIZE must be one of {', '.join(SIZES)}, not {SIZE!r}")
MODEL, DEFAULT_GPU = SIZES[SIZE]
GPU = os.environ.get("UTTER_MODAL_GPU", DEFAULT_GPU)
APP_NAME = os.environ.get("UTTER_MODAL_APP", "utter-tts-" + SIZE.lower().replace(".", ""))

MODELS_DIR = "/models"  # Volume: Hugging Face cache with the checkpoints
DATA_DIR = "/data"  # Volume: stored voices (and job results)
SCALEDOWN_WINDOW_S = 300  # keep a warm container 5 minutes after the last request
MAX_INPUTS = 32  # concurrent requests per container; the batcher decodes them together
TIMEOUT_S = 900  # longest request (long texts take minutes)

image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install_from_pyproject(str(ROOT / "pyproject.toml"))
    .env(
        {
            "HF_HOME": f"{MODELS_DIR}/hf",
            "UTTER_MODEL": MODEL,
            "UTTER_DATA_DIR": DATA_DIR,
            "UTTER_HOST": "0.0.0.0",
            "UTTER_MAX_BATCH": "16",
            "UTTER_MAX_QUEUE": str(4 * MAX_INPUTS),
        }
    )
    .add_local_python_source("utter")
)
models_volume = modal.Volume.from_name("utter-models", create_if_missing=True)
data_volume = modal.Volume.from_name("utter-data", create_if_missing=True)
# Optional secret holding UTTER_API_KEY (create it with `modal secret create utter-api UTTER_API_KEY=...`).
SECRETS = [modal.Secret.from_name(name) for name in filter(None, [os.environ.get("UTTER_MODAL_SECRET")])]

app = modal.App(APP_NAME, image=image)


def build_app(holder, **settings):
    """Our FastAPI app around ``holder``; the container's ``enter`` step manages the holder."""
    from utter.server.app import create_app
    from utter.server.settings import ServerSettings

    return create_app(ServerSettings(manage_holder=False, **settings), holder)


@app.function(volumes={MODELS_DIR: models_volume}, timeout=3600)
def download(model: str = MODEL) -> str:
    """Fetch a checkpoint into the models Volume (CPU only; run once per model)."""
    from utter.engine.checkpoint import download_checkpoint

    path = download_checkpoint(model)
    models_volume.commit()
    return str(path)


@app.cls(
    gpu=GPU,
    volumes={MODELS_DIR: models_volume, DATA_DIR: data_volume},
    scaledown_window=SCALEDOWN_WINDOW_S,
    timeout=TIMEOUT_S,
    secrets=SECRETS,
)
@modal.concurrent(max_inputs=MAX_INPUTS)
class Service:
    @modal.enter()
    def load(self) -> None:
        """Load the model before the container takes requests (a cold start waits for this)."""
        from utter.server.runtime import EngineHolder, ModelState
        from utter.server.settings import ServerSettings

        settings = ServerSettings()
        self.holder = EngineHolder.from_settings(settings)
        self.holder.start()
        if self.holder.join() is ModelState.FAILED:
            raise RuntimeError(f"{self.holder.error} {self.holder.hint}")

    @modal.exit()
    def stop(self) -> None:
        self.holder.stop()
        data_volume.commit()

    @modal.asgi_app()
    def web(self):
        return build_app(self.holder)


@app.local_entrypoint()
def main(model: str = MODEL) -> None:
    """``modal run deploy/modal_app.py``: download the model into the Volume."""
    print(f"downloaded {model} to {download.remote(model)}")  # noqa: T201 - a command's output
