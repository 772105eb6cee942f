"""bixt.metrics.classification.TopKEvaluator against hand-computed values."""
import pytest
import torch

from bixt.heads.classification import ClassificationHead
from bixt.metrics.classification import TopKEvaluator


def test_top1_mean_class_accuracy_and_per_class_table():
    ev = TopKEvaluator(num_classes=3, topk=(1, 2), classes=["cat", "dog", "eel"])
    logits = torch.tensor([[5.0, 1, 0], [0, 5, 1], [5, 0, 1], [0, 1, 5], [0, 5, 1]])
    targets = torch.tensor([0, 1, 1, 1, 0])  # hits: yes, yes, no, no, no
    ev.update(logits[:2], (None, targets[:2]))
    ev.update(logits[2:], (None, targets[2:]))
    state = ev.state()
    out = ev.compute(state)
    assert out["top1"] == pytest.approx(40.0)
    assert out["top2"] == pytest.approx(60.0)  # samples 0, 1 and 3 (dog second after eel)
    # cat: 1 of 2, dog: 1 of 3, eel: no samples (not averaged in)
    assert out["mean_class_acc"] == pytest.approx(100 * (0.5 + 1 / 3) / 2)
    assert ev.per_class(state) == [("cat", 2, pytest.approx(50.0)), ("dog", 3, pytest.approx(100 / 3))]
    flat = TopKEvaluator(num_classes=3, topk=(1,), classes=["cat", "dog", "eel"], per_class_metrics=True)
    assert flat.compute(state)["acc/dog"] == pytest.approx(100 / 3) and "acc/eel" not in flat.compute(state)
    with pytest.raises(ValueError, match="gives 4 logits per sample, the evaluator expects 3"):
        ev.update(torch.zeros(1, 4), (None, torch.tensor([0])))


def test_classification_head_pools_latents_and_starts_uniform():
    head = ClassificationHead(dim=8, num_classes=4)
    latents = torch.randn(2, 5, 8)
    assert torch.equal(head(latents), torch.zeros(2, 4))
    torch.nn.init.normal_(head.fc.weight)
    expected = head.fc(head.fc_norm(latents.mean(dim=1)))
    torch.testing.assert_close(head(latents), expected)
