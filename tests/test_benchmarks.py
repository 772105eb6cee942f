"""benchmarks/perf.py: the measurement helpers and a tiny end-to-end run (no timing assertions)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import common  # noqa: E402
import perf  # noqa: E402


def test_interleaved_timing_runs_configs_in_turn_and_reports_failures():
    calls = []

    def make(name):
        return lambda: calls.append(name)

    def broken():
        raise RuntimeError("inductor exploded\nlong traceback")

    results = common.interleaved_timing(
        {"a": make("a"), "b": make("b"), "bad": broken}, repeats=3, warmup=2,
        failure_prefix={"bad": "compile failed"},
    )
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3  # warm-up per config, then rounds in turn
    assert len(results["a"].samples) == 3 and results["a"].status == "ok"
    assert results["bad"].status == "compile failed: RuntimeError: inductor exploded"
    assert results["bad"].samples == [] and results["bad"].median is None


def test_interleaved_timing_marks_too_slow_and_respects_budget():
    results = common.interleaved_timing({"slow": lambda: None}, repeats=5, max_call_s=-1.0)
    assert results["slow"].status.startswith("too slow") and len(results["slow"].samples) == 1
    results = common.interleaved_timing({"fast": lambda: None}, repeats=5, budget_s=-1.0)
    assert len(results["fast"].samples) == 1  # the first round always runs


def test_bixt_flops_use_one_similarity_per_layer():
    net = perf.Net("bixt_ti_l64_p16", dict(depth=2, embed_dim=32, num_heads=2, num_latents=8, img_size=32,
                                           attn_impl="sdpa"), 32)
    fwd, train = perf.flops_per_image(net, 2, train=False), perf.flops_per_image(net, 2, train=True)
    assert fwd > 0 and 2.5 * fwd < train < 3.5 * fwd
    assert fwd == perf.flops_per_image(net.with_kwargs(attn_impl="math"), 2, train=False)


def _row(**kw):
    return {"role": "model", "status": "ok", **kw}


def test_summary_checks_verdicts():
    results = {
        "models": [
            _row(task="forward", dtype="fp32", mode="eager", batch=32, matmul_fraction=0.9, images_per_s=10.0),
            _row(task="forward", dtype="bf16", mode="eager", batch=32, matmul_fraction=0.2, images_per_s=20.0),
            _row(task="train", dtype="fp32", mode="eager", batch=16, matmul_fraction=None, images_per_s=None,
                 status="failed: boom"),
            _row(task="forward", dtype="fp32", mode="accel", batch=32, images_per_s=14.0),
            _row(role="reference", task="forward", dtype="fp32", mode="plain ops", batch=32, images_per_s=10.0),
        ],
        "accuracy": {"status": "ok", "features": {"max_rel_err": 0.01}},
        "scaling": [
            dict(family="BiXT-Ti", tokens=3136, images_per_s=30.0, peak_mb_per_image=10.0),
            dict(family="ViT-Ti", tokens=3136, images_per_s=5.0),
            dict(family="BiXT-Ti", tokens=12544, images_per_s=8.0, peak_mb_per_image=50.0),
            dict(family="ViT-Ti", tokens=12544, images_per_s=None, status="skipped (quick)"),
        ],
    }
    verdicts = {c["name"]: c["verdict"] for c in perf.summary_checks(results)}
    assert verdicts == {
        "fp32_forward_matmul_fraction": "PASS", "bf16_over_fp32_forward_speed": "FAIL",
        "fp32_train_matmul_fraction": "N/A", "bf16_features_max_rel_err": "PASS",
        "bixt_over_vit_speed_3136": "PASS", "bixt_over_vit_speed_12544": "N/A",
        "bixt_memory_growth_3136_to_12544": "FAIL",
        "accel_forward_over_plain_ops": "PASS", "plain_model_forward_over_plain_ops": "FAIL",
        "train_over_plain_ops_eager": "N/A", "train_over_plain_ops_compiled": "N/A",
    }


def test_context_lines_without_the_matmul_section():
    # --only models: no matmul reference, so no FLOP-rate fractions; the speed ratio is still reported
    rows = [_row(task="forward", dtype="fp32", mode="eager", images_per_s=21.0),
            _row(role="reference", task="forward", dtype="fp32", mode="plain ops", images_per_s=20.0)]
    (line,) = perf.context_lines({"models": rows})
    assert "20.0 img/s;" in line and "bixt/reference speed 1.05x" in line and "of matmul" not in line


def test_only_rejects_unknown_sections():
    with pytest.raises(SystemExit):
        perf.parse_args(["--only", "models,speed"])
    assert perf.parse_args(["--only", "models"]).sections == ("models",)


@pytest.mark.e2e
@pytest.mark.parametrize("native_bf16", [True, False], ids=["native-bf16", "no-native-bf16"])
def test_smoke_run_writes_json_plots_and_summary(tmp_path, capsys, native_bf16):
    pytest.importorskip("matplotlib")  # the `bench` extra
    from bixt.accel import cpu_kernel_available, cpu_kernels_forced_off

    if native_bf16 and not cpu_kernel_available("bf16"):
        pytest.skip("this CPU has no native bf16 GEMM (the other case covers it)")
    threads = torch.get_num_threads()
    try:
        with cpu_kernels_forced_off(*([] if native_bf16 else ["bf16"])):
            perf.main(["--smoke", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)  # the smoke plan runs single-threaded; leave the session as found
    printed = capsys.readouterr().out
    import perf_kinds

    kind = perf_kinds.cpu_kind(common.machine_info())
    folder = perf_kinds.kind_dir(tmp_path, kind)  # under the CPU kind it ran on; not a complete run: beside the stored one
    data = json.loads((folder / "latest.json").read_text())
    assert not (folder / "results.json").exists()
    assert data["meta"]["cpu_kind"] == kind and f"CPU kind {kind}" in printed
    assert {"meta", "matmul", "matmul_reference", "models", "scaling", "accuracy", "summary"} <= set(data)
    assert data["meta"]["machine"]["threads"] >= 1 and data["meta"]["mode"] == "smoke"
    assert data["meta"]["machine"]["bf16_gemm"] is native_bf16
    measured_dtypes = {"fp32", "bf16"} if native_bf16 else {"fp32"}
    assert set(data["matmul_reference"]) == measured_dtypes
    for row in data["models"] + data["scaling"]:
        if row.get("dtype", "fp32") not in measured_dtypes:
            assert row["status"].startswith("skipped: this CPU has no native bf16 GEMM"), row
            assert row["images_per_s"] is None
            continue
        assert row["status"] == "ok", row
        assert row["images_per_s"] > 0 and row["gflops_per_image"] > 0 and row["matmul_fraction"] > 0
    assert {(r["task"], r["dtype"]) for r in data["models"] if r["role"] == "model"} == {
        ("forward", "fp32"), ("forward", "bf16"), ("train", "fp32"), ("train", "bf16")}
    assert {r["role"] for r in data["models"]} == {"model", "baseline", "reference", "bound"}
    assert {(r["task"], r["dtype"]) for r in data["models"] if r["role"] == "reference"} == {
        ("forward", "fp32"), ("forward", "bf16"), ("train", "fp32")}  # the published code's plain ops
    assert [r["task"] for r in data["models"] if r["mode"] == "accel"] == ["forward"]  # bixt.accel.optimize
    assert "accel_forward_over_plain_ops" in printed or "bixt.accel.optimize / plain ops" in printed
    bound = next(r for r in data["models"] if r["role"] == "bound")
    model_fwd = next(r for r in data["models"] if r["role"] == "model" and r["task"] == "forward")
    assert 0 < bound["gflops_per_image"] < model_fwd["gflops_per_image"]  # linears only: a subset of the FLOPs
    assert "ceiling: the model's linear layers" in printed and "plain-ops reference" in printed
    for row in data["scaling"]:
        assert row["memory_status"].startswith("ok") and row["peak_mb_per_image"] >= 0
    assert data["accuracy"]["status"] == "ok"  # bf16 accuracy is checked on every CPU
    assert data["accuracy"]["fp32_vs_golden_max_abs"] < 1e-4  # fp32 path reproduces the golden features
    assert 0 < data["accuracy"]["features"]["max_rel_err"] < 0.05
    assert {c["name"] for c in data["summary"]} == set(perf.TARGETS)
    assert all(c["verdict"] in ("PASS", "FAIL", "N/A") for c in data["summary"])
    bf16_speed = next(c for c in data["summary"] if c["name"] == "bf16_over_fp32_forward_speed")
    assert (bf16_speed["verdict"] == "N/A") is not native_bf16
    for name in ("latest_throughput.png", "latest_memory.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "=== bixt perf summary" in printed and "| model" in printed
    isa = common.isa_label(data["meta"]["machine"])
    assert printed.count(f"[{isa}]") >= 4  # next to the header, every table and the summary
    assert ("no native bf16" in printed) is not native_bf16


def test_other_load_excludes_own_cpu_time_and_busy_warning_uses_it():
    # machine busy 4 CPU-s, of which 1 s ours, over 2 s of wall time: others used 1.5 CPUs
    assert common.other_load((10.0, 2.0, 0.0), (14.0, 3.0, 2.0)) == pytest.approx(1.5)
    assert common.other_load(None, (1.0, 1.0, 1.0)) is None
    assert common.other_load((0.0, 0.0, 0.0), (1.0, 3.0, 1.0)) == 0.0  # never negative
    assert perf.busy_warning({"other_processes_cpus": 0.02, "logical_cpus": 2}) is None
    warning = perf.busy_warning({"other_processes_cpus": 0.5, "logical_cpus": 2})
    assert "0.50 of 2 CPUs" in warning
    snap = common.cpu_snapshot()
    assert snap is None or (snap[0] >= 0 and snap[1] >= 0)


def test_cuda_check_says_when_there_is_no_gpu_and_formats_one_table(capsys):
    import cuda_check

    if not torch.cuda.is_available():
        assert cuda_check.main(["--budget-s", "1"]) == 2
        assert "no CUDA device" in capsys.readouterr().err
    results = {
        "tests": {"status": "ok", "summary": "5 passed", "seconds": 12.0},
        "throughput": [dict(section="throughput", family="BiXT-Ti", task="train", precision="bf16", batch=128,
                            status="ok", images_per_s=4321.0)],
        "memory": [dict(section="memory", family="ViT-Ti", tokens=12544, precision="bf16", batch=8,
                        status="skipped (time budget)")],
        "torchrun": {"status": "ok", "backend": "gloo", "device": "cpu", "seconds": 30.0},
    }
    lines = cuda_check.table(results).splitlines()
    assert len(lines) == 2 + 4 and "| 4321 |" in lines[3] and "skipped (time budget)" in lines[4]
    assert "gloo on cpu" in lines[5]


def _fake_perf_run(flags: list[str], fwd: float, started: str) -> dict:
    machine = {"cpu_model": "Fake CPU", "cpu_flags": flags, "cpu_capability": "avx512" if "avx512f" in flags else "avx2",
               "threads": 2, "torch": "x", "bf16_gemm": "avx512_bf16" in flags}
    return {"meta": {"mode": "full", "started": started, "machine": machine},
            "models": [{"label": "bixt", "role": "model", "task": "forward", "batch": 32, "dtype": "fp32",
                        "mode": "eager", "images_per_s": fwd}],
            "scaling": [{"family": "BiXT-Ti", "tokens": 12544, "images_per_s": 0.5, "peak_mb_per_image": 80.0}],
            "matmul": [], "summary": [{"name": "accel_forward_over_plain_ops", "value": 1.2}]}


def test_perf_results_are_stored_and_compared_per_cpu_kind(tmp_path):
    import perf_kinds

    assert [perf_kinds.cpu_kind({"cpu_flags": f, "cpu_capability": c}) for f, c in (
        (["avx2"], "AVX2"), (["avx2", "avx512f"], "AVX512"), (["avx2", "avx512f", "avx512_bf16"], "AVX512"),
        (["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"], "AVX512"), ([], "DEFAULT"))] == [
        "AVX2", "AVX-512", "AVX-512+BF16", "AMX", "other"]
    assert [perf_kinds.kind_slug(k) for k in perf_kinds.KINDS] == ["avx2", "avx512", "avx512-bf16", "amx"]
    avx2, zen5 = _fake_perf_run(["avx2"], 20.0, "2026-12-01"), _fake_perf_run(["avx2", "avx512f", "avx512_bf16"], 40.0, "2026-12-02")
    for run in (avx2, zen5):
        folder = perf_kinds.kind_dir(tmp_path, perf_kinds.cpu_kind(run["meta"]["machine"]))
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(run))
    assert perf_kinds.known_kinds(tmp_path) == ["AVX2", "AVX-512+BF16"]
    assert perf_kinds.load_stored(tmp_path, "AMX") is None
    table = perf_kinds.kinds_table(tmp_path).splitlines()
    assert len(table) == 4 and table[2].startswith("| AVX2 ") and table[3].startswith("| AVX-512+BF16 ")
    assert "80 / – / –" in table[2]  # BiXT's memory at 12544 tokens; the others were not measured
    today = _fake_perf_run(["avx2"], 25.0, "2026-12-05")
    compared = perf_kinds.compare_table(perf_kinds.load_stored(tmp_path, "AVX2"), today)
    line = next(l for l in compared.splitlines() if "forward b32 fp32 eager" in l)
    assert "| 20.0 " in line and "| 25.0 " in line and "1.25" in line  # stored, today, ratio
    assert "stored (2026-12-01)" in compared


def test_vqa_fusion_table_has_mean_and_spread_per_family_and_the_gain_over_the_better_baseline(tmp_path):
    pytest.importorskip("matplotlib")  # the `bench` extra
    import vqa_fusion

    def run(overall, existence):
        return {"overall": overall, "existence": existence, "counting": 40.0, "query": 50.0, "compare": 50.0,
                "spatial": 50.0}
    results = {"fused": [run(60.0, 90.0), run(64.0, 96.0)], "question only": [run(45.0, 50.0), run(45.0, 50.0)],
               "image only": [run(31.0, 51.0), run(33.0, 51.0)]}
    table = vqa_fusion.write(tmp_path / "out", results, {"fused": [200.0, 230.0], "question only": [60.0, 61.0],
                                                         "image only": [150.0, 151.0]}, {"seeds": 2})
    assert "| fused " in table and "62.0 ± 2.8" in table and "93.0 ± 4.2" in table and "| 230 " in table
    assert table.endswith("fused - better baseline: +17.0 points (means over seeds)")
    stored = json.loads((tmp_path / "out.json").read_text())
    assert stored["results"]["image only"][1]["overall"] == 33.0 and stored["seeds"] == 2
    assert (tmp_path / "out.png").stat().st_size > 0 and (tmp_path / "out.md").read_text().startswith("| model")
