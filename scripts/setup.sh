#!/usr/bin/env bash
# Create .venv and install Utter into it. Usage: scripts/setup.sh [--dev]
# torch is installed first and pinned so that pip takes the CPU wheel on machines without a GPU
# instead of a multi-GB CUDA build; set UTTER_TORCH to choose another torch requirement.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
say() { echo "utter setup: $*" >&2; }  # pip is quiet: say what takes the time
[ -x .venv/bin/python ] || { say "creating .venv"; "$PY" -m venv .venv; }
. .venv/bin/activate
pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! python -c "import torch" 2>/dev/null; then
  say "installing PyTorch (${UTTER_TORCH:-torch==2.13.0}); the first time this takes a few minutes"
  pip install -q "${UTTER_TORCH:-torch==2.13.0}"
fi
say "installing Utter and its dependencies"
if [ "${1:-}" = "--dev" ]; then
  pip install -q -e ".[dev]"
  # The official package is a test-only reference. It pins gradio and torchaudio, which tests
  # do not need (see tests/official.py), so it is installed without its dependencies.
  pip install -q --no-deps "qwen-tts==0.1.1"
else
  pip install -q -e .
fi
say "ready"
