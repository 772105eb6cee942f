"""Unlabelled data for pre-training (``python -m bixt.tasks.pretrain``): an image folder (class
sub-folders or flat, labels ignored), ``*.txt`` files (one sample per non-empty line, as byte ids)
and an embedded generated text. Every sample is ``(input, 0)`` so that the classification sets
of the other tasks (embedded shapes, ModelNet, ListOps: their labels ignored) fit the same batches.
Nothing here writes into the data folder.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated, Any, Mapping, Optional, Sequence

import torch
from torch.utils.data import Dataset

from bixt.constraints import Range
from bixt.data.aan import make_lexicons
from bixt.data.errors import DataError
from bixt.data.image_files import open_rgb, find_images
from bixt.data.images import image_transforms
from bixt.data.task_data import TaskData
from bixt.tokenizers.text import PAD_ID

__all__ = ["image_folder_data", "text_files_data", "embedded_text_data", "pad_collate"]


class NoSamplesError(DataError, ValueError):
    """A pre-training folder without anything to read."""


def _split(items: Sequence[Any], val_fraction: float) -> tuple[list[Any], list[Any]]:
    """Every k-th item to validation (at least one), the rest to training (all of them if too few)."""
    step = max(2, round(1 / val_fraction))
    val = list(items[::step]) or list(items[:1])
    train = [x for i, x in enumerate(items) if i % step] or list(items)
    return train, val


class ImageFiles(Dataset):
    def __init__(self, files: Sequence[str], transform) -> None:
        self.files, self.transform = list(files), transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        return self.transform(open_rgb(self.files[index])), 0


def image_folder_data(*, root: Optional[str], img_size: Annotated[int, Range(min=1)],
                      val_fraction: Annotated[float, Range(min=0.0, max=1.0, open_min=True, open_max=True)],
                      mean: Sequence[float], std: Sequence[float], aug: Mapping[str, Any],
                      eval_only: bool = False) -> TaskData:
    """Every image under ``root`` (class sub-folders or a flat folder, read recursively; labels ignored)."""
    if not root:
        raise NoSamplesError("data=folder needs data.root=DIR, a folder of images (class sub-folders or flat)")
    folder = Path(str(root))
    if not folder.is_dir():
        raise NoSamplesError(f"data.root={folder} is not a folder; give a folder of images")
    files = sorted(find_images(folder))
    if not files:
        raise NoSamplesError(f"data.root={folder} holds no readable images (.jpg, .png, ...) in it or its "
                             "sub-folders; give a folder of images")
    train_tf, val_tf = image_transforms(img_size=img_size, aug=aug, mean=mean, std=std)
    train, val = _split(files, val_fraction)
    return TaskData(None if eval_only else ImageFiles(train, train_tf), ImageFiles(val, val_tf))


class ByteLines(Dataset):
    """Lines of text as byte ids (1..256), at most ``max_len``."""

    def __init__(self, lines: Sequence[bytes], max_len: int) -> None:
        self.lines, self.max_len = list(lines), max_len

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, index: int):
        data = self.lines[index][: self.max_len]
        return torch.tensor(list(data), dtype=torch.long) + 1, 0


def pad_collate(batch: Sequence[tuple[torch.Tensor, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.nn.utils.rnn.pad_sequence([b[0] for b in batch], batch_first=True, padding_value=PAD_ID)
    return ids, torch.tensor([int(b[1]) for b in batch])


def _text_data(lines: list[bytes], max_len: int, val_fraction: float, eval_only: bool) -> TaskData:
    train, val = _split(lines, val_fraction)
    return TaskData(None if eval_only else ByteLines(train, max_len), ByteLines(val, max_len), collate_fn=pad_collate)


def text_files_data(*, root: Optional[str], max_len: Annotated[int, Range(min=2)],
                    val_fraction: Annotated[float, Range(min=0.0, max=1.0, open_min=True, open_max=True)],
                    eval_only: bool = False) -> TaskData:
    """Every non-empty line of the ``*.txt`` files under ``root`` (recursively), cut to ``max_len`` bytes."""
    if not root:
        raise NoSamplesError("data=text_files needs data.root=DIR, a folder of .txt files")
    folder = Path(str(root))
    files = sorted(folder.rglob("*.txt")) if folder.is_dir() else []
    if not files:
        raise NoSamplesError(f"data.root={folder} holds no .txt files (in it or its sub-folders); "
                             "give a folder of text files")
    lines = [line.strip() for path in files for line in path.read_bytes().splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise NoSamplesError(f"the .txt files under {folder} are all empty; give text files with content")
    return _text_data(lines, max_len, val_fraction, eval_only)


def embedded_text_data(*, seed: int, train_size: Annotated[int, Range(min=1)], val_size: Annotated[int, Range(min=1)],
                       num_topics: Annotated[int, Range(min=1)], max_len: Annotated[int, Range(min=2)],
                       eval_only: bool = False) -> TaskData:
    """Generated sentences: each line draws its words from one topic's lexicon and the common words
    (:func:`bixt.data.aan.make_lexicons`), so that a masked byte is predictable from its word and topic."""
    topics, common = make_lexicons(num_topics, seed=seed)
    rng = random.Random(seed)

    def line() -> bytes:
        words = topics[rng.randrange(num_topics)]
        text = " ".join(rng.choice(words) if rng.random() < 0.6 else rng.choice(common)
                        for _ in range(rng.randint(6, 20)))
        return (text.capitalize() + ".").encode()

    lines = [line() for _ in range(train_size + val_size)]
    train = None if eval_only else ByteLines(lines[:train_size], max_len)
    return TaskData(train, ByteLines(lines[train_size:], max_len), collate_fn=pad_collate)
