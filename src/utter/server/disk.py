"""How much disk is left for a server's data, so health checks and pages can warn before it runs out.

A full disk does not stop the server (writes answer 507 and jobs wait, see ``http/errors.py``),
but every new voice and stored generation then fails: operators and the studio's page are told
while there is still room to act. No path is shown, as elsewhere in health answers.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

LOW_DISK_MIB = 200.0  # below this a health answer says ``low``: a long generation with its parts is ~60 MB


def disk_status(path: str | Path) -> dict[str, Any]:
    """``{"free_mib": float | None, "low": bool}`` for the file system holding ``path`` (its
    nearest existing folder: the data folder may not exist yet)."""
    here = Path(path).expanduser().absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        free = shutil.disk_usage(here).free / 2**20
    except OSError:
        return {"free_mib": None, "low": False}
    return {"free_mib": round(free, 1), "low": free < LOW_DISK_MIB}
