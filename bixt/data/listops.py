"""LRA ListOps: the TSV reader (validated, cached through ``datasets``) and the generator.

Format (``basic_{train,val,test}.tsv``): a header line ``Source\\tTarget``, then one expression and
its value per line. The source is LRA's binarised tree, tokens separated by spaces::

    ( ( ( ( [MAX 2 ) 9 ) 4 ) ] )            # = 9

operators ``[MIN``, ``[MAX``, ``[MED``, ``[SM`` (sum modulo 10), each closed by ``]``, digits 0-9,
and the parentheses of the binarisation. The target is the value (10 classes).

Tokenisation (:data:`VOCAB`): one id per operator, ``]``, digit and parenthesis (padding 0). By
default the parentheses are dropped (``keep_parens=False``), as LRA's own pipeline does: its
``tfds`` tokenizer keeps the reserved tokens ``[MIN [MAX [MED [SM ]`` and alphanumeric tokens and
drops the punctuation, so an LRA sequence is operators, digits and ``]`` only, of at most 2,000
tokens (the generator's length bound). ``keep_parens=True`` keeps them (the lines then run to
~2x as many tokens).

Validation, each error naming ``file:line``: a wrong column count, an unknown token, unbalanced
``[OP ... ]`` brackets or parentheses, an operator without arguments, a target outside 0-9, and,
with ``on_too_long="fail"``, a sequence longer than ``max_len`` tokens (``"truncate"``, the LRA
behaviour, cuts it and counts it: :func:`load_listops` reports the count per split).

Semantics (LRA's ``to_value``): MIN, MAX; MED = ``int(np.median(args))``, i.e. for an even count
the floor of the mean of the two middle values (not the lower median); SM = sum modulo 10.

Generator (LRA's ``generate_tree``): a node at depth < ``max_depth`` is an operator with
probability ``op_p`` (LRA's ``VALUE_P = 0.25``, which despite its name is the operator's share),
with 2..``max_args`` arguments, else a digit; trees are kept when ``min_length < length < max_length`` (length =
digits + 2 per operator, LRA's count, which is the token count without parentheses) and distinct.
LRA's release: ``max_depth=10, max_args=10, min_length=500, max_length=2000``, 96k / 2k / 2k.
``python -m bixt.data.listops --write DIR`` writes such files (``--help`` for sizes and lengths).
"""
from __future__ import annotations

import argparse
import csv
import logging
import math
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from bixt.constraints import Range
from bixt.data.errors import DataError
from bixt.data.task_data import TaskData
from bixt.data.tsv import check_data_folder, file_fingerprint, has_rows, load_tsv_split, prepare_cache_dir
from bixt.tokenizers.text import TokenVocabulary, UnknownTokenError, pad_sequences

log = logging.getLogger(__name__)

Count = Annotated[int, Range(min=0)]  # a generated split's size

MIN, MAX, MED, SUM_MOD, END = "[MIN", "[MAX", "[MED", "[SM", "]"
OPERATORS = (MIN, MAX, MED, SUM_MOD)
DIGITS = tuple(str(d) for d in range(10))
PARENS = ("(", ")")
#: id i + 1 for VOCAB[i]; 0 is padding
VOCAB = (*OPERATORS, END, *DIGITS, *PARENS)
NUM_CLASSES = 10
SPLITS = ("train", "val", "test")
FILE_TEMPLATE = "basic_{split}.tsv"
HEADER = ("Source", "Target")
READER_VERSION = "2"
ON_TOO_LONG = ("truncate", "fail")


class ListOpsFormatError(DataError, ValueError):
    """A malformed line in a ListOps TSV file (or a bad ``data.*`` reader option); the message names
    the file and line (or the key) and the fix."""


def _check_on_too_long(on_too_long: str) -> None:
    # checked before ``datasets`` runs the reader, whose wrapper would bury the message in a traceback
    if on_too_long not in ON_TOO_LONG:
        raise ListOpsFormatError(f"data.on_too_long={on_too_long!r} is not an option; choose one of "
                                 f"{', '.join(ON_TOO_LONG)}")


def vocabulary(keep_parens: bool = False) -> TokenVocabulary:
    """The ListOps vocabulary (18 ids with padding, the same either way); parentheses valid, kept only with ``keep_parens``."""
    return TokenVocabulary(VOCAB, drop=() if keep_parens else PARENS)


