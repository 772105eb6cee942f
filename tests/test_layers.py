"""Imports between bixt's packages run down the layers ARCHITECTURE.md lists ("Layers"): no upward
import, no circle. Every module's imports are read with ast (nothing is imported)."""
from __future__ import annotations

import ast
from pathlib import Path

BIXT = Path(__file__).resolve().parents[1] / "bixt"

#: lowest first; a package may import its own modules and those of lower layers only
LAYERS = [
    {"constraints", "rng", "runtime", "flops"},  # plain helpers: import nothing of bixt
    {"core"},
    {"tokenizers", "weights", "accel"},
    {"heads", "baselines"},
    {"models"},
    {"metrics"},
    {"data"},
    {"engine"},
    {"tasks"},
    {"trained"},  # loads any run, timm folder or registered name (rebuilt through the task kit)
    {"predict"},  # feeds files to a loaded model
    {"viz", "export"},  # read models through trained, inputs through predict
    {"bixt"},  # the package itself (bixt/__init__.py re-exports)
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def unit_of(path: Path) -> str:
    """The layer unit a module belongs to: its sub-package, or a top-level module's own name."""
    rel = path.relative_to(BIXT)
    if len(rel.parts) > 1:
        return rel.parts[0]
    return "bixt" if rel.name == "__init__.py" else rel.stem


def bixt_imports(path: Path) -> set[str]:
    """The bixt units ``path`` imports (``import bixt.x.y``, ``from bixt.x import``, ``from bixt import x``)."""
    units = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = ([f"bixt.{alias.name}" for alias in node.names] if node.module == "bixt" else [node.module])
        else:
            continue
        units |= {m.split(".")[1] for m in modules if m.startswith("bixt.")}
    return units


def test_every_unit_has_a_layer():
    units = {unit_of(p) for p in BIXT.rglob("*.py")} - {"configs"}
    assert units <= set(LAYER), f"add to LAYERS (and ARCHITECTURE.md): {sorted(units - set(LAYER))}"


def test_imports_only_run_down_the_layers():
    upward = []
    for path in sorted(BIXT.rglob("*.py")):
        unit = unit_of(path)
        if unit == "configs":
            continue
        for other in bixt_imports(path) - {unit}:
            if other in LAYER and LAYER[other] >= LAYER[unit]:
                upward.append(f"{path.relative_to(BIXT.parent)} ({unit}) imports bixt.{other}")
    assert not upward, "imports up or across a layer:\n" + "\n".join(upward)
