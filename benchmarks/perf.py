"""BiXT CPU performance in one command: throughput, achieved FLOP rate, token-count scaling.

    python benchmarks/perf.py                  # everything (~19 min on 2 busy cores)
    python benchmarks/perf.py --quick          # fewer repeats, no torch.compile (< 3 min)
    python benchmarks/perf.py --only models    # BiXT-Ti vs ViT-Ti images/s (fp32/bf16, eager/compiled)
    python benchmarks/perf.py --only models,matmul --no-compile --repeats 5
    python benchmarks/perf.py --compare        # today's run next to the stored one of this CPU kind
    python benchmarks/perf.py --kinds-table    # the README's table: one row per CPU kind stored

Measures, in a single run where every configuration is timed once per round and reported as the
median over rounds (so background load hits all configurations alike):

- models:   forward (batch 32) and train-step (batch 16: forward, cross-entropy, backward, AdamW
            step) images/s of ``bixt_ti_l64_p16`` in fp32 and bf16 autocast, eager and
            ``torch.compile``d, next to timm's ``vit_tiny_patch16_224`` (fp32, eager);
- matmul:   fp32 / bf16 ``torch.mm`` GFLOP/s at the model's largest GEMM shape and at 2048^2; the
            larger of the two is the reference rate that achieved model FLOP rates are divided by;
- scaling:  forward images/s and peak memory per image of BiXT-Ti, ViT-Ti and XCiT-Ti built for
            196 / 784 / 3136 / 12544 tokens (224 px at stride 16/8/4, 448 px at stride 4);
- accuracy: bf16-autocast vs fp32 features of the golden reduced model (tests/data).

Writes ``results.json``, ``throughput.png`` and ``memory.png`` to ``--out``/perf/<CPU kind>/ (``avx2``,
``avx512``, ``avx512-bf16``, ``amx``: one stored run per kind, see perf_kinds.py; a partial or quick
run writes ``latest.json`` and ``latest_*.png`` there instead) and prints markdown
tables plus a PASS/FAIL summary against the CPU performance targets (``TARGETS``: matmul share of the
time, bf16 over fp32, BiXT over ViT at 3136 and 12544 tokens, memory growth, speed over the published
implementation's ops). See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import textwrap
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bixt.accel import cpu_kernel_available, optimize  # noqa: E402
from bixt.flops import count_call_flops  # noqa: E402
from bixt.runtime import tune_cpu_allocator  # noqa: E402
from perf_kinds import compare_table, cpu_kind, kind_dir, kinds_table, load_stored  # noqa: E402
from published_ops import published_ops  # noqa: E402
from common import (  # noqa: E402
    MemorySpec, build_model, cpu_snapshot, interleaved_timing, isa_label, machine_info, markdown_table,
    measure_peak_memory, other_load, set_threads,
)

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("models", "matmul", "scaling", "accuracy")
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


# --- what to measure ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Net:
    """A timm model at one input size: ``timm.create_model(model, **kwargs)`` on img_size images."""

    model: str
    kwargs: dict = field(default_factory=dict)
    img_size: int = 224

    def build(self, device: str = "cpu") -> torch.nn.Module:
        return build_model(self.model, self.kwargs, device)

    def with_kwargs(self, **kwargs) -> "Net":
        return replace(self, kwargs={**self.kwargs, **kwargs})

    @property
    def label(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.kwargs.items() if k not in ("attn_impl",))
        return f"{self.model}({extra})" if extra else self.model


@dataclass(frozen=True)
class ScalingPoint:
    family: str  # "BiXT-Ti", "ViT-Ti", "XCiT-Ti"
    tokens: int  # nominal token count (ViT adds a class token)
    net: Net


@dataclass
class Plan:
    model: Net
    baseline: Net
    fwd_batch: int = 32
    train_batch: int = 16
    compile: bool = True
    repeats: int = 5
    warmup: int = 2
    max_call_s: float = 300.0
    budget_s: float = math.inf  # no new timing round once the rounds have taken this long
    slow_call_s: float = 20.0  # configurations slower than this per call: 1 warm-up, slow_repeats rounds
    slow_repeats: int = 3
    bf16_train: bool = True
    max_gflop_per_call: float = math.inf  # scaling points above this are skipped (quick mode)
    matmul_square: int = 2048
    matmul_target_gflop: float = 16.0  # each timed matmul call repeats the product up to this
    scaling: tuple[ScalingPoint, ...] = ()
    tokens_per_batch: int = 6272  # scaling batch = max(1, tokens_per_batch // tokens)
    threads: Optional[int] = None  # None: all available CPUs (--threads overrides)
    memory: bool = True
    memory_families: Optional[tuple[str, ...]] = None  # None: every family of the scaling sweep
    golden: Path = REPO / "tests" / "data" / "bixt_ti_l64_p16.pt"
    mode: str = "full"


def default_scaling(attn_impl: str) -> tuple[ScalingPoint, ...]:
    bixt = {"attn_impl": attn_impl}
    vit, xcit = "vit_tiny_patch16_224", "xcit_tiny_12_p16_224"
    # ViT patches do not overlap, so its token count comes from the patch size; XCiT's conv stem
    # supports patch 16 and 8 only, so beyond 784 tokens it gets larger images instead.
    return (
        ScalingPoint("BiXT-Ti", 196, Net("bixt_ti_l64_p16", bixt)),
        ScalingPoint("BiXT-Ti", 784, Net("bixt_ti_l64_p16s8", bixt)),
        ScalingPoint("BiXT-Ti", 3136, Net("bixt_ti_l64_p16s4", bixt)),
        ScalingPoint("BiXT-Ti", 12544, Net("bixt_ti_l64_p16s4", {**bixt, "img_size": 448}, 448)),
        ScalingPoint("ViT-Ti", 196, Net(vit)),
        ScalingPoint("ViT-Ti", 784, Net(vit, {"patch_size": 8})),
        ScalingPoint("ViT-Ti", 3136, Net(vit, {"patch_size": 4})),
        ScalingPoint("ViT-Ti", 12544, Net(vit, {"img_size": 448, "patch_size": 4}, 448)),
        ScalingPoint("XCiT-Ti", 196, Net(xcit)),
        ScalingPoint("XCiT-Ti", 784, Net(xcit, {"patch_size": 8})),
        ScalingPoint("XCiT-Ti", 3136, Net(xcit, {"img_size": 448, "patch_size": 8}, 448)),
        ScalingPoint("XCiT-Ti", 12544, Net(xcit, {"img_size": 896, "patch_size": 8}, 896)),
    )


def smoke_plan() -> Plan:
    """Tiny models and sizes: exercises every code path in seconds (tests/test_benchmarks.py)."""
    tiny_bixt = dict(depth=2, embed_dim=32, num_heads=2, num_latents=8, num_classes=10, img_size=32)
    tiny_vit = dict(depth=2, embed_dim=32, num_heads=2, num_classes=10, img_size=32)
    tiny_xcit = dict(depth=2, embed_dim=32, num_heads=2, num_classes=10, img_size=32, cls_attn_layers=1)
    vit, xcit = "vit_tiny_patch16_224", "xcit_tiny_12_p16_224"
    return Plan(
        model=Net("bixt_ti_l64_p16", tiny_bixt, 32), baseline=Net(vit, tiny_vit, 32),
        fwd_batch=4, train_batch=2, compile=False, repeats=1, warmup=1, max_call_s=30.0,
        matmul_square=128, matmul_target_gflop=0.01, tokens_per_batch=32, mode="smoke",
        threads=1,  # tiny ops gain nothing from a second thread, and lose a lot on a busy machine
        scaling=(
            ScalingPoint("BiXT-Ti", 4, Net("bixt_ti_l64_p16", tiny_bixt, 32)),
            ScalingPoint("BiXT-Ti", 16, Net("bixt_ti_l64_p16s8", tiny_bixt, 32)),
            ScalingPoint("ViT-Ti", 4, Net(vit, tiny_vit, 32)),
            ScalingPoint("ViT-Ti", 16, Net(vit, {**tiny_vit, "patch_size": 8}, 32)),
            ScalingPoint("XCiT-Ti", 16, Net(xcit, {**tiny_xcit, "patch_size": 8}, 32)),
        ),
    )


def make_plan(args: argparse.Namespace) -> Plan:
    if args.smoke:
        plan = smoke_plan()
    else:
        bixt = Net(args.model, {"attn_impl": args.attn_impl})
        plan = Plan(model=bixt, baseline=Net("vit_tiny_patch16_224"), scaling=default_scaling(args.attn_impl))
        if args.quick:
            # Under 3 min (2.5 min on 2 busy cores): no compilation, no bf16 train step, 2 rounds (fewer once
            # 40 s of rounds are spent), half the scaling batch, peak memory of BiXT only, and no
            # scaling point over 150 GFLOP per call (ViT at 12544 tokens: 1.6 TFLOP; XCiT: 153 GFLOP).
            plan = replace(plan, compile=False, bf16_train=False, repeats=2, warmup=1, max_call_s=60.0,
                           budget_s=40.0, max_gflop_per_call=150.0, tokens_per_batch=3136,
                           memory_families=("BiXT-Ti",),
                           matmul_target_gflop=8.0, mode="quick")
    overrides = {k: v for k, v in dict(repeats=args.repeats, warmup=args.warmup, max_call_s=args.max_call_s,
                                       budget_s=args.budget_s).items()
                 if v is not None}
    if args.no_compile:
        overrides["compile"] = False
    return replace(plan, **overrides)


# --- measurement closures -------------------------------------------------------------------------
def _autocast(dtype_name: str):
    dtype = DTYPES[dtype_name]
    return torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()


def skip_reason(dtype_name: str) -> Optional[str]:
    """Why timings of ``dtype_name`` are not taken on this CPU (None: they are). Without native bf16
    GEMMs (AVX-512 BW/VL/DQ, AVX-NE-CONVERT or AMX for oneDNN) bf16 products are emulated at a
    small fraction of the fp32 rate: the rows would take minutes and measure only the emulation."""
    if dtype_name == "bf16" and not cpu_kernel_available("bf16"):
        return ("skipped: this CPU has no native bf16 GEMM (oneDNN needs AVX-512 BW/VL/DQ, AVX-NE-CONVERT or "
                "AMX), bf16 would be emulated; the bf16 accuracy check still runs")
    return None


def forward_fn(model: torch.nn.Module, images: torch.Tensor, dtype_name: str) -> Callable[[], Any]:
    def run():
        with torch.no_grad(), _autocast(dtype_name):
            return model(images)
    return run


def linear_replay_fn(model: torch.nn.Module, images: torch.Tensor) -> tuple[Callable[[], Any], float]:
    """Replays the model's linear layers alone, on the inputs they saw in one fp32 forward.

    Returns the closure and its FLOPs. Its rate is what the whole model could reach if attention,
    norms, GELU and residual adds cost nothing: the ceiling for the achieved-FLOP-rate checks.
    """
    calls = []
    hooks = [m.register_forward_hook(lambda layer, args, out: calls.append((args[0].clone(), layer)))
             for m in model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for hook in hooks:
            hook.remove()
    flops = sum(2 * x.numel() * layer.out_features for x, layer in calls)

    def run():
        with torch.no_grad():
            for x, layer in calls:
                F.linear(x, layer.weight, layer.bias)
    return run, flops


def train_step_fn(model: torch.nn.Module, optimizer, images, targets, dtype_name: str) -> Callable[[], Any]:
    def run():
        optimizer.zero_grad(set_to_none=True)
        with _autocast(dtype_name):  # autocast around forward + loss only, backward outside
            loss = F.cross_entropy(model(images), targets)
        loss.backward()
        optimizer.step()
        return loss
    return run


def flops_per_image(net: Net, batch: int, train: bool) -> Optional[float]:
    """Model FLOPs per image (forward, or forward + backward for a train step), from shapes alone.

    Counted on the meta device, where attention runs as plain matrix products: two per attention
    forward, four backward (no recomputation, the usual model-FLOPs convention). BiXT is counted
    with ``attn_impl="math"``: one similarity matrix per layer is the algorithm's cost (the SDPA
    path computes it twice).
    """
    if net.model.startswith("bixt"):
        net = net.with_kwargs(attn_impl="math")
    model = net.build("meta").train(train)
    images = torch.empty(batch, 3, net.img_size, net.img_size, device="meta")

    def run():
        out = model(images)
        if train:
            out.float().sum().backward()

    try:
        return count_call_flops(run) / batch
    except Exception as err:  # a model that cannot run on meta tensors: say so, don't crash
        print(f"FLOP count of {net.label} failed: {type(err).__name__}: {err}", file=sys.stderr)
        return None


def _giga(flops: Optional[float]) -> Optional[float]:
    return None if flops is None else flops / 1e9


def token_count(model: torch.nn.Module, img_size: int) -> Optional[int]:
    embed = getattr(model, "patch_embed", None)
    if embed is None:
        return None
    if hasattr(embed, "grid"):  # bixt tokenisers
        h, w = embed.grid(img_size, img_size)
        return h * w
    return getattr(embed, "num_patches", None)


def matmul_cases(plan: Plan) -> list[dict[str, Any]]:
    """(m, k, n) shapes: the model's token-MLP GEMM at the forward batch and a large square one."""
    probe = plan.model.build("meta")
    dim = getattr(probe, "embed_dim", 192)
    tokens = token_count(probe, plan.model.img_size) or 196
    hidden = int(dim * 4)
    return [
        dict(name="model_gemm", m=plan.fwd_batch * tokens, k=dim, n=hidden,
             about=f"token MLP fc1 at batch {plan.fwd_batch}: ({plan.fwd_batch}*{tokens} x {dim}) @ ({dim} x {hidden})"),
        dict(name=f"square_{plan.matmul_square}", m=plan.matmul_square, k=plan.matmul_square, n=plan.matmul_square,
             about=f"{plan.matmul_square}^2 square"),
    ]


