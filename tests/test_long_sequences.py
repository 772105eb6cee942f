"""benchmarks/long_sequences.py: the estimate that skips a length, the skip chain, a tiny real run."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import long_sequences as ls  # noqa: E402


def test_estimate_extrapolates_the_last_log_log_slope_at_least_linear():
    assert ls.estimate([], 1000) is None
    assert ls.estimate([(100, 10.0)], 200) == pytest.approx(40.0)  # one point: assume quadratic
    assert ls.estimate([(100, 10.0), (200, 20.0)], 800) == pytest.approx(80.0)  # linear
    assert ls.estimate([(100, 10.0), (200, 40.0)], 400) == pytest.approx(160.0)  # quadratic
    assert ls.estimate([(100, 10.0), (200, 11.0)], 400) == pytest.approx(22.0)  # flat start: taken as linear
    assert ls.fitted_slope([(n, 3.0 * n ** 1.5) for n in (10, 100, 1000, 10000)]) == pytest.approx(1.5)
    assert ls.fitted_slope([(10, 1.0)]) is None


def test_skip_reason_names_the_estimate_and_the_budget():
    plan = ls.Plan(lengths={}, budget_gb=1.0, max_call_s=10.0)
    assert ls.skip_reason(plan, [], [], 4096) is None  # nothing measured yet: measure
    reason = ls.skip_reason(plan, [(1024, 100.0), (2048, 400.0)], [(1024, 0.1), (2048, 0.2)], 8192)
    assert reason == "skipped: estimated 6.2 GB > budget 1 GB"
    reason = ls.skip_reason(plan, [(1024, 1.0), (2048, 2.0)], [(1024, 1.0), (2048, 4.0)], 8192)
    assert reason == "skipped: estimated 64 s per call > budget 10 s"


def test_a_length_over_the_budget_is_skipped_and_so_are_the_longer_ones(monkeypatch):
    launched = []

    def fake_point(plan, family, length, modes, threads):  # memory quadratic for full attention, linear else
        launched.append((family.name, length, tuple(modes)))
        power = 2 if family.kind == "full" else 1
        return {m: {"status": "ok", "peak_mb": (length / 1000) ** power * (3 if m == "train" else 1),
                    "median_s": length / 1e5} for m in modes}

    monkeypatch.setattr(ls, "run_point", fake_point)
    plan = ls.Plan(lengths={"bytes": (1000, 2000, 4000, 8000, 16000)}, budget_gb=0.1, max_call_s=100.0)
    rows = ls.run(plan, log=lambda msg: None)
    full = {(r["length"], r["mode"]): r for r in rows if r["family"] == "Transformer (SDPA)"}
    # forward 1, 4, 16, 64 MB measured; train 3, 12, 48 MB, then 192 MB estimated at 8000 > 102 MB
    assert full[(8000, "forward")]["status"] == "ok"
    assert full[(8000, "train")]["status"] == "skipped: estimated 0.2 GB > budget 0.1 GB"
    assert full[(8000, "train")]["estimated_peak_mb"] == pytest.approx(192.0)
    assert ("Transformer (SDPA)", 8000, ("forward",)) in launched  # only the mode that fits is run
    assert full[(16000, "forward")]["status"] == "skipped: estimated 0.2 GB > budget 0.1 GB"  # 256 MB
    assert full[(16000, "train")]["status"] == "skipped: longer than 8000 (skipped)"
    bixt = [r for r in rows if r["family"] == "BiXT"]
    assert all(r["status"] == "ok" for r in bixt)
    summary = {(s["family"], s["mode"]): s for s in ls.summarise(rows, plan)}
    assert summary[("BiXT", "forward")]["memory_slope"] == pytest.approx(1.0)
    assert summary[("Transformer (SDPA)", "train")]["first_not_fitting"] == 8000
    assert summary[("Transformer (SDPA)", "train")]["longest_fitting"] == 4000

    def failing_point(plan, family, length, modes, threads):
        return {m: ({"status": "failed: DefaultCPUAllocator: not enough memory"} if length >= 2000
                    else {"status": "ok", "peak_mb": 1.0, "median_s": 0.01}) for m in modes}

    monkeypatch.setattr(ls, "run_point", failing_point)
    rows = ls.run(ls.Plan(lengths={"bytes": (1000, 2000, 4000)}), log=lambda msg: None)
    after = [r["status"] for r in rows if r["family"] == "BiXT" and r["mode"] == "forward"]
    assert after == ["ok", "failed: DefaultCPUAllocator: not enough memory", "skipped: longer than 2000 (failed)"]


def test_image_sides_are_stride_four_or_eight():
    assert ls.image_side("bixt", 4096) == 256 and ls.image_side("xcit", 4096) == 512
    with pytest.raises(ValueError, match="must be squares"):
        ls.image_side("full", 5000)


def test_smoke_run_measures_every_byte_model_and_writes_the_results(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    results = ls.main(["--smoke", "--only", "bytes", "--out", str(tmp_path)])
    rows = results["rows"]
    assert {(r["family"], r["length"], r["mode"]) for r in rows} == {
        (f, n, m) for f in ("BiXT", "Perceiver", "Transformer (SDPA)") for n in (256, 1024) for m in ("forward", "train")}
    for row in rows:
        assert row["status"].startswith("ok"), row
        assert row["median_s"] > 0 and row["peak_mb"] >= 0 and math.isfinite(row["peak_mb"])
    stored = json.loads((tmp_path / "long_sequences_smoke.json").read_text())
    assert stored["cpu_kind"] and stored["plan"]["mode"] == "smoke" and len(stored["summary"]) == 6
    for name in ("long_sequences_smoke_time.png", "long_sequences_smoke_memory.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "## bytes" in printed and "memory slope" in printed
    assert (tmp_path / "long_sequences_smoke.md").read_text().startswith("# Long sequences (smoke)")
