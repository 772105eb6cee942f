"""BiXTSegmenter: heads, pruning, size checks, whole / sliding inference, pretrained backbones, the benchmark."""
import argparse
import json
import re
import sys
import zipfile
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from bixt.models.segmentation import BiXTSegmenter, default_feature_layers, load_pretrained_backbone, segment

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_D13 = REPO / "tests" / "data" / "official_keys" / "bixt_ti_l64_d13_p16.json"
D13 = "bixt_ti_l64_d13_p16"
# depth 3: layers 0, 1 refine the tokens, layer 2 is one-sided (as layer 12 of the real d13)
TINY = dict(embed_dim=32, depth=3, num_heads=2, num_latents=8)
TINY5 = dict(TINY, depth=5)  # four token maps for the FPN


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(head="linear", backbone=D13, kwargs=TINY, **extra):
    torch.manual_seed(0)
    return BiXTSegmenter(backbone=backbone, num_classes=5, head=head, backbone_kwargs=kwargs, fpn_dim=32, head_dim=16,
                         **extra)


# --- shapes, strides, gradients -----------------------------------------------------------------------
@pytest.mark.parametrize("head,backbone,kwargs,stride", [
    ("linear", D13, TINY, 16),
    ("linear", "bixt_ti_l64_d13_p16s8", TINY, 8),
    ("semfpn", D13, TINY5, 16),
    ("semfpn", "bixt_ti_l64_d13_p16s8", TINY5, 8),
    # the shrunk config of the brief: 8x8 patches at stride 4
    ("semfpn", D13, dict(embed_dim=64, depth=4, num_heads=2, num_latents=16, patch_size=8, stride=4), 4),
])
def test_shapes_and_gradients(head, backbone, kwargs, stride):
    model = tiny(head, backbone, kwargs)
    assert model.stride == stride
    x = torch.randn(2, 3, 64, 96)
    out = model(x)
    assert out.shape == (2, 5, 64, 96)
    out.square().mean().backward()
    for part in (model.backbone.patch_embed, model.backbone.encoder.blocks[0], model.head):
        grads = [p.grad for p in part.parameters()]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    # every parameter takes part in the loss (DDP refuses parameters without a gradient): the last
    # kept layer updates only its tokens, whose latents nothing reads
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    if head == "semfpn":
        with torch.no_grad():
            levels = model.head.pyramid(model.token_maps(x))
        assert [tuple(t.shape[-2:]) for t in levels] == [(64 // s, 96 // s) for s in (4, 8, 16, 32)]
        assert all(t.shape[:2] == (2, 32) for t in levels)
        with torch.no_grad():
            assert model.forward_head(model.token_maps(x)).shape[-2:] == (16, 24)  # logits at stride 4


def test_odd_token_grids_work_in_the_fpn():
    model = tiny("semfpn", kwargs=TINY5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 80, 48)).shape == (1, 5, 80, 48)  # 5x3 tokens: pools to 2x1


def test_default_feature_layers_and_pruning():
    assert default_feature_layers("semfpn", 12) == [3, 5, 7, 11]
    assert default_feature_layers("linear", 12) == [11]
    assert default_feature_layers("semfpn", 2) == [0, 0, 0, 1]
    model = tiny()
    assert model.feature_layers == [1] and len(model.backbone.encoder.blocks) == 2  # one-sided layer 2 pruned
    assert isinstance(model.backbone.head, nn.Identity)
    fpn = tiny("semfpn", kwargs=TINY5, feature_layers=[0, 1, 1, -2])
    assert fpn.feature_layers == [0, 1, 1, 2] and len(fpn.backbone.encoder.blocks) == 3
    with torch.no_grad():
        assert fpn(torch.randn(1, 3, 32, 32)).shape == (1, 5, 32, 32)
    with pytest.raises(ValueError, match=r"feature_layers \[4\] do not exist.*0\.\.3"):
        tiny("semfpn", kwargs=TINY5, feature_layers=[0, 1, 2, 4])
    with pytest.raises(ValueError, match="reads 4 token map"):
        tiny("semfpn", kwargs=TINY5, feature_layers=[1])
    with pytest.raises(ValueError, match="backbone_kwargs may not set"):
        tiny(kwargs=dict(TINY, drop_path_rate=0.1))
    with pytest.raises(ValueError, match="head must be one of"):
        tiny("upernet")


def test_the_backbone_is_built_as_used_not_pruned_afterwards(monkeypatch):
    """Only the layers up to the last map read, the last one refining its tokens only, no classifier:
    chosen at construction (nothing is removed or rebuilt), with the trained layout's drop-path rates."""
    from bixt.models.bixt_image import BiXT

    def refused(*args, **kwargs):
        raise AssertionError("the segmenter changed its backbone after building it")

    monkeypatch.setattr(BiXT, "prune_intermediate_layers", refused)
    model = tiny("semfpn", kwargs=dict(TINY, depth=6), feature_layers=[0, 1, 1, 2], drop_path_rate=0.1)
    blocks = model.backbone.encoder.blocks
    assert [b.cross.updates for b in blocks] == ["both", "both", "tokens"]
    assert not any(".attn.r_latents" in k or "fc_norm" in k or k.startswith("head.") for k in model.backbone.state_dict())
    # layer i keeps the rate of layer i of the 6-layer backbone as trained: 0.1 * i / 5 (to rounding)
    assert [b.cross.drop_path_tokens.drop_prob for b in blocks[1:]] == pytest.approx([0.02, 0.04], rel=1e-12)
    with pytest.raises(ValueError, match="backbone_kwargs may not set.*last_layer"):
        tiny(kwargs=dict(TINY, last_layer="both"))


def test_size_not_divisible_by_the_stride():
    model = tiny()
    with pytest.raises(ValueError, match=r"image size 72x96 is not divisible by the segmenter's token stride 16; "
                                         r"nearest valid sizes: height 64 or 80, width 96 \(fits\)"):
        model(torch.randn(1, 3, 72, 96))
    with pytest.raises(ValueError, match=r"image size 8x20 .* height 16, width 16 or 32"):
        model(torch.randn(1, 3, 8, 20))


@pytest.mark.parametrize("head", ["linear", "semfpn"])
def test_fx_trace_matches_eager_and_keeps_the_size_check(head):
    from timm.layers import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    model = tiny(head, kwargs=TINY5).eval()
    kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                  param_shapes_constant=True)
    _, nodes = get_graph_node_names(model, tracer_kwargs=kwargs)
    traced = create_feature_extractor(model, return_nodes=[nodes[-1]], tracer_kwargs=kwargs)
    with torch.no_grad():
        for x in (torch.randn(1, 3, 32, 48), torch.randn(2, 3, 80, 64)):  # the graph holds no fixed size
            (out,) = traced(x).values()
            torch.testing.assert_close(out, model(x))
        with pytest.raises(ValueError, match="not divisible"):
            traced(torch.randn(1, 3, 40, 48))


