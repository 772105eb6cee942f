"""LRA ListOps: generator (checked against an independent evaluator), reader errors, the task end to end."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bixt.data.listops import (ListOpsCollate, ListOpsFormatError, VOCAB, apply_operator, check_expression,
                               evaluate_tokens, generate_listops, iter_listops_tsv, load_listops, vocabulary,
                               write_listops, write_tsv)

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------- generator
def reference_value(source: str) -> int:
    """An independent evaluation: translate the expression into a Python expression and eval it.

    ``[MAX`` -> ``mx(``, ``]`` -> ``)``, digits become arguments separated by commas; the
    binarisation's parentheses are dropped. MED follows LRA (``int(np.median(...))``).
    """
    functions = {"[MIN": "mn(", "[MAX": "mx(", "[MED": "md(", "[SM": "sm("}
    parts = []
    for token in source.split():
        if token in "()":
            continue
        if token == "]":
            parts.append(")")
        else:
            parts.append(functions.get(token, token))
    code = re.sub(r"(?<=[\d)])\s+(?=[\dms])", ", ", " ".join(parts))
    env = {"mn": lambda *a: min(a), "mx": lambda *a: max(a), "md": lambda *a: int(np.median(a)),
           "sm": lambda *a: sum(a) % 10}
    return eval(code, {"__builtins__": {}}, env)  # noqa: S307 (generated, trusted strings)


def test_generator_targets_match_an_independent_evaluation():
    (rows,) = generate_listops([400], seed=1, max_depth=5, max_args=5, min_length=10, max_length=150)
    assert all(reference_value(src) == target for src, target in rows)
    assert all(evaluate_tokens(src.split()) == target for src, target in rows)
    ops = {t for src, _ in rows for t in src.split() if t.startswith("[")}
    assert ops == {"[MIN", "[MAX", "[MED", "[SM"}


def test_generator_layout_is_lra_binarised_and_deterministic():
    a = generate_listops([50, 10], seed=3, max_depth=4, max_args=4, min_length=4, max_length=40)
    b = generate_listops([50, 10], seed=3, max_depth=4, max_args=4, min_length=4, max_length=40)
    c = generate_listops([50, 10], seed=4, max_depth=4, max_args=4, min_length=4, max_length=40)
    assert a == b and a != c
    assert not {s for s, _ in a[0]} & {s for s, _ in a[1]}  # no expression in two splits
    for src, _ in a[0]:
        tokens = src.split()
        assert check_expression(tokens) is None
        assert tokens[0] == "(" and tokens[-2:] == ["]", ")"]
        length = sum(t not in "()" for t in tokens)  # LRA's length: digits + 2 per operator
        assert 4 < length < 40
    # the exact LRA string of ([MAX 2 9 4]): ( ( ( ( [MAX 2 ) 9 ) 4 ) ] )
    from bixt.data.listops import tree_to_string
    assert tree_to_string(("[MAX", [2, 9, 4])) == "( ( ( ( [MAX 2 ) 9 ) 4 ) ] )"


def test_median_of_an_even_count_is_lra_int_of_numpy_median():
    assert apply_operator("[MED", [1, 4]) == int(np.median([1, 4])) == 2  # not the lower median (1)
    assert apply_operator("[MED", [9, 0, 3, 8]) == 5
    assert apply_operator("[MED", [7, 1, 5]) == 5
    assert apply_operator("[SM", [9, 9, 3]) == 1


def test_write_and_read_back(tmp_path):
    paths = write_listops(tmp_path / "lo", {"train": 20, "val": 5, "test": 5}, seed=0, max_depth=3, max_args=4,
                          min_length=3, max_length=30)
    assert paths["train"].read_text().splitlines()[0] == "Source\tTarget"
    rows = list(iter_listops_tsv(paths["train"], max_len=64))
    vocab = vocabulary()
    lines = paths["train"].read_text().splitlines()[1:]
    assert [r["label"] for r in rows] == [int(line.split("\t")[1]) for line in lines]
    assert vocab.decode(rows[0]["input_ids"]) == " ".join(t for t in lines[0].split("\t")[0].split() if t not in "()")
    assert len(VOCAB) + 1 == vocab.vocab_size == 18


def test_command_line_writes_lra_layout(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bixt.data.listops", "--write", str(tmp_path), "--train", "8",
                           "--val", "2", "--test", "2", "--max-depth", "3", "--min-length", "3", "--max-length", "40"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["basic_test.tsv", "basic_train.tsv", "basic_val.tsv"]
    assert len((tmp_path / "basic_train.tsv").read_text().splitlines()) == 9


# ---------------------------------------------------------------------------------------- reader
GOOD = "( ( ( ( [MAX 2 ) 9 ) 4 ) ] )\t9"


@pytest.mark.parametrize("line, message", [
    ("( ( ( [MAX 2 ) 9 ) 4 )\t9", r"unbalanced brackets: \[MAX at token 4 is never closed"),
    ("( ( ( [MIN 2 ) 3 ) ] ] )\t2", r"unbalanced brackets: '\]' at token 10 closes no operator"),
    ("( ( ( [MAX 2 ) 9 ) ] ) )\t9", r"unbalanced parentheses: '\)' at token 11 closes nothing"),
    ("( ( ( [MAX 2 ) 9 ) ]\t9", r"unbalanced parentheses: 1 '\(' never closed"),
    ("( ( [MAX 2 ) 12 ) ] )\t9", r"unknown token '12' at token 6"),
    ("( ( [MUL 2 ) 3 ) ] )\t6", r"unknown token '\[MUL' at token 3"),
    ("( ( ( [MAX 2 ) 9 ) ] )\t10", "target must be an integer 0-9"),
    ("( ( ( [MAX 2 ) 9 ) ] )\tnine", "target must be an integer 0-9"),
    ("( ( [MAX 2 ) 9 ) ] )", "expected 2 tab-separated columns"),
    ("[MAX ]\t0", r"operator \[MAX at token 1 has no arguments"),
    ("3 4\t3", "expected one expression, got 2"),
])
def test_reader_reports_bad_lines_with_file_and_line(tmp_path, line, message):
    path = tmp_path / "basic_train.tsv"
    path.write_text("Source\tTarget\n" + GOOD + "\n" + line + "\n")
    with pytest.raises(ListOpsFormatError, match=message) as info:
        list(iter_listops_tsv(path))
    assert f"{path}:3:" in str(info.value)


def test_too_long_sequences_truncate_or_fail(tmp_path):
    path = tmp_path / "basic_train.tsv"
    path.write_text("Source\tTarget\n" + GOOD + "\n( ( ( [MIN 2 ) 3 ) ] )\t2\n")
    rows = list(iter_listops_tsv(path, max_len=5))  # the first has 5 tokens without parentheses
    assert [r["truncated"] for r in rows] == [False, False]
    rows = list(iter_listops_tsv(path, max_len=4))
    assert [r["truncated"] for r in rows] == [True, False] and len(rows[0]["input_ids"]) == 4
    assert rows[0]["length"] == 5
    with pytest.raises(ListOpsFormatError, match=r"basic_train.tsv:2: 5 tokens, longer than the task length"):
        list(iter_listops_tsv(path, max_len=4, on_too_long="fail"))
    kept = list(iter_listops_tsv(path, max_len=64, keep_parens=True))
    assert len(kept[0]["input_ids"]) == 13


def write_folder(root: Path, copies: int = 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = [("( ( ( ( [MAX 2 ) 9 ) 4 ) ] )", 9), ("( ( ( [MIN 5 ) 3 ) ] )", 3),
            ("( ( ( [SM 7 ) ( ( ( [MED 1 ) 4 ) ] ) ) ] )", 9), ("( ( ( ( [MED 1 ) 8 ) 6 ) ] )", 6)]
    for split in ("train", "val", "test"):
        write_tsv(root / f"basic_{split}.tsv", rows * copies)
    return root


def test_load_listops_caches_outside_the_folder_and_counts_truncation(tmp_path, caplog):
    root = write_folder(tmp_path / "lo")
    before = sorted(p.name for p in root.iterdir())
    splits = load_listops(root, max_len=6, cache_dir=tmp_path / "cache")
    assert sorted(p.name for p in root.iterdir()) == before
    assert int(np.sum(splits["train"]["truncated"])) == 4  # the SM line has 7 tokens
    assert "4 of 16 sequences longer than data.max_len=6 tokens were truncated" in caplog.text
    assert splits["val"][0]["label"] == 9
    with pytest.raises(ValueError, match="inside the data folder"):
        load_listops(root, cache_dir=root / "c")
    with pytest.raises(FileNotFoundError, match="lacks basic_val.tsv"):
        (root / "basic_val.tsv").unlink()
        load_listops(root, cache_dir=tmp_path / "cache")


def test_collate_pads_to_the_longest_and_model_masks_padding():
    from bixt.heads.classification import ClassificationHead
    from bixt.models.text import BiXTSequenceEncoder, SequenceClassifier

    vocab = vocabulary()
    rows = [{"input_ids": vocab.encode("( ( [MAX 2 ) 9 ) ] )"), "label": 9}, {"input_ids": vocab.encode("7"), "label": 7}]
    ids, labels = ListOpsCollate()(rows)
    assert ids.shape == (2, 4) and labels.tolist() == [9, 7] and ids[1, 1:].tolist() == [0, 0, 0]
    torch.manual_seed(0)
    model = SequenceClassifier(BiXTSequenceEncoder(dim=32, depth=2, num_latents=8, num_heads=2, max_len=16,
                                                   vocab_size=vocab.vocab_size),
                               ClassificationHead(dim=32, num_classes=10)).eval()
    torch.nn.init.normal_(model.head.fc.weight)
    with torch.no_grad():
        both = model(ids)
        alone = model(ids[1:, :1])
        padded = model(torch.nn.functional.pad(ids, (0, 5)))
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both, padded, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------- task
TINY = ["model.encoder.dim=32", "model.encoder.depth=2", "model.encoder.num_heads=2", "trainer.epochs=1",
        "trainer.batch_size=4", "trainer.eval_batch_size=8", "trainer.log_every=0"]


def run_task(tmp_path: Path, *overrides: str, check: bool = True) -> tuple[subprocess.CompletedProcess, dict]:
    run_dir = tmp_path / "run"
    env = dict(os.environ, BIXT_CACHE=str(tmp_path / "bixt-cache"), HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "bixt.tasks.lra_listops", f"trainer.run_dir={run_dir}",
         f"hydra.run.dir={tmp_path / 'hydra'}", *TINY, *overrides],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    if not check:
        return proc, {}
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return proc, {k: v for line in lines for k, v in line.items()}


@pytest.mark.e2e
@pytest.mark.parametrize("model", ["bixt_tiny", "transformer_tiny"])
def test_task_runs_and_evaluates_on_lra_tsv_files(tmp_path, model):
    root = write_folder(tmp_path / "lo")
    _, metrics = run_task(tmp_path, f"model={model}", "data=listops", f"data.root={root}")
    assert 0.0 <= metrics["val/top1"] <= 100.0 and "val/mean_class_acc" in metrics
    assert 0.0 <= metrics["test_listops/top1"] <= 100.0
    assert (tmp_path / "run" / "config.yaml").is_file() and (tmp_path / "run" / "last.pth").is_file()
    ckpt = torch.load(tmp_path / "run" / "last.pth", map_location="cpu", weights_only=False)
    assert ckpt["classes"] == [str(d) for d in range(10)]
    # evaluate the run's checkpoint through the shortcut
    _, again = run_task(tmp_path, f"model={model}", "data=listops", f"data.root={root}", "eval_only=true", "resume=true")
    assert "val/top1" in again


@pytest.mark.e2e
def test_task_reports_a_bad_line_and_a_too_long_sequence(tmp_path):
    root = write_folder(tmp_path / "lo")
    (root / "basic_val.tsv").write_text("Source\tTarget\n" + GOOD + "\n( ( ( [MAX 2 ) 9 ) ] \t9\n")
    proc, _ = run_task(tmp_path, "data=listops", f"data.root={root}", check=False)
    assert proc.returncode != 0
    assert "basic_val.tsv:3: unbalanced parentheses" in proc.stderr
    write_folder(root)
    proc, _ = run_task(tmp_path, "data=listops", f"data.root={root}", "data.max_len=6", "data.on_too_long=fail",
                       check=False)
    assert proc.returncode != 0 and "basic_train.tsv:4: 7 tokens, longer than the task length" in proc.stderr


@pytest.mark.e2e
def test_task_default_data_runs(tmp_path):
    _, metrics = run_task(tmp_path, "data.train_size=32", "data.val_size=8", "data.test_size=8")
    assert "test_embedded/top1" in metrics


def test_shortcuts_and_lra_scale_configs():
    from hydra import compose, initialize_config_dir

    import bixt.engine  # noqa: F401  (registers trainer/default)
    from bixt.baselines.transformer import TransformerDocumentEncoder
    from bixt.models.text import BiXTSequenceEncoder
    from bixt.data.listops import vocabulary
    from bixt.tasks.kit import build_model

    with initialize_config_dir(config_dir=str(REPO / "bixt" / "configs" / "lra_listops"), version_base=None):
        cfg = compose("config", overrides=["eval_only=true", "resume=true", "trainer.run_dir=/runs/x"])
        bixt_cfg = compose("config", overrides=["experiment=listops", "data.root=unused"])
        tf_cfg = compose("config", overrides=["experiment=listops", "model=transformer", "data.root=unused"])
    assert cfg.trainer.eval_only is True and cfg.trainer.resume is True
    assert bixt_cfg.data.name == "listops" and bixt_cfg.data.max_len == 2000
    runtime = dict(encoder={"vocab_size": vocabulary(keep_parens=False).vocab_size}, head={"num_classes": 10})
    bixt = build_model(bixt_cfg.model, **runtime).encoder
    assert isinstance(bixt, BiXTSequenceEncoder) and bixt.embed.max_len == 2000 and bixt.embed.vocab_size == 18
    transformer = build_model(tf_cfg.model, **runtime).encoder
    assert isinstance(transformer, TransformerDocumentEncoder) and len(transformer.blocks) == 4


@pytest.mark.e2e
def test_benchmark_smoke(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_listops

    report = bench_listops.main(["--batch", "2", "--length", "64", "--repeats", "1", "--out", str(tmp_path)])
    assert set(report["models"]) == {"bixt", "transformer"}
    for result in report["models"].values():
        assert result["seqs_per_s"] > 0 and result["memory"]["status"].startswith("ok")
    assert json.loads((tmp_path / "lra_listops.json").read_text())["settings"]["length"] == 64