def matmul_fn(m: int, k: int, n: int, dtype: torch.dtype, inner: int) -> Callable[[], Any]:
    a = torch.randn(m, k).to(dtype)
    b = torch.randn(n, k).to(dtype).t()  # the (in, out) view nn.Linear multiplies by
    out = torch.empty(m, n, dtype=dtype)

    def run():
        for _ in range(inner):
            torch.mm(a, b, out=out)
    return run


# --- the run --------------------------------------------------------------------------------------
class Bench:
    """Collects timing configurations from every section, times them interleaved, then reports."""

    def __init__(self, plan: Plan, sections: tuple[str, ...], seed: int, log: Callable[[str], None]):
        self.plan, self.sections, self.seed, self.log = plan, sections, seed, log
        self.configs: dict[str, Callable[[], Any]] = {}
        self.failure_prefix: dict[str, str] = {}
        self.setup_errors: dict[str, str] = {}
        self.results: dict[str, Any] = {}

    def add(self, key: str, make: Callable[[], Callable[[], Any]], failure_prefix: str = "failed") -> str:
        if key in self.configs or key in self.setup_errors:
            return key
        try:
            self.configs[key] = make()
            self.failure_prefix[key] = failure_prefix
        except Exception as err:
            self.setup_errors[key] = f"{failure_prefix}: {type(err).__name__}: {str(err).splitlines()[0][:160]}"
        return key

    def add_or_skip(self, row: dict, make: Callable[[], Callable[[], Any]], failure_prefix: str = "failed") -> None:
        """Time ``row`` unless its dtype cannot run natively here; then the row says why."""
        reason = skip_reason(row["dtype"])
        if reason:
            row["status"] = reason
        else:
            self.add(row["key"], make, failure_prefix)

    # models ----------------------------------------------------------------------------------------
    def setup_models(self) -> None:
        from bixt.engine.config import OptimConfig
        from bixt.engine.optim import build_optimizer

        plan = self.plan
        rows = []
        if plan.compile:
            # Inductor's CPU inference recipe: weights become constants, pre-packed for oneDNN/MKL.
            # Applies to graphs compiled without grad only (the forward configurations).
            import torch._inductor.config as inductor_config
            inductor_config.freezing = True
        # "accel": the eval-mode model after bixt.accel.optimize (fp32 inference only)
        model_modes = ("eager", "accel", "compiled") if plan.compile else ("eager", "accel")
        nets = [(plan.model, ("fp32", "bf16"), model_modes), (plan.baseline, ("fp32",), ("eager",))]
        for net, dtypes, modes in nets:
            torch.manual_seed(self.seed)
            fwd_model = net.build().eval()
            torch.manual_seed(self.seed)
            train_model = net.build().train()
            images = {b: torch.randn(b, 3, net.img_size, net.img_size) for b in (plan.fwd_batch, plan.train_batch)}
            targets = torch.randint(0, getattr(train_model, "num_classes", 1000), (plan.train_batch,))
            self.log(f"counting FLOPs of {net.label}")
            gflops = {task: _giga(flops_per_image(net, batch, train=task == "train"))
                      for task, batch in (("forward", plan.fwd_batch), ("train", plan.train_batch))}
            for mode in modes:
                fwd = {"compiled": torch.compile, "accel": optimize}.get(mode, lambda m: m)(fwd_model)
                trn = torch.compile(train_model) if mode == "compiled" else train_model
                for dtype in dtypes:
                    for task, batch in (("forward", plan.fwd_batch), ("train", plan.train_batch)):
                        if task == "train" and dtype != "fp32" and not plan.bf16_train:
                            continue
                        if mode == "accel" and (task, dtype) != ("forward", "fp32"):
                            continue
                        key = f"{net.label} | {task} | b{batch} | {dtype} | {mode}"
                        if task == "forward":
                            make = lambda f=fwd, x=images[batch], d=dtype: forward_fn(f, x, d)
                        else:
                            def make(m=trn, params=train_model, x=images[batch], y=targets, d=dtype):
                                # One optimizer per configuration; eager and compiled share the weights.
                                opt = build_optimizer(params, OptimConfig(name="adamw", weight_decay=0.05), lr=1e-4)
                                return train_step_fn(m, opt, x, y, d)
                        row = dict(key=key, model=net.model, kwargs=net.kwargs, label=net.label,
                                   role="model" if net is plan.model else "baseline", task=task,
                                   batch=batch, dtype=dtype, mode=mode,
                                   img_size=net.img_size, gflops_per_image=gflops[task])
                        self.add_or_skip(row, make, "compile failed" if mode == "compiled" else "failed")
                        rows.append(row)
        self.setup_model_bounds(rows)
        self.results["models"] = rows

    def setup_model_bounds(self, rows: list) -> None:
        """Rows that put the model's numbers in context: the same forward and train step on plain
        ops as the published implementation runs them (attention through explicit matrices,
        unfused layers), and the model's linear layers replayed alone (the ceiling on its achieved
        FLOP rate)."""
        from timm.optim import create_optimizer_v2

        plan, net = self.plan, self.plan.model
        images = torch.randn(plan.fwd_batch, 3, net.img_size, net.img_size)
        train_images = images[: plan.train_batch].clone()
        gflops = {task: next(r["gflops_per_image"] for r in rows if r["role"] == "model" and r["task"] == task)
                  for task in ("forward", "train")}
        for task, dtype in (("forward", "fp32"), ("forward", "bf16"), ("train", "fp32")):
            batch = plan.fwd_batch if task == "forward" else plan.train_batch
            key = f"{net.label} | {task} | b{batch} | {dtype} | plain ops"

            def make(task=task, d=dtype):
                torch.manual_seed(self.seed)
                if task == "forward":
                    return forward_fn(published_ops(net.build().eval()), images, d)
                model = published_ops(net.build().train())
                # the published training script's optimizer: timm's AdamW with torch's defaults
                opt = create_optimizer_v2(model, opt="adamw", lr=1e-4, weight_decay=0.05)
                targets = torch.randint(0, model.num_classes, (plan.train_batch,))
                return train_step_fn(model, opt, train_images, targets, d)
            row = dict(key=key, model=net.model, kwargs=net.kwargs, label=net.label,
                       role="reference", task=task, batch=batch, dtype=dtype, mode="plain ops",
                       img_size=net.img_size, gflops_per_image=gflops[task])
            self.add_or_skip(row, make)
            rows.append(row)
        key = f"{net.label} | linear layers only | b{plan.fwd_batch} | fp32 | eager"
        replay_gflop = {}

        def make_replay():
            torch.manual_seed(self.seed)
            run, flops = linear_replay_fn(net.build().eval(), images)
            replay_gflop["value"] = flops / 1e9 / plan.fwd_batch
            return run
        self.add(key, make_replay)
        rows.append(dict(key=key, model=net.model, kwargs=net.kwargs, label=net.label, role="bound",
                         task="linear layers only", batch=plan.fwd_batch, dtype="fp32", mode="eager",
                         img_size=net.img_size, gflops_per_image=replay_gflop.get("value")))

    # matmul ----------------------------------------------------------------------------------------
    def setup_matmul(self) -> None:
        rows = []
        for case in matmul_cases(self.plan):
            flop = 2 * case["m"] * case["k"] * case["n"]
            inner = max(1, round(self.plan.matmul_target_gflop * 1e9 / flop))
            for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                row = dict(key=f"mm {case['name']} | {dtype_name}", case=case["name"], about=case["about"],
                           m=case["m"], k=case["k"], n=case["n"], dtype=dtype_name, inner_repeats=inner,
                           gflop_per_call=flop * inner / 1e9)
                self.add_or_skip(row, lambda c=case, d=dtype, i=inner: matmul_fn(c["m"], c["k"], c["n"], d, i))
                rows.append(row)
        self.results["matmul"] = rows

    # scaling ---------------------------------------------------------------------------------------
    def setup_scaling(self) -> None:
        plan, rows = self.plan, []
        for point in plan.scaling:
            net = point.net
            batch = max(1, plan.tokens_per_batch // point.tokens)
            probe = net.build("meta")
            tokens = token_count(probe, net.img_size)
            gflops = _giga(flops_per_image(net, batch, train=False))
            key = f"{net.label} | forward | b{batch} | fp32 | eager"
            row = dict(key=key, family=point.family, tokens=point.tokens, tokens_actual=tokens, model=net.model,
                       kwargs=net.kwargs, label=net.label, img_size=net.img_size, batch=batch,
                       gflops_per_image=gflops)
            if gflops is not None and gflops * batch > plan.max_gflop_per_call:
                row["status"] = f"skipped ({plan.mode}: {gflops * batch:,.0f} GFLOP per call > {plan.max_gflop_per_call:g})"
            else:
                def make(n=net, b=batch):
                    torch.manual_seed(self.seed)
                    model = n.build().eval()
                    return forward_fn(model, torch.randn(b, 3, n.img_size, n.img_size), "fp32")
                self.add(key, make)
            rows.append(row)
        self.results["scaling"] = rows

    # accuracy --------------------------------------------------------------------------------------
    def run_accuracy(self) -> None:
        from bixt.weights import load_weights

        path = self.plan.golden
        if not path.exists():
            self.results["accuracy"] = {"status": f"skipped: {path} not found"}
            return
        golden = torch.load(path, map_location="cpu", weights_only=True)
        attn_impl = self.plan.model.kwargs.get("attn_impl", "auto")
        model = build_model("bixt_ti_l64_p16", {**golden["kwargs"], "attn_impl": attn_impl}).eval()
        load_weights(model, golden["state_dict"])
        images = golden["input"]
        with torch.no_grad():
            feats32 = model.forward_features(images)
            logits32 = model.forward_head(feats32)
            with _autocast("bf16"):
                feats16 = model.forward_features(images)
                logits16 = model.forward_head(feats16)
        out = {"status": "ok", "golden": str(path.relative_to(REPO) if path.is_relative_to(REPO) else path),
               "attn_impl": attn_impl,
               "fp32_vs_golden_max_abs": float((feats32 - golden["features"]).abs().max())}
        for name, ref, low in (("features", feats32, feats16), ("logits", logits32, logits16)):
            diff = (low.float() - ref).abs()
            out[name] = {
                # Relative to the largest reference magnitude: element-wise ratios blow up near zero.
                "max_rel_err": float(diff.max() / ref.abs().max()),
                "rel_l2_err": float(diff.norm() / ref.norm()),
                "max_abs_err": float(diff.max()),
            }
        self.results["accuracy"] = out

    # orchestration ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        start = time.perf_counter()
        if "accuracy" in self.sections:
            self.log("accuracy: bf16 vs fp32 on the golden model")
            self.run_accuracy()
        if "matmul" in self.sections:
            self.setup_matmul()
        if "models" in self.sections:
            self.setup_models()
        if "scaling" in self.sections:
            self.log("scaling: building models, counting FLOPs")
            self.setup_scaling()
        self.log(f"timing {len(self.configs)} configurations: warm-up, then {self.plan.repeats} interleaved rounds")
        plan = self.plan
        timings = interleaved_timing(self.configs, plan.repeats, plan.warmup, plan.max_call_s, self.failure_prefix,
                                     plan.budget_s, plan.slow_call_s, plan.slow_repeats, self.log)
        for key, err in self.setup_errors.items():
            self.log(f"  {key}: {err}")
        for section in ("matmul", "models", "scaling"):
            for row in self.results.get(section, []):
                if row.get("status", "").startswith("skipped"):
                    continue
                if row["key"] in self.setup_errors:
                    row["status"] = self.setup_errors[row["key"]]
                    continue
                row.update(timings[row["key"]].as_dict())
        self.derive_rates()
        if "scaling" in self.sections and self.plan.memory:
            self.run_memory()
        self.results["summary"] = summary_checks(self.results)
        self.results["wall_s"] = time.perf_counter() - start
        return self.results

    def derive_rates(self) -> None:
        ref = {}
        rows = self.results.get("matmul", [])
        for row in rows:
            row["gflop_per_s"] = row["gflop_per_call"] / row["median_s"] if row.get("median_s") else None
        for dtype in DTYPES:
            measured = [r for r in rows if r["dtype"] == dtype and r.get("gflop_per_s")]
            if measured:
                best = max(measured, key=lambda r: r["gflop_per_s"])
                ref[dtype] = {"gflop_per_s": best["gflop_per_s"], "case": best["case"], "about": best["about"],
                              "rule": "the larger of the measured matmul rates"}
        self.results["matmul_reference"] = ref
        for section in ("models", "scaling"):
            for row in self.results.get(section, []):
                med = row.get("median_s")
                row["images_per_s"] = row["batch"] / med if med else None
                known = med and row["gflops_per_image"] is not None
                row["gflop_per_s"] = row["gflops_per_image"] * row["images_per_s"] if known else None
                dtype = row.get("dtype", "fp32")
                row["matmul_fraction"] = (row["gflop_per_s"] / ref[dtype]["gflop_per_s"]
                                          if known and dtype in ref else None)

    def run_memory(self) -> None:
        specs = []
        for row in self.results["scaling"]:
            if row.get("median_s") is None:
                row["memory_status"] = "skipped (no forward measurement)"
                continue
            if self.plan.memory_families is not None and row["family"] not in self.plan.memory_families:
                row["memory_status"] = f"skipped ({self.plan.mode})"
                continue
            specs.append(MemorySpec(key=row["key"], model=row["model"], kwargs=row["kwargs"], img_size=row["img_size"],
                                    batch=row["batch"]))
        self.log(f"peak memory: {len(specs)} forward passes in a worker process")
        memory = measure_peak_memory(specs, threads=torch.get_num_threads(), log=self.log)
        for row in self.results["scaling"]:
            if row["key"] in memory:
                mem = memory[row["key"]]
                row["memory_status"] = mem.get("status")
                row["peak_mb_per_image"] = mem.get("peak_mb_per_image")
                row["memory_detail"] = {k: v for k, v in mem.items() if k not in ("status", "peak_mb_per_image")}


# --- summary --------------------------------------------------------------------------------------
TARGETS = {
    "fp32_forward_matmul_fraction": (">=", 0.85),
    "bf16_over_fp32_forward_speed": (">=", 3.0),
    "bf16_features_max_rel_err": ("<=", 0.02),
    "fp32_train_matmul_fraction": (">=", 0.6),
    "bixt_over_vit_speed_3136": (">=", 3.0),
    "bixt_over_vit_speed_12544": (">=", 10.0),
    "bixt_memory_growth_3136_to_12544": ("<=", 4.5),
    # against the published implementation's plain ops (explicit attention, unfused layers), same run
    "accel_forward_over_plain_ops": (">=", 1.3),
    "plain_model_forward_over_plain_ops": (">=", 1.12),
    "train_over_plain_ops_eager": (">=", 1.05),
    "train_over_plain_ops_compiled": (">=", 1.15),
}


def _find(rows, **match) -> Optional[dict]:
    for row in rows or []:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def summary_checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The CPU performance ratios of ``TARGETS``, each with its target and PASS / FAIL / N/A."""
    checks = []

    def check(name: str, what: str, value: Optional[float], note: str = "") -> None:
        op, target = TARGETS[name]
        verdict = "N/A" if value is None else "PASS" if (value >= target if op == ">=" else value <= target) else "FAIL"
        checks.append(dict(name=name, what=what, value=value, op=op, target=target, verdict=verdict, note=note))

    models = [r for r in results.get("models", []) if r["role"] == "model"]
    for mode in ("eager", "compiled"):
        fwd32 = _find(models, task="forward", dtype="fp32", mode=mode)
        fwd16 = _find(models, task="forward", dtype="bf16", mode=mode)
        trn32 = _find(models, task="train", dtype="fp32", mode=mode)
        if fwd32 is None:
            continue
        check("fp32_forward_matmul_fraction", f"fp32 forward b{fwd32['batch']} FLOP rate / fp32 matmul rate ({mode})",
              fwd32.get("matmul_fraction"), fwd32.get("status", ""))
        speedup = (fwd16["images_per_s"] / fwd32["images_per_s"]
                   if fwd16 and fwd16.get("images_per_s") and fwd32.get("images_per_s") else None)
        check("bf16_over_fp32_forward_speed", f"bf16 autocast / fp32 forward images/s ({mode})", speedup,
              (fwd16 or {}).get("status", ""))
        if trn32:
            check("fp32_train_matmul_fraction", f"fp32 train-step b{trn32['batch']} FLOP rate / fp32 matmul rate ({mode})",
                  trn32.get("matmul_fraction"), trn32.get("status", ""))
    def over_plain(row: Optional[dict], task: str) -> Optional[float]:
        plain = _find(results.get("models", []), role="reference", task=task, dtype="fp32")
        if row and plain and row.get("images_per_s") and plain.get("images_per_s"):
            return row["images_per_s"] / plain["images_per_s"]
        return None

    if models:
        accel = _find(models, task="forward", dtype="fp32", mode="accel")
        eager = _find(models, task="forward", dtype="fp32", mode="eager")
        check("accel_forward_over_plain_ops", "fp32 forward images/s, bixt.accel.optimize / plain ops",
              over_plain(accel, "forward"), (accel or {}).get("status", ""))
        check("plain_model_forward_over_plain_ops", "fp32 forward images/s, plain bixt model / plain ops",
              over_plain(eager, "forward"))
        for mode in ("eager", "compiled"):
            row = _find(models, task="train", dtype="fp32", mode=mode)
            check(f"train_over_plain_ops_{mode}", f"fp32 train-step images/s, bixt {mode} / plain ops eager",
                  over_plain(row, "train"), (row or {}).get("status", "not run" if row is None else ""))
    acc = results.get("accuracy")
    if acc is not None:
        value = acc["features"]["max_rel_err"] if acc.get("status") == "ok" else None
        check("bf16_features_max_rel_err", "bf16 vs fp32 features, max |err| / max |fp32| (golden model)", value,
              acc.get("status", ""))
    scaling = results.get("scaling")
    if scaling:
        for tokens in (3136, 12544):
            bixt, vit = _find(scaling, family="BiXT-Ti", tokens=tokens), _find(scaling, family="ViT-Ti", tokens=tokens)
            value = (bixt["images_per_s"] / vit["images_per_s"]
                     if bixt and vit and bixt.get("images_per_s") and vit.get("images_per_s") else None)
            notes = [f"{fam}: {r['status']}" for fam, r in (("BiXT", bixt), ("ViT", vit))
                     if r and r.get("status", "ok") != "ok"]
            check(f"bixt_over_vit_speed_{tokens}", f"BiXT-Ti / ViT-Ti forward images/s at {tokens} tokens", value,
                  "; ".join(notes))
        small, large = _find(scaling, family="BiXT-Ti", tokens=3136), _find(scaling, family="BiXT-Ti", tokens=12544)
        value = (large["peak_mb_per_image"] / small["peak_mb_per_image"]
                 if small and large and small.get("peak_mb_per_image") and large.get("peak_mb_per_image") else None)
        check("bixt_memory_growth_3136_to_12544", "BiXT-Ti peak memory per image, 12544 / 3136 tokens", value)
    return checks


# --- reporting ------------------------------------------------------------------------------------
def _fmt_ratio(value: Optional[float], name: str) -> str:
    if value is None:
        return "n/a"
    if name.endswith("err"):
        return f"{100 * value:.2f} %"
    if "fraction" in name:
        return f"{value:.3f}"
    return f"{value:.2f}x"


def report(results: dict[str, Any]) -> str:
    parts = []
    meta = results["meta"]
    where = f"{meta['machine']['cpu_model']} [{isa_label(meta['machine'])}]"
    parts.append(f"# bixt perf ({meta['mode']}): {meta['machine']['cpu_model']} [{isa_label(meta['machine'])}], "
                 f"CPU kind {meta.get('cpu_kind') or cpu_kind(meta['machine'])}, "
                 f"{meta['machine']['threads']} threads, "
                 f"torch {meta['machine']['torch']}, load average at start {meta['machine']['load_average']}, "
                 f"CPUs used by other processes during the run {meta['machine'].get('other_processes_cpus')}")
    if results.get("matmul"):
        rows = [(r["case"], f"{r['m']}x{r['k']}x{r['n']}", r["dtype"], r.get("gflop_per_s"), r.get("status"))
                for r in results["matmul"]]
        parts.append(f"## Matrix product (torch.mm) — {where}\n" + markdown_table(["case", "m x k x n", "dtype", "GFLOP/s", "status"], rows))
        ref = results.get("matmul_reference", {})
        parts.append("reference rate = " + ", ".join(f"{d}: {v['gflop_per_s']:.1f} GFLOP/s ({v['case']})" for d, v in ref.items()))
    if results.get("models"):
        rows = [(r["label"], r["img_size"], r["task"], r["batch"], r["dtype"], r["mode"], r.get("images_per_s"),
                 1e3 * r["median_s"] if r.get("median_s") else None, r["gflops_per_image"], r.get("gflop_per_s"),
                 r.get("matmul_fraction"), r.get("first_call_s"), r.get("status"))
                for r in results["models"]]
        parts.append(f"## Models — {where}\n" + markdown_table(
            ["model", "px", "task", "batch", "dtype", "mode", "img/s", "ms/iter", "GFLOP/img", "GFLOP/s", "/ matmul",
             "1st call s", "status"], rows))
    if results.get("scaling"):
        rows = [(r["family"], r["tokens"], r["label"], r["img_size"], r["batch"], r["gflops_per_image"],
                 r.get("images_per_s"), r.get("peak_mb_per_image"), r.get("status", "ok"), r.get("memory_status", "–"))
                for r in sorted(results["scaling"], key=lambda r: (r["tokens"], r["family"]))]
        parts.append(f"## Token-count scaling (fp32 forward, eager) — {where}\n" + markdown_table(
            ["family", "tokens", "model", "px", "batch", "GFLOP/img", "img/s", "peak MB/img", "status", "memory"], rows))
    if results.get("accuracy"):
        acc = results["accuracy"]
        if acc.get("status") == "ok":
            parts.append(f"## bf16 autocast vs fp32 (golden model, attn_impl={acc['attn_impl']})\n"
                         f"features: max rel {100 * acc['features']['max_rel_err']:.3f} %, rel L2 "
                         f"{100 * acc['features']['rel_l2_err']:.3f} %; logits: max rel "
                         f"{100 * acc['logits']['max_rel_err']:.3f} %; fp32 vs golden max abs "
                         f"{acc['fp32_vs_golden_max_abs']:.2e}")
        else:
            parts.append(f"## bf16 autocast vs fp32: {acc.get('status')}")
    parts.append(summary_block(results))
    return "\n\n".join(parts)


def summary_block(results: dict[str, Any]) -> str:
    meta = results["meta"]
    machine = meta["machine"]
    lines = [f"=== bixt perf summary: {meta['model']}, {machine['cpu_model']} [{isa_label(machine)}], {machine['threads']} threads, "
             f"torch {machine['torch']}, mode {meta['mode']} ==="]
    ref = results.get("matmul_reference", {})
    if ref:
        lines.append("matmul reference: " + "; ".join(
            f"{d} {v['gflop_per_s']:.1f} GFLOP/s ({v['case']})" for d, v in ref.items()))
    models = [r for r in results.get("models", []) if r.get("images_per_s")]
    if models:
        issue2 = [f"{r['label']} {r['task']} b{r['batch']} {r['img_size']}px: {r['images_per_s']:.1f} img/s"
                  for r in models if r["dtype"] == "fp32" and r["mode"] == "eager" and r["role"] in ("model", "baseline")]
        lines.append("fp32 eager: " + "; ".join(issue2))
    lines += context_lines(results)
    for c in results.get("summary", []):
        note = f"  [{c['note']}]" if c.get("note") and c["note"] != "ok" else ""
        lines.append(f"[{c['verdict']:<4}] {c['what']}: {_fmt_ratio(c['value'], c['name'])} "
                     f"(target {c['op']} {_fmt_ratio(c['target'], c['name'])}){note}")
    busy = busy_warning(machine)
    if busy:
        lines.append(busy)
    lines.append(f"wall time {results.get('wall_s', 0):.0f} s")
    return "```\n" + "\n".join(lines) + "\n```"


def context_lines(results: dict[str, Any]) -> list[str]:
    """The bound and the plain-ops reference next to the model's own fp32/bf16 forward numbers."""
    rows = results.get("models", [])
    ours = {d: _find(rows, role="model", task="forward", dtype=d, mode="eager") for d in DTYPES}
    plain = {d: _find(rows, role="reference", task="forward", dtype=d) for d in DTYPES}
    bound = _find(rows, role="bound")
    lines = []
    if bound and bound.get("matmul_fraction"):
        lines.append(f"ceiling: the model's linear layers replayed alone run at {bound['gflop_per_s']:.0f} GFLOP/s "
                     f"= {bound['matmul_fraction']:.3f} of the fp32 matmul rate")
    if all(r and r.get("images_per_s") for r in (ours["fp32"], plain["fp32"])):
        fraction = plain["fp32"].get("matmul_fraction")  # absent without the matmul section
        line = (f"plain-ops reference (the published implementation's ops): fp32 {plain['fp32']['images_per_s']:.1f} "
                f"img/s" + (f" ({fraction:.3f} of matmul)" if fraction is not None else "") +
                f"; bixt/reference speed {ours['fp32']['images_per_s'] / plain['fp32']['images_per_s']:.2f}x")
        if plain["bf16"] and plain["bf16"].get("images_per_s"):
            line += f"; reference bf16/fp32 {plain['bf16']['images_per_s'] / plain['fp32']['images_per_s']:.2f}x"
        lines.append(line)
    return lines


def busy_warning(machine: dict[str, Any]) -> Optional[str]:
    """Other processes on the cores distort everything, more than proportionally with >1 thread:
    OpenMP workers wait at every barrier for a thread that is descheduled."""
    others = machine.get("other_processes_cpus")
    if others is None:  # no /proc/stat: fall back on the load average at the start
        loads = (machine.get("load_average") or [None])[:1]
        if loads[0] is None or loads[0] < 0.5 * (machine.get("logical_cpus") or 1):
            return None
        return f"WARNING: busy machine (1-min load average {loads[0]:.1f} at start): numbers are unreliable"
    if others < 0.1:
        return None
    return (f"WARNING: other processes kept {others:.2f} of {machine.get('logical_cpus')} CPUs busy during the "
            "run: absolute numbers and ratios are unreliable; rerun when idle")


def write_plots(results: dict[str, Any], out: Path, prefix: str = "") -> list[Path]:
    """throughput.png and memory.png: images/s and peak MB per image against token count (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    scaling = results.get("scaling") or []
    families = sorted({r["family"] for r in scaling})
    for filename, field_name, ylabel in (("throughput.png", "images_per_s", "images / s (fp32 forward)"),
                                         ("memory.png", "peak_mb_per_image", "peak memory per image (MB)")):
        fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
        missing: dict[str, list[int]] = {}
        for family in families:
            rows = sorted((r for r in scaling if r["family"] == family), key=lambda r: r["tokens"])
            pts = [(r["tokens"], r[field_name]) for r in rows if r.get(field_name)]
            gaps = [r["tokens"] for r in rows if not r.get(field_name)]
            if gaps:
                missing[family] = gaps
            if pts:
                ax.plot(*zip(*pts), marker="o", label=family)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens")
        ax.set_ylabel(ylabel)
        tokens = sorted({r["tokens"] for r in scaling})
        if tokens:
            ax.set_xticks(tokens, [str(t) for t in tokens])
            ax.minorticks_off()
        machine = results["meta"]["machine"]
        ax.set_title(f"{machine['cpu_model']} [{isa_label(machine)}], {machine['threads']} threads, "
                     f"{results['meta']['mode']} run", fontsize=9)
        if ax.get_lines():
            ax.legend()
        ax.grid(True, which="both", alpha=0.3)
        note = "; ".join(f"{fam} at {', '.join(map(str, t))}" for fam, t in missing.items())
        fig.tight_layout(rect=(0, 0.06 if note else 0, 1, 1))
        if note:
            fig.text(0.01, 0.01, textwrap.fill("not measured: " + note, 110), fontsize=6, va="bottom")
        path = out / (prefix + filename)
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


# --- entry point ----------------------------------------------------------------------------------
def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="output directory")
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)} (default: all); the FLOP-rate "
                        "checks need models,matmul, the bf16 error accuracy, the token checks scaling")
    p.add_argument("--quick", action="store_true", help="2 rounds, no torch.compile / bf16 train, nothing at 12544 tokens but BiXT (< 3 min)")
    p.add_argument("--smoke", action="store_true", help="tiny models, seconds (for tests)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile configurations")
    p.add_argument("--repeats", type=int, help="interleaved timing rounds (default 5, quick 2)")
    p.add_argument("--warmup", type=int, help="warm-up calls per configuration (default 2, quick 1)")
    p.add_argument("--max-call-s", type=float, help="a configuration slower than this per call keeps 1 sample")
    p.add_argument("--budget-s", type=float, help="start no new timing round after this many seconds of rounds")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all available CPUs)")
    p.add_argument("--model", default="bixt_ti_l64_p16", help="BiXT model for the models section")
    p.add_argument("--attn-impl", default="auto", choices=("auto", "math", "sdpa"), help="BiXT attention kernels")
    p.add_argument("--default-allocator", action="store_true",
                   help="leave glibc malloc as it is (default: bixt.runtime.tune_cpu_allocator(), as the tasks do)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", action="store_true",
                   help="also print today's run next to the stored run of this CPU kind (read before a "
                        "complete run replaces it)")
    p.add_argument("--kinds-table", action="store_true",
                   help="print the one-row-per-CPU-kind table of the stored runs under --out and exit")
    args = p.parse_args(argv)
    sections = tuple(s.strip() for s in args.only.split(",") if s.strip())
    bad = [s for s in sections if s not in SECTIONS]
    if bad or not sections:
        p.error(f"--only takes a comma-separated subset of {', '.join(SECTIONS)}; got {args.only!r}")
    args.sections = sections
    return args


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.kinds_table:
        print(kinds_table(args.out))
        return {}
    plan = make_plan(args)
    set_threads(args.threads or plan.threads)
    allocator_tuned = False if args.default_allocator else tune_cpu_allocator()
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)
    results: dict[str, Any] = {
        "meta": {
            "mode": plan.mode, "sections": list(args.sections), "model": plan.model.label,
            "attn_impl": args.attn_impl, "seed": args.seed, "machine": machine_info(),
            "allocator_tuned": allocator_tuned,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "plan": json.loads(json.dumps(asdict(plan), default=str)),
            "method": {
                "timing": "warm-up, then per round every configuration once in turn; median over rounds",
                "train_step": "zero_grad, forward + cross-entropy (autocast for bf16), backward, AdamW step (as the "
                              "engine builds it: bixt.engine.optim.build_optimizer)",
                "plain_ops": "the same model and weights running the published implementation's ops "
                             "(benchmarks/published_ops.py: explicit attention matrices everywhere, strided token "
                             "view); its train step uses the published training script's optimizer, timm's "
                             "create_optimizer_v2('adamw') with torch's defaults",
                "flops": "torch.utils.flop_counter on the meta device at the measured batch (matmuls, "
                         "convolutions, attention as matmuls; BiXT counted with attn_impl=math, one similarity "
                         "per layer); train = forward + backward, no recomputation",
                "matmul_fraction": "achieved model GFLOP/s / reference torch.mm GFLOP/s of the same dtype",
                "compiled": "torch.compile (inductor, default mode); forward graphs with freezing=True",
                "allocator": "bixt.runtime.tune_cpu_allocator() unless --default-allocator",
                "memory": "fresh worker process, glibc mmap threshold 64 KiB; peak RSS (VmHWM, reset via "
                          "/proc/self/clear_refs) minus RSS after model build and a warm-up forward of the same "
                          "batch, per image",
            },
        }
    }
    bench = Bench(plan, args.sections, args.seed, log)
    snapshot = cpu_snapshot()
    results.update(bench.run())
    results["meta"]["machine"]["load_average_end"] = list(os.getloadavg())
    results["meta"]["machine"]["other_processes_cpus"] = other_load(snapshot, cpu_snapshot())
    kind = results["meta"]["cpu_kind"] = cpu_kind(results["meta"]["machine"])
    out = kind_dir(args.out, kind)
    out.mkdir(parents=True, exist_ok=True)
    stored = load_stored(args.out, kind) if args.compare else None
    # Only a complete default run replaces the stored run of its kind (after --compare has read it);
    # a partial or quick run goes beside it as latest.json (latest_*.png).
    complete = plan.mode == "full" and set(args.sections) == set(SECTIONS)
    path = out / ("results.json" if complete else "latest.json")
    path.write_text(json.dumps(results, indent=2, default=str))
    plots = write_plots(results, out, "" if complete else "latest_") if "scaling" in args.sections else []
    print(report(results))
    if args.compare:
        print(f"\n## Today vs the stored run of this CPU kind ({kind})\n" + (
            compare_table(stored, results) if stored else f"no stored run for {kind} under {out}: run without --compare"))
    print(f"\nwrote {path}" + "".join(f", {p}" for p in plots))
    return results


if __name__ == "__main__":
    main()
