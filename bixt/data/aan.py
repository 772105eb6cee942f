"""Document-pair retrieval data: the LRA AAN release and an embedded synthetic stand-in.

Both end up as a Hugging Face ``datasets.Dataset`` with columns ``label`` (0/1) and
``input_ids1`` / ``input_ids2`` (truncated, unpadded byte ids, ``uint16``), batched by
:class:`RetrievalCollate`.

LRA format (``new_aan_pairs.{train,eval,test}.tsv``): tab-separated, no header, one pair per line,
columns ``label, id1, id2, text1, text2``; texts are usually Python bytes literals (``b'...'``),
parsed with :func:`ast.literal_eval` (never ``eval``). Parsed splits and their tokenised versions
are cached by ``datasets`` under ``cache_dir`` (never inside the data folder, which is only read);
a cache entry is keyed by the file's path, size and modification time, so an edited file is
re-read (the reading and caching are :mod:`bixt.data.tsv`'s, shared with ListOps).
"""
from __future__ import annotations

import ast
import hashlib
import logging
from pathlib import Path
from typing import Annotated, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from bixt.constraints import Range
from bixt.data.errors import DataError
from bixt.data.task_data import TaskData
from bixt.data.tsv import check_data_folder, file_fingerprint, has_rows, load_tsv_split, prepare_cache_dir
from bixt.tokenizers.text import ByteTokenizer

log = logging.getLogger(__name__)

Count = Annotated[int, Range(min=0)]  # a generated split's size

SPLITS = ("train", "eval", "test")
FILE_TEMPLATE = "new_aan_pairs.{split}.tsv"
COLUMNS = ("label", "id1", "id2", "text1", "text2")
# Part of every cache key: bump when parsing or tokenisation changes, so stale caches are not reused.
READER_VERSION = "1"


class AANFormatError(DataError, ValueError):
    """A malformed row in an AAN TSV file; the message names the file and line."""


def _raw_features():
    from datasets import Features, Value

    return Features({
        "label": Value("int64"), "id1": Value("string"), "id2": Value("string"),
        "text1": Value("binary"), "text2": Value("binary"),
    })


def _token_features():
    from datasets import Features, List, Value

    return Features({
        "label": Value("int64"), "input_ids1": List(Value("uint16")), "input_ids2": List(Value("uint16")),
    })


# --------------------------------------------------------------------------------------------
# Reading the LRA TSV files
# --------------------------------------------------------------------------------------------
def _parse_label(field: bytes, where: str) -> int:
    text = field.strip().decode("ascii", errors="replace")
    try:
        value = float(text)
    except ValueError:
        value = None
    if value not in (0.0, 1.0):
        raise AANFormatError(f"{where}: label must be 0 or 1, got {text[:40]!r}")
    return int(value)


def _parse_text(field: bytes, where: str, column: str) -> bytes:
    """A document's bytes: a Python bytes literal (``b'...'`` / ``b\"...\"``) or plain UTF-8 text."""
    stripped = field.strip()
    if stripped[:2] in (b"b'", b'b"'):
        try:
            value = ast.literal_eval(stripped.decode("ascii"))
        except (UnicodeDecodeError, ValueError, SyntaxError, MemoryError, RecursionError) as exc:
            raise AANFormatError(
                f"{where}: {column} looks like a Python bytes literal but cannot be parsed "
                f"({type(exc).__name__}: {exc}); expected b'...' with escapes for non-ASCII bytes, "
                f"got {field[:60]!r}"
            ) from None
        if not isinstance(value, bytes):
            raise AANFormatError(f"{where}: {column} must be a bytes literal, got a {type(value).__name__}")
        return value
    try:
        field.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AANFormatError(
            f"{where}: {column} is neither a bytes literal (b'...') nor valid UTF-8 text ({exc}); "
            "store non-UTF-8 documents as bytes literals"
        ) from None
    return field


