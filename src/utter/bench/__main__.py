"""``python -m utter.bench [options]``: the same as ``utter bench [options]``."""

import sys

from .commands import main

sys.exit(main(["bench", *sys.argv[1:]]))
