"""Semantic-segmentation metrics: hand-computed confusion matrices, the evaluator, DDP-style sums."""
import inspect
import re

import pytest
import torch

from bixt.engine.task import Evaluator
from bixt.metrics import semseg
from bixt.metrics.semseg import SemSegEvaluator, confusion_matrix, format_class_table, segmentation_metrics

NAMES = ["wall", "sky", "tree", "lamp"]

# 3 scored classes + "lamp" (3), which is absent from both truth and prediction.
# truth: 0 0 0 1 1 2 | 255 ; pred: 0 0 1 1 2 2 | 0 (the ignored pixel is not scored)
TARGET = torch.tensor([[0, 0, 0, 1, 1, 2, 255]])
PRED = torch.tensor([[0, 0, 1, 1, 2, 2, 0]])


pytestmark = pytest.mark.usefixtures("one_thread")


def test_confusion_matrix_by_hand_and_ignore_label():
    cm = confusion_matrix(PRED, TARGET, num_classes=4)
    expected = torch.tensor([[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    assert cm.dtype == torch.long and torch.equal(cm, expected)
    # the ignored pixel: counted nowhere, whatever was predicted there
    assert int(cm.sum()) == 6


def test_metrics_exact_values():
    m = segmentation_metrics(confusion_matrix(PRED, TARGET, num_classes=4), NAMES)
    # IoU: wall 2/(3+2-2)=2/3, sky 1/(2+2-1)=1/3, tree 1/(1+2-1)=1/2; lamp absent: not averaged
    assert m["miou"] == pytest.approx((2 / 3 + 1 / 3 + 1 / 2) / 3)
    assert m["mean_acc"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert m["pixel_acc"] == pytest.approx(4 / 6)
    assert m["iou/sky"] == pytest.approx(1 / 3) and m["acc/tree"] == pytest.approx(1.0)
    assert "iou/lamp" not in m and "acc/lamp" not in m


def test_class_only_predicted_is_left_out_of_the_mean_but_hurts_the_class_it_hit():
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 2, 1, 1])  # class 2 never in the truth, predicted once (on a class-0 pixel)
    m = segmentation_metrics(confusion_matrix(pred, target, num_classes=3), ["a", "b", "c"])
    assert "iou/c" not in m
    assert m["iou/a"] == pytest.approx(1 / 2)  # the wrong pixel is a miss for class 0
    assert m["miou"] == pytest.approx((1 / 2 + 1) / 2)  # mmseg's nanmean over union > 0 would give 0.5
    assert m["pixel_acc"] == pytest.approx(3 / 4)


def test_out_of_range_labels_are_refused_on_cpu():
    with pytest.raises(ValueError, match=r"outside \[0, 3\).*label values such as \[7\]"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 7]), num_classes=3)
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(torch.zeros(2, 3), torch.zeros(3, 2), num_classes=3)


def test_evaluator_refuses_out_of_range_labels_at_compute():
    ev = SemSegEvaluator(num_classes=3, class_names=["a", "b", "c"])
    ev.update(torch.randn(1, 3, 2, 2), {"labels": torch.tensor([[[0, 1], [5, 255]]])})  # no error yet: no sync
    with pytest.raises(ValueError, match="1 pixels have a label"):
        ev.compute(ev.state())


def _random_batch(gen, b=2, c=4, h=6, w=5):
    logits = torch.randn(b, c, h, w, generator=gen)
    labels = torch.randint(0, c, (b, h, w), generator=gen)
    labels[:, 0, 0] = 255
    return logits, labels


def test_evaluator_two_batches_equal_the_concatenation_and_rank_sums():
    gen = torch.Generator().manual_seed(0)
    (l1, y1), (l2, y2) = _random_batch(gen), _random_batch(gen)
    ev = SemSegEvaluator(num_classes=4, class_names=NAMES)
    assert isinstance(ev, Evaluator)
    ev.update(l1, {"labels": y1})
    ev.update(l2, {"labels": y2})
    whole = confusion_matrix(torch.cat([l1, l2]).argmax(1), torch.cat([y1, y2]), num_classes=4)
    assert torch.equal(ev.state()["confusion"], whole)
    assert ev.compute(ev.state()) == segmentation_metrics(whole, NAMES)
    # two "ranks": the engine sums their states
    ranks = [SemSegEvaluator(num_classes=4, class_names=NAMES) for _ in range(2)]
    ranks[0].update(l1, {"labels": y1})
    ranks[1].update(l2, {"labels": y2})
    summed = {k: ranks[0].state()[k] + ranks[1].state()[k] for k in ranks[0].state()}
    assert ev.compute(summed) == ev.compute(ev.state())