def test_timm_passthroughs():
    model = tiny()
    groups = model.group_matcher()
    assert re.match(groups["blocks"], "backbone.encoder.blocks.1.cross.attn.proj_latents.weight")
    assert not any(re.match(p, "head.classifier.weight") for p in groups.values())
    assert model.no_weight_decay() == set()


# --- whole and sliding-window inference ------------------------------------------------------------------
class PointwiseStub(nn.Module):
    """Per-pixel logits (translation-equivariant), recording the windows it saw."""

    stride = 16

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.sizes = []

    def forward(self, x):
        assert x.shape[-2] % self.stride == 0 and x.shape[-1] % self.stride == 0
        self.sizes.append(tuple(x.shape[-2:]))
        return self.conv(x)


def test_whole_inference_at_a_non_divisible_size():
    model = tiny().eval()
    x = torch.randn(1, 3, 70, 100)
    with torch.no_grad():
        out = segment(model, x)
        padded = torch.nn.functional.pad(x, (0, 12, 0, 10))
        expected = model(padded)[..., :70, :100]
    assert out.shape == (1, 5, 70, 100)
    torch.testing.assert_close(out, expected)


def test_slide_with_one_window_equals_whole():
    model = tiny().eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(segment(model, x, mode="slide", crop_size=(64, 96), crop_stride=(32, 48)),
                                   segment(model, x))