def iter_aan_tsv(path: Union[str, Path]) -> Iterator[dict]:
    """Parse and validate one LRA AAN TSV file, yielding one dict per pair.

    Blank lines are skipped. Raises :class:`AANFormatError` naming ``path:line`` for a wrong
    column count, a label other than 0/1, or undecodable text. Empty documents are allowed.
    """
    path = Path(path)
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            fields = line.split(b"\t")
            if len(fields) != len(COLUMNS):
                raise AANFormatError(
                    f"{where}: expected {len(COLUMNS)} tab-separated columns ({', '.join(COLUMNS)}), "
                    f"got {len(fields)}"
                )
            label = _parse_label(fields[0], where)
            try:
                id1, id2 = fields[1].decode("utf-8").strip(), fields[2].decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                raise AANFormatError(f"{where}: document ids must be UTF-8 text ({exc})") from None
            yield {
                "label": label, "id1": id1, "id2": id2,
                "text1": _parse_text(fields[3], where, "text1"),
                "text2": _parse_text(fields[4], where, "text2"),
            }


def _file_fingerprint(path: Path) -> str:
    return file_fingerprint(path, f"aan-v{READER_VERSION}")


def load_aan_split(path: Union[str, Path], cache_dir: Union[str, Path], split: Optional[str] = None):
    """One parsed split as a ``datasets.Dataset`` (label, id1, id2, text1, text2), cached in ``cache_dir``."""
    path = Path(path)
    if not has_rows(path):  # datasets would only say 'Instruction "train" corresponds to no data'
        which = f" (the {split!r} split)" if split else ""
        raise AANFormatError(f"{path}{which} holds no pairs; expected one tab-separated row "
                             f"({', '.join(COLUMNS)}) per pair")
    return load_tsv_split(path, iter_aan_tsv, _raw_features(), cache_dir, _file_fingerprint(path), AANFormatError)


def tokenize_pairs(dataset, tokenizer: ByteTokenizer, cache_file_name: Optional[str] = None):
    """Replace ``text1``/``text2`` by truncated byte ids ``input_ids1``/``input_ids2`` (``uint16``).

    With ``cache_file_name`` the result is written there and reused by later runs.
    """
    def encode(batch):
        return {
            "label": batch["label"],
            "input_ids1": tokenizer.encode(batch["text1"]),
            "input_ids2": tokenizer.encode(batch["text2"]),
        }

    fingerprint = None
    if cache_file_name is not None:
        fingerprint = hashlib.sha256(f"{cache_file_name}".encode()).hexdigest()[:16]
    return dataset.map(
        encode, batched=True, batch_size=256, remove_columns=dataset.column_names,
        features=_token_features(), cache_file_name=cache_file_name, new_fingerprint=fingerprint,
        keep_in_memory=cache_file_name is None, desc="Tokenising bytes",
    )


def load_aan(
    root: Union[str, Path],
    max_len: int = 4000,
    cache_dir: Optional[Union[str, Path]] = None,
    splits: Sequence[str] = SPLITS,
) -> dict:
    """Tokenised AAN splits ``{split: datasets.Dataset}`` from ``root/new_aan_pairs.<split>.tsv``."""
    root = check_data_folder(root, [FILE_TEMPLATE.format(split=s) for s in splits], "AAN")
    cache_dir = prepare_cache_dir(cache_dir, root, "aan")
    tokenizer = ByteTokenizer(max_len)
    out = {}
    for split in splits:
        raw = load_aan_split(root / FILE_TEMPLATE.format(split=split), cache_dir, split)
        cache_file = cache_dir / f"aan-{split}-{raw._fingerprint}-bytes{max_len}.arrow"
        out[split] = tokenize_pairs(raw, tokenizer, cache_file_name=str(cache_file))
    return out


# --------------------------------------------------------------------------------------------
# Embedded synthetic retrieval set
# --------------------------------------------------------------------------------------------
VOWELS = "aeiou"
SHARED_CONSONANTS = "lnrst"
TOPIC_CONSONANTS = "bcdfghjkmpqvwxyz"  # the other 16 consonants, split evenly among the topics


