"""Local Hugging Face ``datasets`` copies: one reader for every task that takes ``data.path=DIR``."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

__all__ = ["load_local_splits"]


def load_local_splits(path: Optional[str], splits: Sequence[str], *, option: str,
                      load_kwargs: Optional[Mapping[str, Any]] = None):
    """The ``DatasetDict`` at ``path`` (``save_to_disk`` output, or a local folder that
    ``datasets.load_dataset`` reads: data files such as ``<split>-*.parquet``), checked to hold
    ``splits``. Nothing is downloaded. ``option`` is the task's ``data=`` option, named in errors."""
    import datasets

    if not path:
        raise ValueError(f"data={option} needs data.path=DIR, a local Hugging Face dataset (datasets.save_to_disk "
                         "output, or a local folder of data files such as <split>-*.parquet); nothing is downloaded")
    path = Path(str(path)).expanduser()
    if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
        ds = datasets.load_from_disk(str(path))
    elif path.exists():
        ds = datasets.load_dataset(str(path), **dict(load_kwargs or {}))
    else:
        raise FileNotFoundError(f"data.path={str(path)!r} does not exist; give a local dataset directory "
                                "(datasets.save_to_disk output or a local data folder): nothing is downloaded")
    if not isinstance(ds, datasets.DatasetDict):
        raise ValueError(f"{path} holds a single split; save a DatasetDict with the splits {list(splits)}")
    missing = [split for split in splits if split not in ds]
    if missing:
        raise KeyError(f"{path} has no split {missing[0]!r}; splits: {list(ds)} (set data.train_split / data.val_split)")
    return ds
