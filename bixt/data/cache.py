"""Where the data readers keep what they derive from the user's (read-only) files."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def default_cache_dir(name: Optional[str] = None) -> Path:
    """``$BIXT_CACHE`` (default ``~/.cache/bixt``), or its subfolder ``name``: one root for every data set."""
    root = Path(os.environ.get("BIXT_CACHE", Path.home() / ".cache" / "bixt"))
    return root / name if name else root