def make_lexicons(num_topics: int, words_per_topic: int = 40, seed: int = 12345) -> tuple[list[list[str]], list[str]]:
    """Per-topic word lists and a shared list of common words.

    Topic ``m`` writes with its own consonants (``TOPIC_CONSONANTS`` split into ``num_topics``
    groups) besides the shared ones; common words use shared letters only. A topic is therefore
    visible in the byte statistics of the text written about it, and nowhere else.
    """
    if not 2 <= num_topics <= len(TOPIC_CONSONANTS) or len(TOPIC_CONSONANTS) % num_topics:
        raise ValueError(f"num_topics must divide {len(TOPIC_CONSONANTS)} (2, 4, 8 or 16), got {num_topics}")
    rng = np.random.default_rng(seed)
    per_topic = len(TOPIC_CONSONANTS) // num_topics

    def word(consonants: str, own: str) -> str:
        length = int(rng.integers(2, 9))
        letters = []
        for i in range(length):
            if i % 2:
                letters.append(VOWELS[rng.integers(len(VOWELS))])
            elif own and (i == 0 or rng.random() < 0.7):  # every topic word shows its topic
                letters.append(own[rng.integers(len(own))])
            else:
                letters.append(consonants[rng.integers(len(consonants))])
        return "".join(letters)

    topics = []
    for m in range(num_topics):
        own = TOPIC_CONSONANTS[m * per_topic:(m + 1) * per_topic]
        topics.append([word(SHARED_CONSONANTS, own) for _ in range(words_per_topic)])
    common = [word(SHARED_CONSONANTS, "") for _ in range(2 * words_per_topic)]
    return topics, common


def generate_retrieval_pairs(
    num_pairs: int,
    seed: int = 0,
    min_bytes: int = 1000,
    max_bytes: int = 2000,
    num_topics: int = 8,
    topics_per_doc: int = 4,
    topic_word_rate: float = 0.8,
    hard_negative_rate: float = 0.5,
) -> dict[str, list]:
    """A synthetic document-matching set whose label depends on the whole of both documents.

    Every document is split into ``topics_per_doc`` equal sections, each written about one topic:
    a ``topic_word_rate`` share of its words come from that topic's lexicon (recognisable by the
    topic's own letters, see :func:`make_lexicons`), the rest are common words. The document's
    *signature* is its set of topics, assigned to sections in random order. A pair matches
    (label 1) iff both signatures are equal; a ``hard_negative_rate`` share of the negatives
    differ in a single topic. Since each topic lives in its own section, a reader that sees a
    fraction f of a document sees about f of its signature: reading the first half of both
    documents allows about 68 % accuracy at best (an estimate of the Bayes rate; see the tests),
    while the whole documents determine the label exactly.

    Returns columns ``label`` (int), ``text1``, ``text2`` (bytes), ``signature1``, ``signature2``
    (sorted topic ids). Deterministic in ``seed``; the lexicons are the same for every seed.
    """
    if not 0 < topics_per_doc < num_topics:
        raise ValueError(
            f"topics_per_doc must be in [1, num_topics), got {topics_per_doc} with num_topics={num_topics}"
        )
    if not 2 * topics_per_doc <= min_bytes <= max_bytes:
        # each section needs at least one topic letter and its separator, or the label is lost
        raise ValueError(f"need 2 * topics_per_doc ({2 * topics_per_doc}) <= min_bytes <= max_bytes, "
                         f"got {min_bytes}, {max_bytes}")
    rng = np.random.default_rng(seed)
    topic_words, common_words = make_lexicons(num_topics)

    def section(topic: int, budget: int) -> str:
        # Each word takes at most 9 bytes with its separator and at least 3: draw enough, then cut.
        count = budget // 3 + 1
        from_topic = rng.random(count) < topic_word_rate
        from_topic[0] = True  # every section shows its topic, however short
        words = np.where(
            from_topic,
            np.asarray(topic_words[topic], dtype=object)[rng.integers(len(topic_words[topic]), size=count)],
            np.asarray(common_words, dtype=object)[rng.integers(len(common_words), size=count)],
        )
        return (" ".join(words))[: budget - 1] + " "

    def document(signature: np.ndarray) -> bytes:
        length = int(rng.integers(min_bytes, max_bytes + 1))
        order = rng.permutation(signature)
        base = length // len(order)
        budgets = [base] * (len(order) - 1) + [length - base * (len(order) - 1)]
        return "".join(section(int(t), b) for t, b in zip(order, budgets)).encode("ascii")

    labels, texts1, texts2, sigs1, sigs2 = [], [], [], [], []
    for _ in range(num_pairs):
        sig1 = np.sort(rng.choice(num_topics, size=topics_per_doc, replace=False))
        label = int(rng.random() < 0.5)
        if label:
            sig2 = sig1.copy()
        elif rng.random() < hard_negative_rate:
            sig2 = sig1.copy()
            sig2[rng.integers(topics_per_doc)] = rng.choice(np.setdiff1d(np.arange(num_topics), sig1))
            sig2 = np.sort(sig2)
        else:
            while True:
                sig2 = np.sort(rng.choice(num_topics, size=topics_per_doc, replace=False))
                if not np.array_equal(sig1, sig2):
                    break
        labels.append(label)
        texts1.append(document(sig1))
        texts2.append(document(sig2))
        sigs1.append(sig1.tolist())
        sigs2.append(sig2.tolist())
    return {"label": labels, "text1": texts1, "text2": texts2, "signature1": sigs1, "signature2": sigs2}


