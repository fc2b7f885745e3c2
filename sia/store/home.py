"""Where an installation keeps its state: one home directory, `$SIA_HOME` or `~/.sia`.

Everything lives under it: the SQLite event log, blobs, adapters, built models, caches,
and the chain key. The home is private to its owner (mode 0700): that alone keeps every
other user out of everything inside it, whatever mode a library gave the files it made
there; the store's own files are 0600 besides.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

DEFAULT_HOME = Path("~/.sia")
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def sia_home() -> Path:
    return Path(os.environ.get("SIA_HOME") or DEFAULT_HOME).expanduser()


def database_path(home: Path | None = None) -> Path:
    return (home or sia_home()) / "sia.sqlite"


def blobs_path(home: Path | None = None) -> Path:
    return (home or sia_home()) / "blobs"


def chain_key_path(home: Path | None = None) -> Path:
    return (home or sia_home()) / "keys" / "chain.key"


def make_private_dir(path: Path) -> None:
    """Create `path` (and missing parents) as 0700 directories; leave existing ones alone."""
    missing = []
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    for directory in reversed(missing):
        directory.mkdir(mode=PRIVATE_DIR, exist_ok=True)
        os.chmod(directory, PRIVATE_DIR)


def make_home_private(home: Path) -> list[str]:
    """Create the home 0700, or tighten an existing one open to others; says what it changed."""
    make_private_dir(home)
    mode = stat.S_IMODE(home.stat().st_mode)
    if mode & 0o077:
        os.chmod(home, PRIVATE_DIR)
        return [f"{home} was open to other users (mode {mode:04o}); made it private (0700)"]
    return []
