"""LRA retrieval data: TSV reader, caching, the embedded generator, and the task end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bixt.data.aan import (AANFormatError, RetrievalCollate, TOPIC_CONSONANTS, generate_retrieval_pairs,
                           iter_aan_tsv, load_aan, make_lexicons)

REPO = Path(__file__).resolve().parents[1]

# Rows in the exact LRA release format: label, id1, id2, text1, text2; tab-separated, no header,
# texts stored as Python bytes literals (str(bytes)), which escape tabs, newlines and non-ASCII.
LRA_ROWS = [
    "1\tP00-1001\tP00-1002\tb'Statistical parsing of text.\\nWe present a parser.'\tb'A parser for text; \\xc3\\xa9t\\xc3\\xa9.'",
    "0\tP00-1003\tW99-0101\tb\"It's a tagger\\twith tabs\"\tb'Unrelated work on speech.'",
    "1.0\tP00-1004\tP00-1005\tb''\tb'second document only'",
    "0.0\tP00-1006\tP00-1007\tplain UTF-8 text, caf\u00e9\tb'\\x00\\x01 binary-ish bytes'",
]


def write_tsv(path: Path, rows: list[str]) -> Path:
    path.write_bytes(("\n".join(rows) + "\n").encode("utf-8"))
    return path


def write_aan_folder(root: Path, rows: list[str], copies: int = 1) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "eval", "test"):
        write_tsv(root / f"new_aan_pairs.{split}.tsv", rows * copies)
    return root


# ---------------------------------------------------------------------------------------- reader
def test_reader_parses_lra_rows_including_bytes_literals(tmp_path):
    rows = list(iter_aan_tsv(write_tsv(tmp_path / "x.tsv", LRA_ROWS + [""])))  # trailing blank line skipped
    assert [r["label"] for r in rows] == [1, 0, 1, 0]
    assert rows[0]["id1"] == "P00-1001" and rows[0]["id2"] == "P00-1002"
    assert rows[0]["text1"] == b"Statistical parsing of text.\nWe present a parser."
    assert rows[0]["text2"] == "A parser for text; été.".encode("utf-8")
    assert rows[1]["text1"] == b"It's a tagger\twith tabs"
    assert rows[2]["text1"] == b""
    assert rows[3]["text1"] == "plain UTF-8 text, café".encode("utf-8")
    assert rows[3]["text2"] == b"\x00\x01 binary-ish bytes"


@pytest.mark.parametrize("line, message", [
    ("1\tP1\tP2\tb'only four columns'", "expected 5 tab-separated columns .* got 4"),
    ("1\tP1\tP2\tb'a'\tb'b'\textra", "got 6"),
    ("2\tP1\tP2\tb'a'\tb'b'", "label must be 0 or 1, got '2'"),
    ("yes\tP1\tP2\tb'a'\tb'b'", "label must be 0 or 1, got 'yes'"),
    ("1\tP1\tP2\tb'unterminated\tb'b'", "text1 looks like a Python bytes literal but cannot be parsed"),
    ("1\tP1\tP2\tb'a'\tb'__import__(\"os\")' + b''", "text2 looks like a Python bytes literal but cannot be parsed"),
])
def test_reader_reports_malformed_rows_with_file_and_line(tmp_path, line, message):
    path = write_tsv(tmp_path / "bad.tsv", LRA_ROWS[:2] + [line])
    with pytest.raises(AANFormatError, match=message) as info:
        list(iter_aan_tsv(path))
    assert f"{path}:3:" in str(info.value)


def test_reader_rejects_undecodable_plain_text(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_bytes(b"1\tP1\tP2\tb'fine'\tnot utf-8 \xff\xfe\n")
    with pytest.raises(AANFormatError, match=r"bad.tsv:1: text2 is neither a bytes literal .* nor valid UTF-8"):
        list(iter_aan_tsv(path))


def _snapshot(folder: Path) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_load_aan_caches_outside_the_read_only_data_folder(tmp_path):
    root = write_aan_folder(tmp_path / "aan", LRA_ROWS)
    before = _snapshot(root)
    cache = tmp_path / "cache"
    first = load_aan(root, max_len=16, cache_dir=cache)
    assert _snapshot(root) == before  # nothing written into the data folder
    cached = sorted(p.name for p in cache.glob("aan-*-bytes16.arrow"))
    assert len(cached) == 3
    assert first["train"][0]["input_ids1"][:4] == [ord(c) + 1 for c in "Stat"]
    assert all(len(x) <= 16 for x in first["train"]["input_ids1"])
    assert first["train"][2]["input_ids1"] == []  # the empty document
    # a second load reads the cached tokenised file instead of re-tokenising
    second = load_aan(root, max_len=16, cache_dir=cache)
    assert [Path(f["filename"]).name for f in second["eval"].cache_files] == [
        n for n in cached if n.startswith("aan-eval-")]
    assert second["test"]["input_ids2"] == first["test"]["input_ids2"]
    # an edited file is re-read (the cache key includes size and mtime)
    write_tsv(root / "new_aan_pairs.eval.tsv", LRA_ROWS[:1])
    assert len(load_aan(root, max_len=16, cache_dir=cache)["eval"]) == 1


def test_load_aan_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; point data.root"):
        load_aan(tmp_path / "missing")
    root = tmp_path / "partial"
    root.mkdir()
    write_tsv(root / "new_aan_pairs.train.tsv", LRA_ROWS)
    with pytest.raises(FileNotFoundError, match="lacks new_aan_pairs.eval.tsv, new_aan_pairs.test.tsv"):
        load_aan(root, cache_dir=tmp_path / "c")
    write_aan_folder(root, LRA_ROWS)
    with pytest.raises(ValueError, match="inside the data folder"):
        load_aan(root, cache_dir=root / "cache")
    write_tsv(root / "new_aan_pairs.test.tsv", LRA_ROWS + ["3\tP1\tP2\tb'a'\tb'b'"])
    with pytest.raises(AANFormatError, match=r"new_aan_pairs.test.tsv:5: label must be 0 or 1"):
        load_aan(root, cache_dir=tmp_path / "c")


def test_collate_pads_each_side_and_stacks_labels():
    rows = [{"label": 1, "input_ids1": np.array([5, 6, 7]), "input_ids2": np.array([], dtype=np.int64)},
            {"label": 0, "input_ids1": np.array([8]), "input_ids2": np.array([9, 10])}]
    batch = RetrievalCollate()(rows)
    assert batch["input_ids1"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["token_mask2"].tolist() == [[True, False], [True, True]]  # empty doc: placeholder
    assert batch["label"].tolist() == [1, 0]


# ---------------------------------------------------------------------------------------- generator
def _topics_in(text: bytes, num_topics: int = 8) -> frozenset:
    """The topics a byte string shows: topic m writes with its own consonants."""
    per = len(TOPIC_CONSONANTS) // num_topics
    letters = set(text.decode("ascii"))
    return frozenset(m for m in range(num_topics) if letters & set(TOPIC_CONSONANTS[m * per:(m + 1) * per]))


def test_generator_is_deterministic_and_balanced():
    a = generate_retrieval_pairs(300, seed=3, min_bytes=400, max_bytes=600)
    b = generate_retrieval_pairs(300, seed=3, min_bytes=400, max_bytes=600)
    c = generate_retrieval_pairs(300, seed=4, min_bytes=400, max_bytes=600)
    assert a == b and a["text1"] != c["text1"]
    assert 0.4 < np.mean(a["label"]) < 0.6
    lengths = [len(t) for t in a["text1"] + a["text2"]]
    assert min(lengths) >= 400 and max(lengths) <= 600
    topics, common = make_lexicons(8)
    assert len(topics) == 8 and all(w.islower() for w in common)


def test_generator_label_needs_the_whole_of_both_documents():
    data = generate_retrieval_pairs(3000, seed=0, min_bytes=200, max_bytes=300)
    # The whole documents determine the label exactly ...
    pairs = list(zip(data["text1"], data["text2"], data["label"]))
    assert all((_topics_in(t1) == _topics_in(t2)) == bool(y) for t1, t2, y in pairs)
    assert all(_topics_in(t) == frozenset(s) for t, s in zip(data["text1"], data["signature1"]))
    # ... while the first halves allow little: the Bayes-optimal accuracy of any rule on the topics
    # seen in the first halves (by symmetry, their overlap counts are a sufficient statistic).
    counts = Counter()
    for t1, t2, y in pairs:
        seen1, seen2 = _topics_in(t1[: len(t1) // 2]), _topics_in(t2[: len(t2) // 2])
        counts[(len(seen1), len(seen2), len(seen1 & seen2)), y] += 1
    keys = {k for k, _ in counts}
    bayes = sum(max(counts[k, 0], counts[k, 1]) for k in keys) / len(data["label"])
    assert bayes < 0.72


# ---------------------------------------------------------------------------------------- task
TINY = [
    "model.encoder.dim=32", "model.encoder.depth=2", "model.encoder.num_heads=2",
    "model.head.hidden_dims=[16]", "trainer.epochs=1", "trainer.batch_size=4", "trainer.eval_batch_size=8",
    "trainer.log_every=0",
]


def run_task(tmp_path: Path, *overrides: str) -> dict:
    """Run the task command with a tiny model; returns the metrics of all lines of metrics.jsonl."""
    run_dir = tmp_path / "run"
    env = dict(os.environ, BIXT_CACHE=str(tmp_path / "bixt-cache"), HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "bixt.tasks.lra_retrieval", f"trainer.run_dir={run_dir}",
         f"hydra.run.dir={tmp_path / 'hydra'}", *TINY, *overrides],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {k: v for line in lines for k, v in line.items()}


@pytest.mark.e2e
def test_task_runs_and_evaluates_on_lra_tsv_files(tmp_path):
    root = write_aan_folder(tmp_path / "aan", LRA_ROWS, copies=3)
    before = _snapshot(root)
    metrics = run_task(tmp_path, "data=aan", f"data.root={root}", "data.max_len=64")
    assert 0.0 <= metrics["val/accuracy"] <= 1.0 and metrics["val/pairs_per_s"] > 0
    assert 0.0 <= metrics["test_aan/accuracy"] <= 1.0
    assert metrics["train/pairs_per_s"] > 0
    assert _snapshot(root) == before
    assert list((tmp_path / "bixt-cache" / "aan").glob("aan-train-*-bytes64.arrow"))


@pytest.mark.e2e
def test_task_reports_a_malformed_row(tmp_path):
    root = write_aan_folder(tmp_path / "aan", LRA_ROWS)
    write_tsv(root / "new_aan_pairs.train.tsv", LRA_ROWS + ["1\tP1\tP2\tb'x'"])
    env = dict(os.environ, BIXT_CACHE=str(tmp_path / "c"))
    proc = subprocess.run(
        [sys.executable, "-m", "bixt.tasks.lra_retrieval", "data=aan", f"data.root={root}",
         f"hydra.run.dir={tmp_path / 'hydra'}", *TINY],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    assert "new_aan_pairs.train.tsv:5: expected 5 tab-separated columns" in proc.stderr


@pytest.mark.e2e
@pytest.mark.parametrize("model", ["bixt_tiny", "transformer_tiny"])
def test_task_default_data_runs_both_models(tmp_path, model):
    metrics = run_task(tmp_path, f"model={model}", "data.train_size=16", "data.eval_size=8", "data.test_size=8",
                       "data.min_bytes=100", "data.max_bytes=200")
    assert 0.0 <= metrics["val/accuracy"] <= 1.0
    assert 0.0 <= metrics["test_embedded/accuracy"] <= 1.0


def test_resume_and_eval_only_shortcuts_reach_the_trainer():
    from hydra import compose, initialize_config_dir

    import bixt.engine  # noqa: F401  (registers trainer/default; alone, nothing else in this file imports it)

    with initialize_config_dir(config_dir=str(REPO / "bixt" / "configs" / "lra_retrieval"), version_base=None):
        cfg = compose("config", overrides=["eval_only=true", "resume=true", "trainer.run_dir=/runs/x"])
    assert cfg.trainer.eval_only is True and cfg.trainer.resume is True


def test_lra_scale_configs_match_the_lra_baseline():
    from hydra import compose, initialize_config_dir

    from bixt.baselines.transformer import TransformerDocumentEncoder
    from bixt.models.text import BiXTSequenceEncoder
    from bixt.tasks.kit import build_model

    with initialize_config_dir(config_dir=str(REPO / "bixt" / "configs" / "lra_retrieval"), version_base=None):
        bixt_cfg = compose("config", overrides=["experiment=aan", "data.root=unused"])
        tf_cfg = compose("config", overrides=["experiment=aan", "model=transformer", "data.root=unused"])
    assert bixt_cfg.data.name == "aan" and bixt_cfg.data.max_len == 4000 and bixt_cfg.trainer.batch_size == 32
    assert list(bixt_cfg.optim.betas) == [0.9, 0.98]
    transformer = build_model(tf_cfg.model).document_encoder
    assert isinstance(transformer, TransformerDocumentEncoder) and len(transformer.blocks) == 4
    block = transformer.blocks[0]
    assert transformer.dim == 128 and block.attn.num_heads == 4 and block.mlp.fc1.out_features == 512
    bixt = build_model(bixt_cfg.model).document_encoder
    assert isinstance(bixt, BiXTSequenceEncoder) and len(bixt.encoder.blocks) == 4
    assert bixt.dim == 128 and bixt.encoder.num_latents == 32 and bixt.embed.max_len == 4000


@pytest.mark.e2e
def test_benchmark_runs_both_models_in_one_run(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_lra

    report = bench_lra.main(["--batch", "2", "--length", "64", "--repeats", "1", "--out", str(tmp_path)])
    assert set(report["models"]) == {"bixt", "transformer"}
    for result in report["models"].values():
        assert result["pairs_per_s"] > 0 and result["gflops_per_pair"] > 0
        assert result["memory"]["status"].startswith("ok") and result["memory"]["peak_extra_mb"] >= 0
    assert report["summary"]["throughput_ratio_bixt_over_transformer"] > 0
    assert json.loads((tmp_path / "lra_retrieval.json").read_text())["settings"]["length"] == 64


@pytest.mark.e2e
def test_task_is_deterministic_for_a_seed(tmp_path):
    tiny_data = ["data.train_size=16", "data.eval_size=8", "data.test_size=8",
                 "data.min_bytes=100", "data.max_bytes=200"]
    first = run_task(tmp_path / "a", "trainer.seed=3", "data.seed=5", *tiny_data)
    second = run_task(tmp_path / "b", "trainer.seed=3", "data.seed=5", *tiny_data)
    keys = ["train/loss", "val/loss", "val/accuracy", "test_embedded/loss"]
    assert [first[k] for k in keys] == [second[k] for k in keys]


def test_generator_rejects_documents_too_short_for_their_topics():
    with pytest.raises(ValueError, match="min_bytes"):
        generate_retrieval_pairs(10, seed=0, min_bytes=4, max_bytes=4)  # 4 topics need >= 8 bytes
    data = generate_retrieval_pairs(20, seed=0, min_bytes=8, max_bytes=8)
    for text in data["text1"] + data["text2"]:
        assert len(text) == 8 and all(text[i] != ord(" ") for i in range(0, 8, 2))  # a letter per section
