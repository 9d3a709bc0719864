#!/usr/bin/env bash
# Set up (first run only) and run the `utter` command line with the given arguments.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$here/.venv/bin/utter" ] || "$here/scripts/setup.sh"
exec "$here/.venv/bin/utter" "$@"
