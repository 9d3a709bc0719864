#!/usr/bin/env bash
# Set up (first run only) and run the `utter` command line with the given arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/utter ] || scripts/setup.sh
exec .venv/bin/utter "$@"