def load_embedded(
    sizes: dict[str, int],
    seed: int = 0,
    max_len: int = 2048,
    **generator_kwargs,
) -> dict:
    """Tokenised synthetic splits ``{split: datasets.Dataset}``; split i is generated from ``seed`` + i."""
    from datasets import Dataset

    tokenizer = ByteTokenizer(max_len)
    out = {}
    for offset, (split, size) in enumerate(sizes.items()):
        columns = generate_retrieval_pairs(size, seed=seed * 1000 + offset, **generator_kwargs)
        raw = Dataset.from_dict({k: columns[k] for k in ("label", "text1", "text2")})
        out[split] = tokenize_pairs(raw, tokenizer)
    return out


# The task's data builders, named by ``_target_`` in bixt/configs/lra_retrieval/data/*.yaml (which
# hold every default): each returns ``{"train", "eval", "test"}`` splits formatted for batching.
def _task_data(splits: dict, name: str) -> TaskData:
    """The splits as model inputs (``eval`` validates); the test split is named ``name``."""
    splits = {key: split.with_format("numpy") for key, split in splits.items()}
    log.info("pairs: %s", ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    return TaskData(splits["train"], splits["eval"], {name: splits["test"]}, class_names=("different", "same"),
                    collate_fn=RetrievalCollate())


def aan_data(*, name: str, root: Optional[str], cache_dir: Optional[str], max_len: int,
             eval_only: bool = False) -> TaskData:
    """The LRA release files ``root/new_aan_pairs.{train,eval,test}.tsv`` (:func:`load_aan`)."""
    if not root:
        raise ValueError("data=aan needs data.root=DIR, the folder holding new_aan_pairs.{train,eval,test}.tsv")
    return _task_data(load_aan(root, max_len=max_len, cache_dir=cache_dir), name)


def embedded_retrieval_data(*, name: str, seed: int, train_size: Count, eval_size: Count, test_size: Count,
                            max_len: Annotated[int, Range(min=1)],
                            min_bytes: int, max_bytes: int, num_topics: int, topics_per_doc: int,
                            topic_word_rate: float, hard_negative_rate: float, eval_only: bool = False) -> TaskData:
    """The synthetic matching set (:func:`generate_retrieval_pairs`), tokenised as the files are."""
    return _task_data(load_embedded(
        {"train": train_size, "eval": eval_size, "test": test_size}, seed=seed, max_len=max_len,
        min_bytes=min_bytes, max_bytes=max_bytes, num_topics=num_topics, topics_per_doc=topics_per_doc,
        topic_word_rate=topic_word_rate, hard_negative_rate=hard_negative_rate,
    ), name)


# --------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------
class RetrievalCollate:
    """List of ``{label, input_ids1, input_ids2}`` rows -> padded batch tensors.

    Each document side is padded to its longest sequence in the batch (or ``length``); the model
    pads the two sides to a common length when it stacks them.
    """

    def __init__(self, length: Optional[int] = None) -> None:
        self.length = length

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        input_ids1, token_mask1 = ByteTokenizer.pad([r["input_ids1"] for r in rows], self.length)
        input_ids2, token_mask2 = ByteTokenizer.pad([r["input_ids2"] for r in rows], self.length)
        return {
            "input_ids1": input_ids1, "token_mask1": token_mask1,
            "input_ids2": input_ids2, "token_mask2": token_mask2,
            "label": torch.as_tensor(np.asarray([int(r["label"]) for r in rows]), dtype=torch.long),
        }
