"""Part-segmentation metric against hand-computed cases (ShapeNetPart protocol)."""
from __future__ import annotations

import pytest
import torch

from bixt.metrics.partseg import (
    PartSegEvaluator,
    format_category_table,
    make_part_mask,
    restricted_argmax,
    shape_ious,
)

# Two categories: 0 owns parts {0, 1}, 1 owns parts {2, 3, 4}.
PART_MASK = make_part_mask([[0, 1], [2, 3, 4]])


def test_part_mask():
    assert PART_MASK.tolist() == [[True, True, False, False, False], [False, False, True, True, True]]


def test_shape_iou_hand_computed():
    # Category 0, truth 0 0 1 1, prediction 0 1 1 1:
    #   part 0: inter 1, union 2 -> 0.5; part 1: inter 2, union 3 -> 2/3; mean 7/12.
    pred = torch.tensor([[0, 1, 1, 1]])
    target = torch.tensor([[0, 0, 1, 1]])
    iou = shape_ious(pred, target, torch.tensor([0]), PART_MASK)
    assert iou.tolist() == pytest.approx([7 / 12])


def test_absent_part_counts_one():
    # Category 1 (parts 2, 3, 4); part 4 is in neither truth nor prediction -> IoU 1.
    #   part 2: inter 2, union 3 -> 2/3; part 3: inter 1, union 2 -> 1/2; part 4: absent -> 1. mean 13/18.
    pred = torch.tensor([[2, 2, 3, 2]])
    target = torch.tensor([[2, 2, 3, 3]])
    assert shape_ious(pred, target, torch.tensor([1]), PART_MASK).tolist() == pytest.approx([13 / 18])
    # A part predicted but absent from the truth counts 0, not 1: parts 2, 3, 4 -> 1, 0, 0.
    pred = torch.tensor([[2, 2, 4, 4]])
    assert shape_ious(pred, target, torch.tensor([1]), PART_MASK).tolist() == pytest.approx([1 / 3])


def test_padded_points_are_ignored():
    pred = torch.tensor([[0, 1, 1, 0, 0]])
    target = torch.tensor([[0, 1, 1, -100, -100]])
    mask = torch.tensor([[True, True, True, False, False]])
    assert shape_ious(pred, target, torch.tensor([0]), PART_MASK, mask).tolist() == pytest.approx([1.0])


def test_restricted_argmax_only_picks_category_parts():
    logits = torch.tensor([[[0.0, 1.0, 9.0, 2.0, 0.0]], [[5.0, 0.0, 1.0, 0.5, 3.0]]])
    pred = restricted_argmax(logits, torch.tensor([0, 1]), PART_MASK)
    assert pred.tolist() == [[1], [4]]


def test_evaluator_instance_vs_class_miou():
    """Three shapes: A and B of category 0 (IoU 1 and 0.25), C of category 1 (IoU 0.5).

    instance mIoU = (1 + 0.25 + 0.5) / 3; class mIoU = ((1 + 0.25) / 2 + 0.5) / 2.
    """
    ev = PartSegEvaluator(PART_MASK, ["mug", "lamp"])

    def logits_for(labels):
        return torch.nn.functional.one_hot(torch.tensor(labels), 5).float().unsqueeze(0)

    # shape A (cat 0): perfect.
    ev.update(logits_for([0, 0, 1, 1]), {"labels": torch.tensor([[0, 0, 1, 1]]), "category": torch.tensor([0])})
    # shape B (cat 0, third point padded): truth 0 1, pred 0 0 -> part 0: 1/2, part 1: 0/1 -> 0.25.
    # shape C (cat 1): truth 2 2 3, pred 2 4 3 -> part 2: 1/2, part 3: 1/1, part 4: 0/1 -> 0.5.
    ev.update(
        torch.cat([logits_for([0, 0, 1]), logits_for([2, 4, 3])]),
        {
            "labels": torch.tensor([[0, 1, -100], [2, 2, 3]]),
            "category": torch.tensor([0, 1]),
            "point_mask": torch.tensor([[True, True, False], [True, True, True]]),
        },
    )
    state = ev.state()
    metrics = ev.compute(state)
    ious_cat0 = [1.0, 0.25]
    iou_cat1 = 0.5
    assert metrics["instance_miou"] == pytest.approx((sum(ious_cat0) + iou_cat1) / 3)
    assert metrics["class_miou"] == pytest.approx((sum(ious_cat0) / 2 + iou_cat1) / 2)
    assert metrics["iou/mug"] == pytest.approx(0.625)
    assert metrics["iou/lamp"] == pytest.approx(0.5)
    assert metrics["point_accuracy"] == pytest.approx(7 / 9)
    # Summing two evaluators' states (as DDP does) equals one evaluator seeing everything.
    first, second = PartSegEvaluator(PART_MASK, ["mug", "lamp"]), PartSegEvaluator(PART_MASK, ["mug", "lamp"])
    first.update(logits_for([0, 0, 1, 1]), {"labels": torch.tensor([[0, 0, 1, 1]]), "category": torch.tensor([0])})
    second.update(logits_for([2, 4, 3]), {"labels": torch.tensor([[2, 2, 3]]), "category": torch.tensor([1])})
    summed = {k: first.state()[k] + second.state()[k] for k in state}
    assert ev.compute(summed)["instance_miou"] == pytest.approx((1.0 + 0.5) / 2)
    assert ev.compute(summed)["class_miou"] == pytest.approx((1.0 + 0.5) / 2)
    table = format_category_table(metrics, ["mug", "lamp"])
    assert "mug" in table and "62.50" in table and "instance mIoU" in table


def test_unseen_category_is_left_out_of_class_miou():
    ev = PartSegEvaluator(PART_MASK, ["mug", "lamp"])
    ev.update(torch.nn.functional.one_hot(torch.tensor([[0, 1]]), 5).float(),
              {"labels": torch.tensor([[0, 1]]), "category": torch.tensor([0])})
    metrics = ev.compute(ev.state())
    assert metrics["class_miou"] == pytest.approx(1.0)
    assert "iou/lamp" not in metrics
    assert "-" in format_category_table(metrics, ["mug", "lamp"]).splitlines()[2]


def test_evaluator_refuses_nan_logits_at_real_points():
    ev = PartSegEvaluator(PART_MASK, ["mug", "table"])
    logits = torch.zeros(2, 3, 5)
    logits[1, 0, 2] = float("nan")
    batch = {"labels": torch.tensor([[0, 1, 1], [2, 3, 4]]), "category": torch.tensor([0, 1]),
             "point_mask": torch.ones(2, 3, dtype=torch.bool)}
    with pytest.raises(ValueError, match=r"NaN/inf part logits for 1 of 2 shapes .*\['table'\].*rows \[1\]"):
        ev.update(logits, batch)
    assert float(ev.shape_count.sum()) == 0  # nothing was accumulated
    # NaN at padded points is not scored, so it is no error
    batch["point_mask"] = torch.tensor([[True, True, True], [False, True, True]])
    ev.update(logits, batch)
    assert float(ev.shape_count.sum()) == 2
