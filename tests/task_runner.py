"""Running a task's command line (``python -m bixt.tasks.<task>``) from a test, against this checkout."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]


def run_task_module(module: str, args: list[str], cwd: Path, env: Optional[dict] = None,
                    timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m <module> *args`` in ``cwd`` with this checkout first on the path (so it runs
    the tree under test, installed or not); output captured as text."""
    env = {**os.environ, **(env or {})}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
