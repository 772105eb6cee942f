"""One plain-text per-class table for every task's final log (classes, parts, categories)."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence


def per_class_table(metrics: Mapping[str, float], names: Sequence[str], *, columns: Sequence[tuple[str, str]],
                    totals: Sequence[tuple[str, str]], scale: float = 1.0, first: str = "class",
                    counts: Optional[Sequence[int]] = None, count_header: str = "count") -> str:
    """A row per name with ``metrics[f"{key}/{name}"]`` for each ``(header, key)`` of ``columns``
    (``-``: absent from the split), an optional count column, then a row per ``(label, key)`` of
    ``totals`` present in ``metrics``. Values are multiplied by ``scale`` (100: fractions as %)."""
    width = max([len(n) for n in names] + [len(label) for label, _ in totals] + [len(first)])

    def cell(value: Optional[float]) -> str:
        return f"{scale * value:6.2f}" if value is not None else f"{'-':>6}"

    lines = [f"{first:<{width}}  " + "  ".join(f"{h:>6}" for h, _ in columns)
             + (f"  {count_header:>6}" if counts is not None else "")]
    for i, name in enumerate(names):
        lines.append(f"{name:<{width}}  " + "  ".join(cell(metrics.get(f"{key}/{name}")) for _, key in columns)
                     + (f"  {counts[i]:>6}" if counts is not None else ""))
    lines += [f"{label:<{width}}  {cell(metrics[key])}" for label, key in totals if key in metrics]
    return "\n".join(lines)
