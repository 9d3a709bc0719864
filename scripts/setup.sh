#!/usr/bin/env bash
# Create .venv and install Utter into it. Usage: scripts/setup.sh [--dev]
# torch is installed first and pinned so that pip takes the CPU wheel on machines without a GPU
# instead of a multi-GB CUDA build; set UTTER_TORCH to choose another torch requirement.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip >/dev/null 2>&1 || true
python -c "import torch" 2>/dev/null || pip install -q "${UTTER_TORCH:-torch==2.13.0}"
if [ "${1:-}" = "--dev" ]; then
  pip install -q -e ".[dev]"
  # The official package is a test-only reference. It pins gradio and torchaudio, which tests
  # do not need (see tests/official.py), so it is installed without its dependencies.
  pip install -q --no-deps "qwen-tts==0.1.1"
else
  pip install -q -e .
fi