# --------------------------------------------------------------------------------------------
# Semantics
# --------------------------------------------------------------------------------------------
def apply_operator(op: str, args: Sequence[int]) -> int:
    """LRA's value of ``op`` over ``args`` (MED: ``int(np.median)``, floor of the middle mean)."""
    if not args:
        raise ValueError(f"{op} needs at least one argument")
    if op == MIN:
        return min(args)
    if op == MAX:
        return max(args)
    if op == MED:
        ordered = sorted(args)
        n = len(ordered)
        return (ordered[(n - 1) // 2] + ordered[n // 2]) // 2
    if op == SUM_MOD:
        return sum(args) % 10
    raise ValueError(f"unknown operator {op!r}; expected one of {' '.join(OPERATORS)}")


def check_expression(tokens: Sequence[str]) -> Optional[str]:
    """Why ``tokens`` is not a well-formed ListOps expression (``None`` if it is).

    Checks brackets (every ``[OP`` closed by a ``]``, no stray ``]``) and parentheses
    separately (in LRA's binarisation they interleave: ``( [MAX 2 ) 9 ) ]``), and that every
    operator has an argument; one expression at the top level.
    """
    if not tokens:
        return "empty expression"
    open_ops: list[tuple[int, int]] = []  # (token position, arguments so far)
    parens = 0
    top_level = 0
    for i, token in enumerate(tokens):
        if token == "(":
            parens += 1
        elif token == ")":
            parens -= 1
            if parens < 0:
                return f"unbalanced parentheses: ')' at token {i + 1} closes nothing"
        elif token in OPERATORS:
            if open_ops:
                open_ops[-1] = (open_ops[-1][0], open_ops[-1][1] + 1)
            else:
                top_level += 1
            open_ops.append((i, 0))
        elif token == END:
            if not open_ops:
                return f"unbalanced brackets: ']' at token {i + 1} closes no operator"
            start, count = open_ops.pop()
            if count == 0:
                return f"operator {tokens[start]} at token {start + 1} has no arguments"
        else:  # a digit
            if open_ops:
                open_ops[-1] = (open_ops[-1][0], open_ops[-1][1] + 1)
            else:
                top_level += 1
    if open_ops:
        start = open_ops[-1][0]
        return f"unbalanced brackets: {tokens[start]} at token {start + 1} is never closed by ']'"
    if parens:
        return f"unbalanced parentheses: {parens} '(' never closed"
    if top_level != 1:
        return f"expected one expression, got {top_level} at the top level"
    return None


def evaluate_tokens(tokens: Sequence[str]) -> int:
    """Value of a (well-formed) token sequence, parentheses ignored; stack evaluation."""
    stack: list[list] = []
    result = None
    for token in tokens:
        if token in PARENS:
            continue
        if token in OPERATORS:
            stack.append([token])
            continue
        if token == END:
            frame = stack.pop()
            value = apply_operator(frame[0], frame[1:])
        else:
            value = int(token)
        if stack:
            stack[-1].append(value)
        else:
            result = value
    if result is None or stack:
        raise ValueError("not a complete expression")
    return result


# --------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------
def generate_tree(rng: random.Random, depth: int, max_depth: int, max_args: int, op_p: float = 0.25):
    """A random tree ``(op, [children])`` or a digit, and its LRA length (digits + 2 per operator)."""
    if depth < max_depth and rng.random() <= op_p:
        children, length = [], 2
        for _ in range(rng.randint(2, max_args)):
            child, child_length = generate_tree(rng, depth + 1, max_depth, max_args, op_p)
            children.append(child)
            length += child_length
        return (rng.choice(OPERATORS), children), length
    return rng.randrange(10), 1


def tree_value(tree) -> int:
    if isinstance(tree, int):
        return tree
    op, children = tree
    return apply_operator(op, [tree_value(c) for c in children])


def tree_to_string(tree) -> str:
    """LRA's binarised string: ``( ( [OP a ) b ) ... ] )`` for ``(OP, [a, b, ...])``."""
    if isinstance(tree, int):
        return str(tree)
    op, children = tree
    text = op
    for child in children:
        text = f"( {text} {tree_to_string(child)} )"
    return f"( {text} {END} )"


def generate_listops(
    sizes: Sequence[int],
    seed: int = 0,
    max_depth: int = 10,
    max_args: int = 10,
    min_length: int = 500,
    max_length: int = 2000,
    op_p: float = 0.25,
    max_tries: Optional[int] = None,
) -> list[list[tuple[str, int]]]:
    """Splits of distinct ``(source, target)`` pairs, ``sizes[i]`` each, by LRA's rules.

    Deterministic in ``seed``. No expression appears in two splits (LRA generates its splits
    independently, so it may repeat short ones; with short embedded expressions that would leak).
    Raises ``ValueError`` when the length window admits too few distinct trees.
    """
    if not 2 <= max_args:
        raise ValueError(f"max_args must be >= 2, got {max_args}")
    if max_depth < 2:
        raise ValueError(f"max_depth must be >= 2 (depth 1 is a single digit), got {max_depth}")
    if not 0 <= min_length < max_length - 1:
        raise ValueError(f"need 0 <= min_length < max_length - 1, got {min_length}, {max_length}")
    rng = random.Random(seed)
    seen: set[str] = set()
    total = sum(sizes)
    budget = max_tries if max_tries is not None else 200 * total + 10_000
    out: list[list[tuple[str, int]]] = []
    tries = 0
    for size in sizes:
        split: list[tuple[str, int]] = []
        while len(split) < size:
            tries += 1
            if tries > budget:
                raise ValueError(
                    f"found only {len(seen)} distinct expressions with {min_length} < length < {max_length}, "
                    f"max_depth={max_depth}, max_args={max_args} in {budget} draws, {total} needed; widen the "
                    f"length window or raise max_depth / max_args")
            tree, length = generate_tree(rng, 1, max_depth, max_args, op_p)
            if not min_length < length < max_length:
                continue
            source = tree_to_string(tree)
            if source in seen:
                continue
            seen.add(source)
            split.append((source, int(tree_value(tree))))
        out.append(split)
    return out


def write_tsv(path: Union[str, Path], rows: Sequence[tuple[str, int]]) -> Path:
    """Write rows in the LRA layout (header ``Source\\tTarget``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(rows)
    return path


def write_listops(root: Union[str, Path], sizes: dict[str, int], **generator_kwargs) -> dict[str, Path]:
    """``root/basic_<split>.tsv`` for each split of ``sizes`` (LRA: train 96000, val 2000, test 2000)."""
    splits = generate_listops(list(sizes.values()), **generator_kwargs)
    return {name: write_tsv(Path(root) / FILE_TEMPLATE.format(split=name), rows)
            for name, rows in zip(sizes, splits)}


# --------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------
def _is_header(line: bytes) -> bool:
    return line.rstrip(b"\r\n").split(b"\t") == [h.encode() for h in HEADER]


def _parse_target(text: str, where: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value != int(value) or not 0 <= value <= 9:
        raise ListOpsFormatError(f"{where}: target must be an integer 0-9 (the expression's value), got {text[:40]!r}")
    return int(value)


def iter_listops_tsv(path: Union[str, Path], max_len: int = 2000, on_too_long: str = "truncate",
                     keep_parens: bool = False) -> Iterator[dict]:
    """Parse and validate one ListOps TSV file: ``{"input_ids", "label", "length", "truncated", "line",
    "value"}`` per line.

    ``length`` is the token count before truncation, ``line`` the line number and ``value`` the
    expression's value (a target that differs is kept, and reported by :func:`report_disagreeing`).
    The header line (``Source\\tTarget``) and blank lines are skipped. Raises
    :class:`ListOpsFormatError` naming ``path:line``.
    """
    _check_on_too_long(on_too_long)
    vocab = vocabulary(keep_parens)
    path = Path(path)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and _is_header(raw):
                continue
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                text = line.decode("ascii")
            except UnicodeDecodeError as exc:
                raise ListOpsFormatError(f"{where}: not ASCII text ({exc})") from None
            fields = text.split("\t")
            if len(fields) != 2:
                raise ListOpsFormatError(f"{where}: expected 2 tab-separated columns (Source, Target), got {len(fields)}")
            source, target = fields
            tokens = source.split()
            try:
                ids = vocab.encode(source)
            except UnknownTokenError as err:
                raise ListOpsFormatError(f"{where}: {err}") from None
            problem = check_expression(tokens)
            if problem is not None:
                raise ListOpsFormatError(f"{where}: {problem}")
            label = _parse_target(target.strip(), where)
            length = len(ids)
            truncated = length > max_len
            if truncated:
                if on_too_long == "fail":
                    raise ListOpsFormatError(
                        f"{where}: {length} tokens, longer than the task length data.max_len={max_len}; "
                        f"data.on_too_long=truncate cuts such sequences (as LRA does)")
                ids = ids[:max_len]
            yield {"input_ids": ids, "label": label, "length": length, "truncated": truncated, "line": lineno,
                   "value": evaluate_tokens(tokens)}


def _features():
    from datasets import Features, List, Value

    return Features({"input_ids": List(Value("uint8")), "label": Value("int64"), "length": Value("int32"),
                     "truncated": Value("bool"), "line": Value("int32"), "value": Value("int8")})


def load_listops_split(path: Union[str, Path], cache_dir: Union[str, Path], max_len: int = 2000,
                       on_too_long: str = "truncate", keep_parens: bool = False, split: Optional[str] = None):
    """One tokenised split as a cached ``datasets.Dataset`` (input_ids, label, length, truncated)."""
    path = Path(path)
    _check_on_too_long(on_too_long)
    if not has_rows(path, skip_first=_is_header):
        which = f" (the {split!r} split)" if split else ""
        raise ListOpsFormatError(f"{path}{which} holds no expressions; expected a 'Source<TAB>Target' header "
                                 "and one expression<TAB>value line per sample")
    options = f"max_len={max_len}|on_too_long={on_too_long}|keep_parens={keep_parens}"
    fingerprint = file_fingerprint(path, f"listops-v{READER_VERSION}", options)
    return load_tsv_split(path, iter_listops_tsv, _features(), cache_dir, fingerprint, ListOpsFormatError,
                          gen_kwargs={"max_len": max_len, "on_too_long": on_too_long, "keep_parens": keep_parens})


def load_listops(root: Union[str, Path], max_len: int = 2000, on_too_long: str = "truncate",
                 keep_parens: bool = False, cache_dir: Optional[Union[str, Path]] = None,
                 splits: Sequence[str] = SPLITS) -> dict:
    """Tokenised splits ``{split: datasets.Dataset}`` from ``root/basic_<split>.tsv``; truncations are logged."""
    _check_on_too_long(on_too_long)
    root = check_data_folder(root, [FILE_TEMPLATE.format(split=s) for s in splits], "ListOps")
    cache_dir = prepare_cache_dir(cache_dir, root, "listops")
    out = {}
    for split in splits:
        path = root / FILE_TEMPLATE.format(split=split)
        out[split] = load_listops_split(path, cache_dir, max_len, on_too_long, keep_parens, split)
        report_truncated(out[split], str(path), max_len)
        report_disagreeing(out[split], str(path))
    return out


def report_truncated(dataset, name: str, max_len: int) -> int:
    count = int(np.sum(dataset["truncated"])) if len(dataset) else 0
    if count:
        log.warning("%s: %d of %d sequences longer than data.max_len=%d tokens were truncated "
                    "(data.on_too_long=fail refuses them)", name, count, len(dataset), max_len)
    return count


def report_disagreeing(dataset, name: str, shown: int = 5) -> int:
    """Warn, with their count and first ``file:line``, of targets that differ from the value of
    their expression: the model is trained (or scored) against wrong answers."""
    if not len(dataset):
        return 0
    wrong = np.flatnonzero(np.asarray(dataset["label"]) != np.asarray(dataset["value"]))
    if len(wrong):
        lines = np.asarray(dataset["line"])[wrong[:shown]]
        log.warning("%s: %d of %d targets differ from their expression's value (LRA's semantics), first at %s; "
                    "fix the targets or the expressions", name, len(wrong), len(dataset),
                    ", ".join(f"{name}:{n}" for n in lines))
    return len(wrong)


def load_embedded(sizes: dict[str, int], seed: int = 0, max_len: int = 2000, on_too_long: str = "truncate",
                  keep_parens: bool = False, **generator_kwargs) -> dict:
    """Generated splits ``{split: datasets.Dataset}`` tokenised exactly as the files are."""
    from datasets import Dataset

    _check_on_too_long(on_too_long)
    vocab = vocabulary(keep_parens)
    out = {}
    for name, rows in zip(sizes, generate_listops(list(sizes.values()), seed=seed, **generator_kwargs)):
        ids = [vocab.encode(source) for source, _ in rows]
        lengths = [len(x) for x in ids]
        too_long = [n > max_len for n in lengths]
        if any(too_long) and on_too_long == "fail":
            raise ValueError(f"embedded {name} split: {sum(too_long)} sequences longer than data.max_len={max_len}; "
                             "lower data.max_length or raise data.max_len")
        out[name] = Dataset.from_dict(
            {"input_ids": [x[:max_len] for x in ids], "label": [t for _, t in rows], "length": lengths,
             "truncated": too_long, "line": list(range(1, len(rows) + 1)), "value": [t for _, t in rows]},
            features=_features())
        report_truncated(out[name], f"embedded {name}", max_len)
    return out


# The task's data builders, named by ``_target_`` in bixt/configs/lra_listops/data/*.yaml (which
# hold every default): each returns ``{"train", "val", "test"}`` splits formatted for batching.
def majority_rate(split) -> float:
    """Share (%) of the most frequent target: the accuracy of always answering it."""
    counts = Counter(int(y) for y in split["label"])
    return 100.0 * max(counts.values()) / max(len(split), 1)


def _task_data(splits: dict, name: str, keep_parens: bool) -> TaskData:
    """The splits as model inputs; the test split is named ``name`` (metrics ``test_<name>/...``)."""
    splits = {key: split.with_format("numpy", columns=["input_ids", "label"]) for key, split in splits.items()}
    lengths = {key: int(max((len(x) for x in split["input_ids"]), default=0)) for key, split in splits.items()}
    log.info("sequences: %s | longest (tokens): %s | majority class: train %.1f %%, test %.1f %%",
             ", ".join(f"{k} {len(v)}" for k, v in splits.items()), lengths,
             majority_rate(splits["train"]), majority_rate(splits["test"]) if len(splits["test"]) else float("nan"))
    return TaskData(splits["train"], splits["val"], {name: splits["test"]}, class_names=DIGITS,
                    collate_fn=ListOpsCollate(), metadata={"vocab_size": vocabulary(keep_parens).vocab_size,
                              "id_tokens": ["<pad>", *vocabulary(keep_parens).tokens]})


def listops_data(*, name: str, root: Optional[str], cache_dir: Optional[str], max_len: int, on_too_long: str,
                 keep_parens: bool, eval_only: bool = False) -> TaskData:
    """The LRA release files ``root/basic_{train,val,test}.tsv`` (:func:`load_listops`)."""
    if not root:
        raise ValueError("data=listops needs data.root=DIR, the folder holding basic_{train,val,test}.tsv")
    return _task_data(load_listops(root, max_len=max_len, on_too_long=on_too_long, keep_parens=keep_parens,
                                   cache_dir=cache_dir), name, keep_parens)


def embedded_listops_data(*, name: str, seed: int, train_size: Count, val_size: Count, test_size: Count, max_depth: int,
                          max_args: int, min_length: int, max_length: int, max_len: Annotated[int, Range(min=1)],
                          on_too_long: str,
                          keep_parens: bool, eval_only: bool = False) -> TaskData:
    """Splits generated by LRA's rules (:func:`load_embedded`)."""
    return _task_data(load_embedded(
        {"train": train_size, "val": val_size, "test": test_size}, seed=seed, max_depth=max_depth,
        max_args=max_args, min_length=min_length, max_length=max_length, max_len=max_len,
        on_too_long=on_too_long, keep_parens=keep_parens,
    ), name, keep_parens)


class ListOpsCollate:
    """Rows ``{input_ids, label}`` -> ``(input_ids (B, N) int64, labels (B,) int64)``.

    N is the longest sequence of the batch (or ``length``). Padding (id 0) is masked by the
    model (:class:`bixt.models.text.SequenceClassifier` derives the mask from the ids), so
    padding every batch to the task length 2,000 would only cost time. The pair is what the shared
    :class:`~bixt.tasks.classification.ClassificationAdapter` reads (inputs, targets).
    """

    def __init__(self, length: Optional[int] = None) -> None:
        self.length = length

    def __call__(self, rows: Sequence[dict]):
        input_ids, _ = pad_sequences([r["input_ids"] for r in rows], self.length)
        labels = torch.as_tensor(np.asarray([int(r["label"]) for r in rows]), dtype=torch.long)
        return input_ids, labels


# --------------------------------------------------------------------------------------------
# Command line: write LRA-layout files
# --------------------------------------------------------------------------------------------
def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bixt.data.listops",
        description="Write ListOps TSV files (basic_{train,val,test}.tsv, LRA layout) generated by LRA's rules.")
    parser.add_argument("--write", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument("--train", type=int, default=96000)
    parser.add_argument("--val", type=int, default=2000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-depth", type=int, default=10)
    parser.add_argument("--max-args", type=int, default=10)
    parser.add_argument("--min-length", type=int, default=500, help="kept if min_length < length (LRA: 500)")
    parser.add_argument("--max-length", type=int, default=2000, help="kept if length < max_length (LRA: 2000)")
    args = parser.parse_args(argv)
    paths = write_listops(args.write, {"train": args.train, "val": args.val, "test": args.test}, seed=args.seed,
                          max_depth=args.max_depth, max_args=args.max_args, min_length=args.min_length,
                          max_length=args.max_length)
    for name, path in paths.items():
        print(f"{name}: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
