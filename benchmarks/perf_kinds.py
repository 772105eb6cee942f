"""perf.py's results per CPU kind: where a run is stored, today's run next to the stored one, and
the one-row-per-kind table of the README.

The kind is what decides which kernels run (``cpu_kind``): ``AVX2``, ``AVX-512``, ``AVX-512+BF16``
(native bf16 dot products, e.g. Zen 4/5, Cooper Lake) or ``AMX`` (Sapphire Rapids and later).
A run is stored as ``<out>/perf/<slug>/results.json`` (plots beside it), so a run on one kind never
replaces another kind's numbers.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Optional

from common import markdown_table

KINDS = ("AVX2", "AVX-512", "AVX-512+BF16", "AMX")


def cpu_kind(machine: dict[str, Any]) -> str:
    """The CPU kind of a ``common.machine_info()`` record (``other`` without AVX2)."""
    flags = set(machine.get("cpu_flags") or [])
    capability = str(machine.get("cpu_capability", "")).lower()
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX-512+BF16"
    if "avx512f" in flags or capability.startswith("avx512"):
        return "AVX-512"
    if "avx2" in flags or capability == "avx2":
        return "AVX2"
    return "other"


def kind_slug(kind: str) -> str:
    """``AVX-512+BF16`` -> ``avx512-bf16`` (a directory name)."""
    return kind.lower().replace("-", "").replace("+", "-")


def kind_dir(out: Path, kind: str) -> Path:
    return out / "perf" / kind_slug(kind)


def load_stored(out: Path, kind: str) -> Optional[dict[str, Any]]:
    path = kind_dir(out, kind) / "results.json"
    return json.loads(path.read_text()) if path.exists() else None


def headline(results: dict[str, Any]) -> dict[str, Optional[float]]:
    """The numbers one row of the comparison shows, by name (None where the run has no value)."""
    values: dict[str, Optional[float]] = {}
    for row in results.get("models", []):
        values[f"{row['label']} {row['task']} b{row['batch']} {row['dtype']} {row['mode']} (img/s)"] = row.get("images_per_s")
    for row in results.get("scaling", []):
        values[f"{row['family']} {row['tokens']} tokens (img/s)"] = row.get("images_per_s")
        values[f"{row['family']} {row['tokens']} tokens (peak MB/img)"] = row.get("peak_mb_per_image")
    for row in results.get("matmul", []):
        values[f"mm {row['case']} {row['dtype']} (GFLOP/s)"] = row.get("gflop_per_s")
    for check in results.get("summary", []):
        values[f"check {check['name']}"] = check.get("value")
    return values


def compare_table(stored: dict[str, Any], today: dict[str, Any]) -> str:
    """Markdown: every headline number of today's run next to the stored run's, with their ratio."""
    old, new = headline(stored), headline(today)
    rows = []
    for name in [*new, *(k for k in old if k not in new)]:
        a, b = old.get(name), new.get(name)
        rows.append((name, a, b, b / a if a and b else None))
    when = stored.get("meta", {}).get("started", "?")
    return markdown_table(["measure", f"stored ({when})", "today", "today / stored"], rows)


def kinds_rows(out: Path) -> list[tuple]:
    """One row per CPU kind stored under ``out``: where, when and the key numbers."""
    rows = []
    for kind in KINDS:
        results = load_stored(out, kind)
        if results is None:
            continue
        meta, machine = results["meta"], results["meta"]["machine"]
        checks = {c["name"]: c.get("value") for c in results.get("summary", [])}
        models = {(r["role"], r["task"], r["dtype"], r["mode"]): r.get("images_per_s") for r in results.get("models", [])}
        scaling = {(r["family"], r["tokens"]): r for r in results.get("scaling", [])}
        bixt, vit, xcit = (scaling.get((f, 12544), {}).get("peak_mb_per_image") for f in ("BiXT-Ti", "ViT-Ti", "XCiT-Ti"))
        rows.append((kind, machine["cpu_model"], machine.get("threads"), meta["mode"], str(meta.get("started", ""))[:10],
                     models.get(("model", "forward", "fp32", "eager")), models.get(("model", "train", "fp32", "eager")),
                     models.get(("model", "forward", "bf16", "eager")), checks.get("accel_forward_over_plain_ops"),
                     checks.get("bixt_over_vit_speed_12544"), _triple(bixt, vit, xcit)))
    return rows


def _triple(*values: Optional[float]) -> str:
    return " / ".join("–" if v is None else f"{v:.0f}" for v in values)


def kinds_table(out: Path) -> str:
    """The README's table: one row per CPU kind measured (from the stored results under ``out``)."""
    headers = ["CPU kind", "CPU", "threads", "run", "date", "fwd img/s fp32", "train img/s fp32", "fwd img/s bf16",
               "accel / plain ops", "BiXT / ViT @12544", "MB/img @12544 BiXT / ViT / XCiT"]
    return markdown_table(headers, kinds_rows(out))


def known_kinds(out: Path) -> Iterable[str]:
    return [k for k in KINDS if (kind_dir(out, k) / "results.json").exists()]
