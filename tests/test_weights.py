"""bixt.weights: drop rules, what a load of the wrong file says, the report."""
import re

import pytest
import timm
import torch

import bixt  # noqa: F401  (registers the models)
from bixt.weights import drop_prefixes, load_weights

TINY = dict(depth=2, embed_dim=32, num_heads=2, num_latents=8, num_classes=5, img_size=32)


def tiny(seed=0, **kwargs):
    torch.manual_seed(seed)
    return timm.create_model("bixt_ti_l64_p16", **{**TINY, **kwargs})


def test_a_drop_rule_discards_a_pretraining_decoder_and_names_it():
    source = tiny(seed=1)
    pretrain = {**{f"backbone.{k}": v for k, v in source.state_dict().items()},
                "decoder.proj.weight": torch.zeros(4, 32), "decoder.proj.bias": torch.zeros(4),
                "mask_token": torch.zeros(1, 1, 32)}
    model = tiny()
    report = load_weights(model, {"state_dict": pretrain}, within="backbone",
                          drop=drop_prefixes("pre-training decoder", "decoder.", "mask_token"))
    assert report.loaded == report.total == len(model.state_dict()) and report.complete
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    (outside,) = [why for why in report.dropped if why.startswith("outside backbone.*")]
    assert sorted(report.dropped[outside]) == ["decoder.proj.bias", "decoder.proj.weight", "mask_token"]
    # without `within`, the rule alone: the decoder is dropped, the rest must fit (it does not: prefixed)
    with pytest.raises(RuntimeError, match=r"none of its \d+ tensors matches"):
        load_weights(tiny(), pretrain, drop=drop_prefixes("pre-training decoder", "decoder.", "mask_token"))


def test_a_dropped_tensor_the_model_has_keeps_its_init_and_is_not_missing():
    source, model = tiny(seed=1), tiny(seed=2)
    head = model.head.weight.clone()
    report = load_weights(model, source.state_dict(), drop=drop_prefixes("classifier", "head."))
    assert torch.equal(model.head.weight, head) and not report.missing
    assert report.loaded == report.total - 2 and sorted(report.dropped["classifier"]) == ["head.bias", "head.weight"]
    assert "dropped from the checkpoint: classifier: 2 tensors" in str(report)
    # strict: without the rule, another classifier size is a shape mismatch naming the key
    with pytest.raises(RuntimeError, match=r"head\.weight: checkpoint \(5, 32\) vs model \(3, 32\)"):
        load_weights(tiny(num_classes=3), source.state_dict())


def test_another_width_names_what_differs():
    narrow = tiny(embed_dim=32).state_dict()
    with pytest.raises(RuntimeError, match=re.escape("embed dim 32 vs 48, token width 32 vs 48 (file vs model)")) as info:
        load_weights(tiny(embed_dim=48), narrow)
    assert "shape mismatches: " in str(info.value) and "The file seems to be for: embed dim 32" in str(info.value)
    # another depth: the keys on either side named
    with pytest.raises(RuntimeError, match=r"layers 2 vs 3 \(file vs model\).*lacks \d+ of the \d+ tensors; "
                                           r"missing keys: .*encoder\.blocks\.2\..*unexpected keys: "):
        load_weights(tiny(depth=3), narrow)


def test_the_official_position_buffer_is_reported_as_derived_and_checked_for_stride():
    model = tiny(dynamic_img_size=True)
    state = dict(model.state_dict())
    state["fourier_pos_encode.pos"] = torch.zeros(64, 14, 14)  # an official 224 px file at stride 16
    report = load_weights(tiny(dynamic_img_size=True), state)
    assert report.dropped == {"Fourier positional features (recomputed for every token grid)": ["fourier_pos_encode.pos"]}
    state["fourier_pos_encode.pos"] = torch.zeros(64, 28, 28)  # a stride-8 file
    with pytest.raises(RuntimeError, match=r"state dict: its Fourier positional features are the \(28, 28\) token grid "
                                           r"of a 224 px image, i.e. token stride 8, but this model has token stride 16"):
        load_weights(tiny(dynamic_img_size=True), state)
