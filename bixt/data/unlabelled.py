"""Unlabelled data for pre-training (``python -m bixt.tasks.pretrain``): an image folder (class
sub-folders or flat, labels ignored), a local Hugging Face image dataset (only its image column
read), ``*.txt`` files (one sample per non-empty line, as byte ids), the documents of the LRA AAN
release, and an embedded generated text. Every sample is ``(input, 0)`` so that the classification sets
of the other tasks (embedded shapes, ModelNet, ListOps: their labels ignored) fit the same batches.
Nothing here writes into the data folder.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Optional, Sequence

import torch
from torch.utils.data import Dataset

from bixt.constraints import Range
from bixt.data.aan import FILE_TEMPLATE, load_aan_split, make_lexicons
from bixt.data.tsv import check_data_folder, prepare_cache_dir
from bixt.data.errors import DataError
from bixt.data.hf import load_local_splits
from bixt.data.image_files import HFImageDataset, find_images, open_rgb
from bixt.data.images import image_transforms
from bixt.data.task_data import TaskData
from bixt.tokenizers.text import PAD_ID

__all__ = ["image_folder_data", "hf_images_data", "text_files_data", "aan_documents_data",
           "embedded_text_data", "pad_collate"]


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


def hf_images_data(*, path: Optional[str], load_kwargs: Optional[Mapping[str, Any]], image_column: str,
                   train_split: str, val_split: Optional[str],
                   val_fraction: Annotated[float, Range(min=0.0, max=1.0, open_min=True, open_max=True)],
                   img_size: Annotated[int, Range(min=1)], on_bad_image: Literal["fail", "skip"], mean: Sequence[float],
                   std: Sequence[float], aug: Mapping[str, Any], eval_only: bool = False) -> TaskData:
    """The image column of a local Hugging Face dataset; a label column is neither needed nor read.
    Without ``val_split`` every k-th row of ``train_split`` is held out (``val_fraction``)."""
    try:
        ds = load_local_splits(path, (train_split,) if val_split is None else (train_split, val_split),
                               option="hf", load_kwargs=load_kwargs)
    except KeyError as err:  # a missing split: unlabelled data often has only one
        raise KeyError(f"{err.args[0]}; data.val_split=null holds out every k-th train row instead") from None
    if val_split is None:
        train_rows, val_rows = _split(range(len(ds[train_split])), val_fraction)
        train, val = ds[train_split].select(train_rows), ds[train_split].select(val_rows)
    else:
        train, val = ds[train_split], ds[val_split]
    train_tf, val_tf = image_transforms(img_size=img_size, aug=aug, mean=mean, std=std)

    def images(split, transform, name: str) -> HFImageDataset:
        return HFImageDataset(split, image_column=image_column, label_column=None, transform=transform,
                              on_bad_image=on_bad_image, name=f"{path}:{name}")
    return TaskData(None if eval_only else images(train, train_tf, train_split),
                    images(val, val_tf, val_split or f"{train_split} (held out)"))


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


def aan_documents_data(*, root: Optional[str], cache_dir: Optional[str], max_len: Annotated[int, Range(min=2)],
                       eval_only: bool = False) -> TaskData:
    """Every distinct document of the LRA AAN release (``new_aan_pairs.{train,eval}.tsv``; pair labels
    ignored), cut to ``max_len`` bytes: the train split's documents train, the eval split's others validate."""
    if not root:
        raise NoSamplesError("data=aan needs data.root=DIR, the folder holding new_aan_pairs.{train,eval}.tsv")
    splits = ("train", "eval")
    folder = check_data_folder(root, [FILE_TEMPLATE.format(split=s) for s in splits], "AAN")
    cache = prepare_cache_dir(cache_dir, folder, "aan")
    documents: dict[str, dict[str, bytes]] = {}
    for split in splits:
        rows = load_aan_split(folder / FILE_TEMPLATE.format(split=split), cache, split)
        seen = documents.setdefault(split, {})
        for side in ("1", "2"):
            for doc_id, text in zip(rows["id" + side], rows["text" + side]):
                if text:
                    seen.setdefault(doc_id, text)
    train = list(documents["train"].values())
    val = [text for doc_id, text in documents["eval"].items() if doc_id not in documents["train"]] or train[:1]
    return TaskData(None if eval_only else ByteLines(train, max_len), ByteLines(val, max_len), collate_fn=pad_collate)


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