@pytest.mark.parametrize("size", [(100, 130), (40, 50)])  # larger than the crop, and smaller (padded)
def test_slide_covers_every_pixel_and_averages(size):
    stub = PointwiseStub()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = segment(stub, x, mode="slide", crop_size=(64, 64), crop_stride=(48, 40))
        # pointwise logits: averaging any windows reproduces them, and a pixel no window covered
        # would be 0 / 0
        torch.testing.assert_close(out, stub.conv(x))
    assert out.shape == (2, 4, *size)
    assert set(stub.sizes) == {(64, 64)}
    expected_windows = {(100, 130): 2 * 3, (40, 50): 1}[size]  # rows 0, 36 (flush); cols 0, 40, 66
    assert len(stub.sizes) == expected_windows


def test_slide_on_the_real_model_has_the_right_shape():
    model = tiny().eval()
    with torch.no_grad():
        out = segment(model, torch.randn(1, 3, 80, 112), mode="slide", crop_size=64, crop_stride=32)
    assert out.shape == (1, 5, 80, 112) and torch.isfinite(out).all()


def test_segment_argument_errors():
    stub = PointwiseStub()
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match="mode must be 'whole' or 'slide'"):
        segment(stub, x, mode="tiles")
    with pytest.raises(ValueError, match="crop_size 60x64 is not divisible by the model's token stride 16"):
        segment(stub, x, mode="slide", crop_size=(60, 64))
    with pytest.raises(ValueError, match="needs crop_size"):
        segment(stub, x, mode="slide")
    with pytest.raises(ValueError, match="exceeds crop_size"):
        segment(stub, x, mode="slide", crop_size=32, crop_stride=48)


# --- pretrained backbones -----------------------------------------------------------------------------------
_TO_OFFICIAL_CROSS = {
    "norm_latents": "norm1_lat", "norm_tokens": "norm1_pat", "attn.rv_tokens": "attn.rv_patches",
    "attn.proj_latents": "attn.proj_lat", "attn.proj_tokens": "attn.proj_pat", "attn.rv_latents": "attn.rv_latents",
    "attn.r_latents": "attn.r_latents", "ls_latents": "ls1_lat", "ls_tokens": "ls1_pat",
    "mlp_norm_latents": "norm2_lat", "mlp_latents": "mlp_lat", "mlp_ls_latents": "ls2_lat",
    "mlp_norm_tokens": "norm2_pat", "mlp_tokens": "mlp_pat", "mlp_ls_tokens": "ls2_pat",
}


