"""Visual question answering data: CLEVR v1.0 files, or the embedded generated scenes.

Both give samples ``(image uint8 (3, H, W), question str, answer label, family index)`` and one
collate (:class:`QuestionCollate`) that tokenises the questions with a word-level Hugging Face
``tokenizers`` tokenizer trained on the training questions, pads them (id 0, mask True = real word)
and scales the images to [-1, 1]. Batches are dicts: ``image``, ``question``, ``question_mask``,
``answer`` (-1: an answer the training questions never give, which counts as wrong), ``family``.

CLEVR layout (only read): ``root/images/<split>/CLEVR_<split>_NNNNNN.png`` and
``root/questions/CLEVR_<split>_questions.json`` = ``{"questions": [{"image_filename", "question",
"answer", "question_family_index", "program"?}, ...]}``. The family of a question is its type, from
the program's last function (exist, count, compare_integer, query_attribute, compare_attribute), or
``family_<question_family_index>`` without a program. The answer vocabulary is the training
answers, sorted. Images are decoded on every read and resized to ``img_size``; nothing is written.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from torch.utils.data import Dataset

from bixt.constraints import Range
from bixt.data.errors import DataError
from bixt.data.task_data import TaskData
from bixt.data.vqa_scenes import FAMILIES, make_vqa_scene

__all__ = ["ClevrDataError", "QuestionCollate", "VQADataset", "clevr_data", "embedded_vqa_data", "train_tokenizer"]

CLEVR_TYPES = ("exist", "count", "compare_integer", "query_attribute", "compare_attribute")
REQUIRED_KEYS = ("image_filename", "question", "answer", "question_family_index")


class ClevrDataError(DataError, ValueError):
    """A CLEVR file that is missing, unreadable or not in the CLEVR layout (``message`` names it)."""


# ----------------------------------------------------------------------------- questions -> ids
def train_tokenizer(questions: Sequence[str]) -> Tokenizer:
    """A lower-cased word-level tokenizer over the words (punctuation split off) of ``questions``;
    ``[PAD]`` is id 0 (the embedding's padding id), ``[UNK]`` id 1."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(questions, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
    return tokenizer


class QuestionCollate:
    """Samples -> a batch dict; the tokenizer is an attribute so a checkpoint's own can replace it."""

    def __init__(self, tokenizer: Tokenizer, max_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_len = max_len

    def __call__(self, samples: Sequence[tuple]) -> dict[str, torch.Tensor]:
        images, questions, answers, families = zip(*samples)
        encoded = [self.tokenizer.encode(q).ids[: self.max_len] for q in questions]
        ids = torch.zeros(len(encoded), max(len(e) for e in encoded), dtype=torch.long)
        for row, e in zip(ids, encoded):
            row[: len(e)] = torch.tensor(e, dtype=torch.long)
        return {"image": torch.from_numpy(np.stack(images)).float() / 127.5 - 1.0, "question": ids,
                "question_mask": ids != 0, "answer": torch.tensor(answers, dtype=torch.long),
                "family": torch.tensor(families, dtype=torch.long)}


class VQADataset(Dataset):
    """``(image, question, answer label, family index)`` from records ``(image key, question, answer, family)``;
    ``load(key)`` gives the image."""

    def __init__(self, records: Sequence[tuple], load, answers: Sequence[str], families: Sequence[str]) -> None:
        index = {a: i for i, a in enumerate(answers)}
        family_index = {f: i for i, f in enumerate(families)}
        self.records = [(key, q, index.get(a, -1), family_index[f]) for key, q, a, f in records]
        self.load = load

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        key, question, answer, family = self.records[i]
        return self.load(key), question, answer, family


def _task_data(train_records, val_records, load, families, class_names, max_len, eval_only) -> TaskData:
    answers = list(class_names) if class_names else sorted({r[2] for r in train_records})
    tokenizer = train_tokenizer([r[1] for r in train_records])
    make = lambda records: VQADataset(records, load, answers, families)  # noqa: E731
    return TaskData(None if eval_only else make(train_records), make(val_records), class_names=answers,
                    collate_fn=QuestionCollate(tokenizer, max_len),
                    metadata={"vocab_size": tokenizer.get_vocab_size(), "tokenizer": tokenizer,
                              "families": list(families)})


# ----------------------------------------------------------------------------- embedded scenes
def embedded_vqa_data(*, seed: int = 0, train_scenes: Annotated[int, Range(min=1)] = 4000,
                      val_scenes: Annotated[int, Range(min=1)] = 500, img_size: Annotated[int, Range(min=16)] = 32,
                      max_len: Annotated[int, Range(min=4)] = 24, eval_only: bool = False,
                      class_names: Optional[Sequence[str]] = None) -> TaskData:
    """The generated scenes of :mod:`bixt.data.vqa_scenes`, five questions per scene, in memory."""
    images, records = {}, {}
    for split, count in (("train", train_scenes), ("val", val_scenes)):
        records[split] = []
        for i in range(count):
            images[split, i], questions = make_vqa_scene(seed, split, i, img_size)
            records[split] += [((split, i), q, a, f) for q, a, f in questions]
    return _task_data(records["train"], records["val"], images.__getitem__, FAMILIES, class_names, max_len, eval_only)


# ----------------------------------------------------------------------------- CLEVR v1.0 files
def _question_type(question: dict) -> str:
    program = question.get("program")
    if program:
        last = program[-1].get("function") or program[-1].get("type") or ""
        if last in ("exist", "count"):
            return last
        if last in ("equal_integer", "less_than", "greater_than"):
            return "compare_integer"
        if last.startswith("query_"):
            return "query_attribute"
        if last.startswith("equal_"):
            return "compare_attribute"
    return f"family_{question['question_family_index']}"


def read_clevr_questions(root: Path, split: str) -> list[dict]:
    """The question dicts of ``root/questions/CLEVR_<split>_questions.json``, every key checked."""
    path = root / "questions" / f"CLEVR_{split}_questions.json"
    if not path.is_file():
        raise ClevrDataError(f"{path}: no such file; data.root must be the CLEVR_v1.0 folder "
                             f"(questions/CLEVR_{split}_questions.json, images/{split}/)")
    try:
        contents = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ClevrDataError(f"{path}: not JSON ({err}); expected CLEVR's {{\"questions\": [...]}}") from None
    if not isinstance(contents, dict) or not isinstance(contents.get("questions"), list):
        raise ClevrDataError(f"{path}: not CLEVR questions JSON: missing key 'questions' (a list of questions)")
    for i, q in enumerate(contents["questions"]):
        missing = [k for k in REQUIRED_KEYS if not isinstance(q, dict) or k not in q]
        if missing:
            raise ClevrDataError(f"{path}: question {i} has no key {missing[0]!r} (CLEVR questions hold "
                                 f"{', '.join(REQUIRED_KEYS)})")
        if not str(q["question"]).strip():
            raise ClevrDataError(f"{path}: question {i} is empty; remove it or give its text")
    return contents["questions"]


class _ClevrImages:
    """Reads ``images/<split>/<file>`` as (3, H, W) uint8 at ``img_size`` (picklable for workers)."""

    def __init__(self, root: Path, img_size: tuple[int, int]) -> None:
        self.root, self.img_size = root, img_size

    def __call__(self, key: tuple[str, str]) -> np.ndarray:
        path = self.root / "images" / key[0] / key[1]
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB").resize(self.img_size[::-1], Image.BILINEAR)
        except (OSError, ValueError) as err:
            raise ClevrDataError(f"{path}: cannot read the image ({err}); replace the file or remove its "
                                 "questions") from None
        return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).copy()


def _records(root: Path, split: str, questions: list[dict]) -> list[tuple]:
    folder = root / "images" / split
    for name in sorted({q["image_filename"] for q in questions}):
        if not (folder / name).is_file():
            raise ClevrDataError(f"{folder / name}: no such image, named by "
                                 f"{root / 'questions' / f'CLEVR_{split}_questions.json'}; restore it or remove its "
                                 "questions")
    return [((split, q["image_filename"]), q["question"], str(q["answer"]), _question_type(q)) for q in questions]


def clevr_data(*, root: Optional[str], img_size: Sequence[int] = (64, 96), max_len: Annotated[int, Range(min=4)] = 48,
               max_questions: Optional[Annotated[int, Range(min=1)]] = None, eval_only: bool = False,
               class_names: Optional[Sequence[str]] = None) -> TaskData:
    """CLEVR v1.0 train / val questions with their images (``max_questions``: the first N of each split)."""
    if not root:
        raise ClevrDataError("data.root is not set: give the CLEVR_v1.0 folder, data.root=DIR")
    base = Path(root)
    if not base.is_dir():
        raise ClevrDataError(f"data.root={root}: no such folder; give the CLEVR_v1.0 folder")
    splits = {s: read_clevr_questions(base, s)[:max_questions] for s in ("train", "val")}
    records = {s: _records(base, s, qs) for s, qs in splits.items()}
    families = sorted({r[3] for rs in records.values() for r in rs},
                      key=lambda f: (CLEVR_TYPES.index(f) if f in CLEVR_TYPES else len(CLEVR_TYPES), f))
    return _task_data(records["train"], records["val"], _ClevrImages(base, tuple(img_size)), families, class_names,
                      max_len, eval_only)

