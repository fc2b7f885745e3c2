"""Where an installation keeps its state: one home directory, `$SIA_HOME` or `~/.sia`.

Everything lives under it: the SQLite event log, blobs, adapters, built models, caches.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = Path("~/.sia")


def sia_home() -> Path:
    return Path(os.environ.get("SIA_HOME") or DEFAULT_HOME).expanduser()


def database_path(home: Path | None = None) -> Path:
    return (home or sia_home()) / "sia.sqlite"


def blobs_path(home: Path | None = None) -> Path:
    return (home or sia_home()) / "blobs"