def to_official(state, grid=(14, 14)):
    """Our BiXT classifier keys -> the published layout (the inverse of bixt_image's renames)."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"^encoder\.latents$", "latents", key)
        key = re.sub(r"^pos_embed\.proj\.", "fourier_pos_encode.token_projection.", key)
        key = re.sub(r"^encoder\.blocks\.(\d+)\.latent_attn\.", r"blocks.\1.self_attention_latents.", key)
        match = re.match(r"^encoder\.blocks\.(\d+)\.cross\.(.+)$", key)
        if match:
            inner = match.group(2)
            theirs = next((t + inner[len(o):] for o, t in _TO_OFFICIAL_CROSS.items() if inner.startswith(o + ".")),
                          None)
            if theirs is None:
                raise KeyError(f"no official name for {key}")
            key = f"blocks.{match.group(1)}.cross_attention_latents_token.{theirs}"
        out[key] = value
    out["fourier_pos_encode.pos"] = torch.randn(64, *grid)  # the official buffer for a 224 input
    return out


def official_zip(tmp_path, classifier, name=D13, grid=(14, 14)):
    """A published-style weight file: zip holding <name>/model_best.pth.tar, a training checkpoint."""
    weights = {"module." + k: v for k, v in to_official(classifier.state_dict(), grid).items()}
    ckpt = {"epoch": 299, "state_dict": weights, "optimizer": {"state": {}, "param_groups": []},
            "args": argparse.Namespace(model=name, lr=1e-3), "version": 2}
    inner = tmp_path / "model_best.pth.tar"
    torch.save(ckpt, inner)
    path = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(inner, f"{name}/model_best.pth.tar")
    return path


def tiny_classifier(**kwargs):
    torch.manual_seed(1)
    return timm.create_model(D13, num_classes=10, **{**TINY, **kwargs})


def test_official_conversion_helper_is_right():
    from bixt.weights import load_weights

    source = tiny_classifier()
    target = tiny_classifier(drop_rate=0.0)
    nn.init.zeros_(target.encoder.latents)
    load_weights(target, to_official(source.state_dict()))  # strict: every official key used
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_tiny_official_zip_loads_into_the_segmenter(tmp_path, caplog):
    source = tiny_classifier()
    path = official_zip(tmp_path, source)
    with caplog.at_level("INFO", logger="bixt.models.segmentation"):
        model = tiny(pretrained=path)
    report = model.load_report
    backbone = model.backbone.state_dict()
    assert report.loaded == report.total == len(backbone)
    for key, value in backbone.items():
        assert torch.equal(value, source.state_dict()[key]), key
    assert sorted(report.dropped["classifier"]) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    layer2 = report.dropped["layer 2 (one-sided, not used for dense prediction)"]
    assert layer2 and all(k.startswith("encoder.blocks.2.") for k in layer2)
    text = str(report)
    assert f"loaded {len(backbone)} of {len(backbone)} backbone tensors from {path}" in text
    assert "classifier: 4 tensors" in text and "layer 2 (one-sided, not used for dense prediction)" in text
    assert "linear decode head starts from random init" in text
    assert text in caplog.text
    # the decode head is untouched by the load: as a fresh model's
    assert torch.equal(model.head.classifier.weight, tiny().head.classifier.weight)


def test_our_own_checkpoints_load(tmp_path):
    source = tiny_classifier()
    bare = tmp_path / "bixt.pth"
    torch.save(source.state_dict(), bare)
    report = load_pretrained_backbone(tiny(), bare)
    assert report.loaded == report.total and "classifier" in report.dropped
    # an engine checkpoint of a whole segmenter: its backbone.* tensors, the decode head not taken
    trained = tiny(pretrained=bare)
    with torch.no_grad():
        trained.head.classifier.weight.fill_(0.5)
    engine = tmp_path / "last.pth"
    torch.save({"state_dict": trained.state_dict(), "epoch": 3, "optimizer": {}}, engine)
    fresh = tiny()
    report = load_pretrained_backbone(fresh, engine)
    assert report.loaded == report.total
    assert torch.equal(fresh.backbone.encoder.latents, source.encoder.latents)
    assert not torch.equal(fresh.head.classifier.weight, trained.head.classifier.weight)
    assert any("decode head" in reason for reason in report.dropped)


def test_wrong_checkpoints_are_refused(tmp_path):
    wide = official_zip(tmp_path, tiny_classifier(embed_dim=48), name="bixt_ti_l64_d13_p16")
    with pytest.raises(RuntimeError, match=rf"{re.escape(str(wide))} does not fit the backbone.*shape mismatches.*"
                                           r"seems to be for: model 'bixt_ti_l64_d13_p16'.*embed dim 48"):
        tiny(pretrained=wide)
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7)}, other)
    with pytest.raises(RuntimeError, match=rf"{re.escape(str(other))}: none of its 1 tensors"):
        load_pretrained_backbone(tiny(), other)
    # a 12-layer classifier (one-sided last layer) into a 13-layer backbone: layer 11 would stay at init
    d12 = tmp_path / "d12.pth"
    torch.save(to_official(tiny_classifier(depth=2).state_dict()), d12)
    with pytest.raises(RuntimeError, match=r"lacks .* tensors.*2 layers \(last one-sided\)"):
        load_pretrained_backbone(tiny(), d12)
    with pytest.raises(FileNotFoundError, match="nowhere.zip"):
        tiny(pretrained=tmp_path / "nowhere.zip")


def test_a_stride_8_file_is_refused_by_a_stride_16_backbone(tmp_path):
    # every tensor has the same shape at stride 8 and 16; the file's 224 px position grid and its
    # args tell them apart
    s8 = official_zip(tmp_path, tiny_classifier(), name="bixt_ti_l64_d13_p16s8", grid=(28, 28))
    with pytest.raises(RuntimeError, match=r"token stride 8, but this model has token stride 16.*pick the variant "
                                           r"with stride 8.*seems to be for: model 'bixt_ti_l64_d13_p16s8'"):
        tiny(pretrained=s8)
    model = tiny(backbone="bixt_ti_l64_d13_p16s8", pretrained=s8)  # the matching variant takes it
    assert model.load_report.loaded == model.load_report.total


@pytest.fixture(scope="module")
def full_d13():
    """The real-size d13 segmenter, built once (15 M parameters)."""
    return BiXTSegmenter(backbone=D13, num_classes=150)


def test_real_official_d13_key_list_loads_completely(full_d13, tmp_path):
    info = json.loads(OFFICIAL_D13.read_text())
    torch.manual_seed(0)
    state = {k: torch.randn(shape) for k, shape, _ in info["entries"]}
    assert sum(v.numel() for k, v in state.items() if k != "fourier_pos_encode.pos") == 16_381_672
    path = tmp_path / "bixt_ti_l64_d13_p16.pth.tar"
    torch.save({"state_dict_ema": state}, path)
    report = load_pretrained_backbone(full_d13, path)
    assert report.loaded == report.total == len(full_d13.backbone.state_dict()) and not report.missing
    filled = full_d13.backbone.state_dict()
    assert torch.equal(filled["encoder.latents"], state["latents"])
    assert torch.equal(filled["encoder.blocks.11.cross.attn.rv_tokens.weight"],
                       state["blocks.11.cross_attention_latents_token.attn.rv_patches.weight"])
    assert torch.equal(filled["pos_embed.proj.weight"], state["fourier_pos_encode.token_projection.weight"])
    layer12 = [k for k in state if k.startswith("blocks.12.")]
    assert len(report.dropped["layer 12 (one-sided, not used for dense prediction)"]) == len(layer12) == 28
    assert len(report.dropped["classifier"]) == 4
    assert "layer 12 (one-sided, not used for dense prediction): 28 tensors" in str(report)
    assert len(full_d13.backbone.encoder.blocks) == 12


# --- the benchmark ------------------------------------------------------------------------------------------
def test_bench_semseg_smoke(capsys, monkeypatch):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_semseg

    threads = torch.get_num_threads()
    try:
        report = bench_semseg.main(["--smoke", "--size", "64", "--rounds", "1", "--quick", "--no-memory",
                                    "--threads", "1", "--default-allocator"])
        bench_semseg._memory_worker([bench_semseg.CONFIGS[1].key], 32, 1, "fp32", smoke=True)
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    for config in bench_semseg.CONFIGS:
        assert f"| {config.key} " in report["table"], config.key
        assert report["models"][config.key]["status"] == "ok"
        assert report["models"][config.key]["img_per_s_median"] > 0
    assert report["table"] in printed and printed.startswith("# bixt semseg dense forward: ")
    row = json.loads(printed.strip().splitlines()[-1])
    assert row["results"][bench_semseg.CONFIGS[1].key]["peak_mb_per_image"] >= 0


def test_a_seed_gives_the_segmenter_the_first_layers_of_the_backbone_as_trained():
    """The initial weights are drawn as the full backbone draws them (so a seed gives the same model,
    and the same random stream afterwards, as before the layers were chosen at construction)."""
    kwargs = dict(embed_dim=32, depth=5, num_heads=2, num_latents=8)
    torch.manual_seed(0)
    full = timm.create_model("bixt_ti_l64_p16", num_classes=0, dynamic_img_size=True, drop_path_rate=0.1, **kwargs)
    torch.manual_seed(0)
    model = BiXTSegmenter(backbone="bixt_ti_l64_p16", num_classes=3, head="semfpn", feature_layers=[0, 1, 1, 2],
                          drop_path_rate=0.1, backbone_kwargs=kwargs)
    reference = full.state_dict()
    backbone = model.backbone.state_dict()
    assert len(model.backbone.encoder.blocks) == 3 and len(backbone) < len(reference)
    for key, value in backbone.items():
        assert torch.equal(value, reference[key]), key
