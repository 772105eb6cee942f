"""Reading validated TSV files through Hugging Face ``datasets``, shared by the text tasks.

A task supplies a row generator (``iter_rows(path) -> dicts``, raising its own format error that
names ``path:line``) and the features; :func:`load_tsv_split` caches the parsed split as Arrow
under a cache folder that is never inside the (read-only) data folder. A cache entry is keyed by
the reader's name and version, the file's resolved path, size and modification time, and any
reader options (``options``), so an edited file or changed option is re-read. The generator's
own error, not ``datasets``' wrapper, reaches the caller.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

from bixt.data.cache import default_cache_dir

PathLike = Union[str, Path]


def file_fingerprint(path: PathLike, tag: str, options: str = "") -> str:
    path = Path(path)
    stat = path.stat()
    key = f"{tag}|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{options}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def has_rows(path: PathLike, skip_first: Optional[Callable[[bytes], bool]] = None) -> bool:
    """Whether the file holds a non-blank line (a first line ``skip_first`` accepts, e.g. a header, not counted)."""
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            if lineno == 1 and skip_first is not None and skip_first(line):
                continue
            if line.strip():
                return True
    return False


def check_data_folder(root: PathLike, files: list[str], what: str) -> Path:
    """``root`` as a Path after checking it exists and holds ``files``; errors name the fix."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{what} data folder {root} does not exist; point data.root at the folder holding "
                                f"{', '.join(files)}")
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{what} data folder {root} lacks {', '.join(missing)} (LRA release file names expected)")
    return root


def prepare_cache_dir(cache_dir: Optional[PathLike], root: Path, name: str) -> Path:
    """The cache folder (default ``$BIXT_CACHE/<name>``), created, refused inside ``root``."""
    cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir(name)
    if cache_dir.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"cache_dir {cache_dir} lies inside the data folder {root}, which is only read; choose another")
    cache_dir.mkdir(parents=True, exist_ok=True)
    return cache_dir


def load_tsv_split(
    path: PathLike,
    iter_rows: Callable[..., Iterator[dict]],
    features,
    cache_dir: PathLike,
    fingerprint: str,
    error_type: type[Exception],
    gen_kwargs: Optional[dict] = None,
):
    """``datasets.Dataset.from_generator(iter_rows(path=..., **gen_kwargs))``, cached in ``cache_dir``.

    An ``error_type`` raised by the generator (the row-level message naming file and line) is
    re-raised as itself rather than wrapped in ``datasets``' ``DatasetGenerationError``.
    """
    from datasets import Dataset
    from datasets.exceptions import DatasetGenerationError

    try:
        return Dataset.from_generator(
            iter_rows, gen_kwargs={"path": str(path), **(gen_kwargs or {})}, features=features,
            cache_dir=str(cache_dir), fingerprint=fingerprint,
        )
    except DatasetGenerationError as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, error_type):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise
