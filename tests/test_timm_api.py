"""timm's model interfaces on every registered BiXT image model (tiny variants): the feature API
(forward_intermediates, feature_info, features_only, prune_intermediate_layers), torch.fx tracing as
timm tests its models, torch.export and ONNX through onnxruntime."""
from __future__ import annotations

import warnings

import pytest
import timm
import torch

import bixt  # noqa: F401  (registers the models)

TINY = dict(depth=3, embed_dim=32, num_heads=2, num_latents=8, num_classes=5, img_size=32)
NAMES = timm.list_models("bixt_*")


def tiny(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, **{**TINY, **kwargs}).eval()
    with torch.no_grad():  # a zero-initialised head would hide wrong features behind zero logits
        torch.nn.init.normal_(model.head.weight, std=0.1)
    return model


def architecture(model) -> tuple:
    """What still tells the tiny variants apart once depth and widths are fixed."""
    return (type(model.patch_embed).__name__, model.patch_embed.stride, model.dynamic_img_size,
            any("gamma" in k for k in model.state_dict()))


# One model per distinct tiny architecture for the slower exports; every name maps onto one of them.
def meta_architecture(name: str) -> tuple:
    with torch.device("meta"):
        return architecture(timm.create_model(name, **TINY))


ARCHITECTURES: dict[tuple, str] = {}
for _name in NAMES:
    ARCHITECTURES.setdefault(meta_architecture(_name), _name)


def images(batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def _architecture_from_name(name: str) -> tuple:
    """What a name says, read from its text alone (``cnv``/``conv``: convolutional tokeniser; ``pXsY``:
    stride Y, else X; ``_ft384``: positions computed for any size; ``LS``: LayerScale gammas)."""
    import re

    patch = re.search(r"_p(\d+)(?:s(\d+))?", name)
    stride = int(patch.group(2) or patch.group(1))
    conv = "_cnv_" in name or name.startswith("bixt_conv_")
    return ("ConvTokenizer" if conv else "PatchTokenizer", stride, name.endswith("_ft384"), "LS_" in name)


def test_the_export_set_covers_every_registered_name():
    from pathlib import Path

    # independent of the registry: the official checkpoints' key files, and the published file
    # names the conv-tokeniser models also answer to
    official = {p.stem for p in (Path(__file__).parent / "data" / "official_keys").glob("bixt_*.json")}
    aliases = {n.replace("bixt_ti_cnv_", "bixt_conv_ti_") for n in official if n.startswith("bixt_ti_cnv_")}
    assert len(official) == 24 and set(NAMES) == official | aliases
    # every name builds the architecture its name says, and the exports run one model of each
    assert {n: meta_architecture(n) for n in NAMES} == {n: _architecture_from_name(n) for n in NAMES}
    assert set(ARCHITECTURES) == {_architecture_from_name(n) for n in official}


# --------------------------------------------------------------------------------- feature API
def test_forward_intermediates_returns_the_refined_token_maps():
    model = tiny("bixt_ti_l64_d13_p16s8")  # depth 3 here: layers 0, 1 refine tokens, layer 2 is one-sided
    assert [f["module"] for f in model.feature_info] == ["encoder.blocks.0", "encoder.blocks.1"]
    assert {f["num_chs"] for f in model.feature_info} == {32} and {f["reduction"] for f in model.feature_info} == {8}
    x = images()
    with torch.no_grad():
        latents, maps = model.forward_intermediates(x)
        # the same maps by hand: layer by layer through the encoder
        tokens, lat = model.tokenize(x), model.encoder.latents.expand(2, -1, -1)
        expected = []
        for block in model.encoder.blocks:
            lat, tokens, _ = block(lat, tokens)
            expected.append(tokens)
        nlc = model.forward_intermediates(x, indices=[-1], output_fmt="NLC", intermediates_only=True)
        normed = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
    torch.testing.assert_close(latents, model.forward_features(x))
    assert [m.shape for m in maps] == [(2, 32, 4, 4)] * 2
    torch.testing.assert_close(maps[0].flatten(2).transpose(1, 2), expected[0])
    torch.testing.assert_close(maps[1][:, :, 1, 2], expected[1][:, 1 * 4 + 2])  # row-major grid
    torch.testing.assert_close(nlc[0], expected[1])
    torch.testing.assert_close(normed[0].mean(dim=1), torch.zeros(2, 4, 4), atol=1e-5, rtol=0)


def test_features_only_through_timms_feature_wrapper():
    model = timm.create_model("bixt_ti_l64_d13_p16", features_only=True, out_indices=(0, 1), **TINY)
    assert model.feature_info.channels() == [32, 32] and model.feature_info.reduction() == [16, 16]
    assert len(model.model.encoder.blocks) == 2  # pruned after the last layer asked for
    assert isinstance(model.model.head, torch.nn.Identity)
    reference = tiny("bixt_ti_l64_d13_p16")
    x = images()
    with torch.no_grad():
        model.model.load_state_dict(reference.state_dict(), strict=False)
        feats = model(x)
        expected = reference.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    assert [f.shape for f in feats] == [(2, 32, 2, 2)] * 2
    for a, b in zip(feats, expected):
        torch.testing.assert_close(a, b)
    default = timm.create_model("bixt_ti_l64_d13_p16", features_only=True, **{**TINY, "depth": 6})
    assert default.feature_info.module_name() == [f"encoder.blocks.{i}" for i in (2, 3, 4)]


def test_prune_intermediate_layers_keeps_what_was_asked_for():
    model = tiny("bixt_ti_l64_p16", depth=5)
    assert model.prune_intermediate_layers([0, -2]) == [0, 2]
    assert len(model.encoder.blocks) == 3 and model.num_classes == 0
    maps = model.forward_intermediates(images(), indices=[0, 2], intermediates_only=True)
    assert len(maps) == 2


@pytest.mark.parametrize("ask, match", [
    (dict(indices=[2]), r"layer\(s\) \[2\].*token maps after layers 0..1; layer 2 is one-sided"),
    (dict(indices=[7]), r"layer\(s\) \[7\].*0..1"),
    (dict(indices=[-3]), r"layer\(s\) \[-3\]"),
    (dict(indices=3), r"last 3 token maps.*0..1"),
    (dict(output_fmt="NHWC"), "output_fmt must be 'NCHW' or 'NLC'"),
])
def test_feature_requests_that_do_not_exist_are_clear_errors(ask, match):
    with pytest.raises(ValueError, match=match):
        tiny("bixt_ti_l64_p16").forward_intermediates(images(), **ask)


def test_features_only_errors_name_the_layer_and_the_input_size():
    with pytest.raises(ValueError, match="layer 2 is one-sided"):
        timm.create_model("bixt_ti_l64_p16", features_only=True, out_indices=(2,), **TINY)
    model = timm.create_model("bixt_ti_l64_p16", features_only=True, out_indices=(1,), **TINY)
    with pytest.raises(ValueError, match="this model takes 32x32 images, got 48x48"):
        model(images(size=48))


# --------------------------------------------------------------------------------- torch.fx
def _fx_model(model: torch.nn.Module, train: bool = False) -> torch.nn.Module:
    """The traced model as timm's own test suite builds it: torchvision's feature extractor with
    timm's leaf modules and autowrapped functions, returning the model's output node(s)."""
    from timm.layers import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import NodePathTracer, create_feature_extractor, get_graph_node_names

    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    train_return, eval_return = [train_nodes[-1]], [eval_nodes[-1]]
    if train:
        graph_nodes = list(reversed(NodePathTracer(**tracer_kwargs).trace(model).nodes))
        names = [n.name for n in graph_nodes]
        train_return = [train_nodes[-names.index(n.name)] for n in graph_nodes[0]._input_nodes]
    return create_feature_extractor(model, train_return_nodes=train_return, eval_return_nodes=eval_return,
                                    tracer_kwargs=tracer_kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_fx_trace_forward_and_backward(name):
    model, x = tiny(name), images()
    traced = _fx_model(model)
    with torch.no_grad():
        (out,) = traced(x).values()
        torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)
    model.train()
    (out,) = _fx_model(model, train=True)(x).values()
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


# --------------------------------------------------------------------------------- export
@pytest.mark.parametrize("name", sorted(ARCHITECTURES.values()))
def test_torch_export_matches_eager(name):
    model, x = tiny(name), images()
    with torch.no_grad():
        expected = model(x)  # an eager forward first: its inference caches must not leak into the export
        exported = torch.export.export(model, (x,)).module()
        torch.testing.assert_close(exported(x), expected, rtol=1e-5, atol=1e-5)
    if model.dynamic_img_size:
        larger = images(size=48)
        with torch.no_grad():
            relarge = torch.export.export(model, (larger,)).module()
            torch.testing.assert_close(relarge(larger), model(larger), rtol=1e-5, atol=1e-5)


def _onnx_run(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path) -> list:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")  # torch.onnx's exporter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, dynamo=True, verbose=False).save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {arg.name: value.numpy() for arg, value in zip(session.get_inputs(), inputs)}
    return [torch.from_numpy(out) for out in session.run(None, feeds)]


@pytest.mark.parametrize("name", sorted(ARCHITECTURES.values()))
def test_onnx_export_runs_in_onnxruntime_within_1e4(name, tmp_path):
    model, x = tiny(name), images()
    (logits,) = _onnx_run(model, (x,), tmp_path / f"{name}.onnx")
    with torch.no_grad():
        expected = model(x)
    assert logits.shape == expected.shape
    assert (logits - expected).abs().max() <= 1e-4


def test_padding_masked_encoder_exports(tmp_path):
    encoder = bixt.BiXTEncoder(dim=32, depth=2, num_latents=8, num_heads=2).eval()
    tokens = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    with torch.no_grad():
        expected = encoder(tokens, mask)
        exported = torch.export.export(encoder, (tokens, mask)).module()(tokens, mask)
    for got, want in zip(exported, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for got, want in zip(_onnx_run(encoder, (tokens, mask), tmp_path / "encoder.onnx"), expected):
        assert (got - want).abs().max() <= 1e-4
    assert not expected[1][1, 5:].any()  # padded positions come out zeroed
