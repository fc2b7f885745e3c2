"""Running the real `sia` console script in a subprocess, as users and scripts do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

SIA = [sys.executable, "-m", "sia"]


def sia(home: Path, *args: str, check: bool = True, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "SIA_HOME": str(home), "COLUMNS": "200", **(env or {})}
    result = subprocess.run([*SIA, *args], capture_output=True, text=True, env=environment,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"sia {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def sia_json(home: Path, *args: str) -> Any:
    return json.loads(sia(home, *args, "--json").stdout)
