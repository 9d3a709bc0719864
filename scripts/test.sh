#!/usr/bin/env bash
# Set up a fresh machine and run the whole test suite (what CI runs). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
. .venv/bin/activate
ruff check src tests
python -m pytest -q "$@"