def test_low_resolution_logits_are_upsampled_to_the_labels():
    # class 0 wins on the left column of a 2x2 logit map, class 1 on the right; labels at 4x4
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 0, :, 0] = 5.0
    logits[0, 1, :, 1] = 5.0
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[..., 2:] = 1
    ev = SemSegEvaluator(num_classes=2, class_names=["l", "r"])
    ev.update(logits, {"labels": labels})
    assert torch.equal(ev.state()["confusion"], torch.tensor([[8, 0], [0, 8]]))
    assert ev.compute(ev.state())["miou"] == 1.0


def test_no_host_sync_in_the_confusion_computation():
    # runs under inference_mode (the running sums were made outside it) ...
    ev = SemSegEvaluator(num_classes=4, class_names=NAMES)
    logits, labels = _random_batch(torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ev.update(logits, {"labels": labels})
        ev.update(logits, {"labels": labels})
    ev.update(logits, {"labels": labels})  # and again outside it
    assert int(ev.state()["confusion"].sum()) == 3 * (labels != 255).sum()
    # ... and the per-batch path has none of the calls that wait for the device
    source = inspect.getsource(semseg._confusion_counts) + inspect.getsource(SemSegEvaluator.update)
    for call in (".item()", ".tolist()", "bincount", "nonzero"):
        assert call not in source, call
    assert not re.search(r"(?<![.\w])(int|float|bool)\(", source)  # Python scalars of tensors wait for the device


def test_format_class_table():
    m = segmentation_metrics(confusion_matrix(PRED, TARGET, num_classes=4), NAMES)
    table = format_class_table(m, NAMES)
    lines = table.splitlines()
    assert lines[1].split() == ["wall", "66.67", "66.67"]
    assert lines[4].split() == ["lamp", "-", "-"]
    assert lines[-3].split() == ["mIoU", f"{100 * m['miou']:.2f}"] and lines[-1].split() == ["pixel", "acc", "66.67"]


def test_evaluator_argument_errors():
    with pytest.raises(ValueError, match="2 class names for num_classes=3"):
        SemSegEvaluator(num_classes=3, class_names=["a", "b"])
    ev = SemSegEvaluator(num_classes=3, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"expected logits \(batch, 3, height, width\)"):
        ev.update(torch.randn(1, 4, 2, 2), {"labels": torch.zeros(1, 2, 2, dtype=torch.long)})
    with pytest.raises(ValueError, match="expected labels"):
        ev.update(torch.randn(1, 3, 2, 2), {"labels": torch.zeros(1, 1, 2, 2, dtype=torch.long)})


def test_a_rank_without_batches_contributes_zeros_to_the_sum():
    seen, empty = (SemSegEvaluator(num_classes=4, class_names=list("abcd")) for _ in range(2))
    seen.update(torch.nn.functional.one_hot(PRED, 4).permute(0, 2, 1)[..., None].float(), {"labels": TARGET[..., None]})
    summed = {k: seen.state()[k] + empty.state()[k] for k in seen.state()}
    assert torch.equal(summed["confusion"], confusion_matrix(PRED, TARGET, num_classes=4))
    assert seen.compute(summed) == seen.compute(seen.state())


def test_images_of_different_sizes_as_lists_equal_one_update_each():
    torch.manual_seed(0)
    sizes = [(5, 7), (6, 4)]
    logits = [torch.randn(1, 3, h, w) for h, w in sizes]
    labels = [torch.randint(0, 3, (h, w)) for h, w in sizes]
    listed, one_by_one = (SemSegEvaluator(num_classes=3, class_names=list("abc")) for _ in range(2))
    listed.update(logits, {"labels": labels})
    for lg, lb in zip(logits, labels):
        one_by_one.update(lg, {"labels": lb[None]})
    expected = sum(confusion_matrix(lg.argmax(1), lb[None], num_classes=3) for lg, lb in zip(logits, labels))
    assert torch.equal(listed.state()["confusion"], expected)
    assert torch.equal(one_by_one.state()["confusion"], expected)
