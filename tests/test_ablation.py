"""benchmarks/ablation.py without training: FLOP matching, the table and the plot."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import ablation  # noqa: E402


def test_variants_are_matched_in_forward_flops_at_the_reference_width():
    preset = ablation.PRESETS["quick"]
    train, _, num_classes = ablation.image_data(ablation.Preset(**{**preset.__dict__, "image_train": 4,
                                                                  "image_test": 4}))
    example = torch.stack([train[0][0]])

    def build(**arch):
        return ablation.image_model(preset, num_classes, **arch)

    target = ablation.flops_per_sample(build, example, variant="bidirectional", depth=preset.depth,
                                       num_latents=preset.num_latents)
    for variant in ("sequential", "iterative"):
        arch = ablation.match_flops(build, example, preset, variant, target, tolerance=0.03)
        assert abs(arch["flops"] / target - 1) <= 0.03 and arch["depth"] == preset.depth
        assert ablation.flops_per_sample(build, example, variant=variant, depth=arch["depth"],
                                         num_latents=arch["num_latents"]) == arch["flops"]
    with pytest.raises(RuntimeError, match="no depth and latent count of iterative comes within"):
        ablation.match_flops(build, example, preset, "iterative", 1000, tolerance=0.03)  # below any model


def test_table_and_plot(tmp_path):
    runs = [dict(task="t", variant=v, seed=s, flops=1e6, params=1e4, top1=50.0 + s, depth=3, num_latents=16,
                 samples_per_s=100.0, train_mem_mb=10.0) for v in ablation.CROSS_ATTENTIONS for s in (0, 1)]
    rows = ablation.summarise(runs)
    assert [r["variant"] for r in rows] == list(ablation.CROSS_ATTENTIONS) and rows[0]["top1_mean"] == 50.5
    args = type("Args", (), dict(flag=" --quick", threads=2))()
    table = ablation.markdown(rows, args, "CPU")
    assert "| t | sequential | 3 | 16 | 1.00 |" in table and "50.5 ± 0.7 (2)" in table
    ablation.plot(rows, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0
