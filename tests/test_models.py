"""Image classifiers: golden equality with the official model, official key layouts, checkpoint formats."""
import argparse
import json
import zipfile
from pathlib import Path

import pytest
import timm
import torch

import bixt  # noqa: F401  (registers the models)
from bixt.weights import load_weights, read_state_dict, save_safetensors
from bixt.models import BiXT

DATA = Path(__file__).parent / "data"
OFFICIAL = sorted((DATA / "official_keys").glob("*.json"))
TINY = dict(depth=2, embed_dim=32, num_heads=2, num_latents=8, num_classes=5, img_size=32)


@pytest.fixture(scope="module")
def golden():
    return torch.load(DATA / "bixt_ti_l64_p16.pt", weights_only=True)


def _golden_model(golden):
    model = timm.create_model("bixt_ti_l64_p16", **golden["kwargs"]).eval()
    load_weights(model, golden["state_dict"])
    return model


def test_golden_outputs(golden):
    model = _golden_model(golden)
    x = golden["input"]
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        logits = model(x)
    assert (features - golden["features"]).abs().max() <= 1e-5
    assert (pre_logits - golden["pre_logits"]).abs().max() <= 1e-5
    assert (logits - golden["logits"]).abs().max() <= 1e-5
    with torch.no_grad():
        logits64 = model.double()(x.double())
    assert (logits64 - golden["logits_fp64"]).abs().max() <= 1e-10


def test_golden_pos_encoding_and_tokens(golden):
    model = _golden_model(golden)
    with torch.no_grad():
        tokens = model.tokenize(golden["input"])
    torch.testing.assert_close(tokens, golden["intermediates"]["encoded_patches"], atol=1e-5, rtol=0)
    torch.testing.assert_close(model.pos_embed.features, golden["state_dict"]["fourier_pos_encode.pos"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("spec", OFFICIAL, ids=lambda p: p.stem)
def test_official_layout_loads(spec):
    info = json.loads(spec.read_text())
    model = timm.create_model(info["name"])
    assert sum(p.numel() for p in model.parameters()) == info["num_params"]
    torch.manual_seed(0)
    state = {k: torch.randn(shape).to(getattr(torch, dtype)) if shape else torch.tensor(3)
             for k, shape, dtype in info["entries"]}
    load_weights(model, state)  # strict: every key used, every parameter filled
    filled = dict(model.named_parameters())
    assert torch.equal(filled["encoder.latents"], state["latents"])
    assert torch.equal(filled["head.weight"], state["head.weight"])
    last = f"blocks.{info['depth'] - 1}.cross_attention_latents_token.attn.rv_patches.weight"
    assert torch.equal(filled[f"encoder.blocks.{info['depth'] - 1}.cross.attn.rv_tokens.weight"], state[last])


def test_conv_alias_names():
    a = timm.create_model("bixt_conv_ti_l64_p16", **TINY)
    b = timm.create_model("bixt_ti_cnv_l64_p16", **TINY)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert a.pretrained_cfg["first_conv"] == "patch_embed.proj.0.0"


def _official_training_checkpoint(golden):
    weights = {"module." + k: v for k, v in golden["state_dict"].items()}
    return {"epoch": 799, "state_dict": weights, "optimizer": {"state": {}, "param_groups": []},
            "args": argparse.Namespace(model="bixt_ti_l64_p16", lr=2.5e-3), "version": 2}


@pytest.mark.parametrize("form", ["pth.tar", "zip", "ema", "model", "plain", "safetensors"])
def test_checkpoint_forms_round_trip(golden, tmp_path, form):
    ckpt = _official_training_checkpoint(golden)
    path = tmp_path / "model_best.pth.tar"
    if form == "ema":  # the EMA holds the golden weights, the raw weights are something else
        ckpt["state_dict_ema"] = ckpt["state_dict"]
        ckpt["state_dict"] = {k: torch.zeros_like(v) for k, v in ckpt["state_dict"].items()}
    elif form == "model":
        ckpt = {"model": ckpt["state_dict"]}
    elif form == "plain":
        ckpt = golden["state_dict"]
    torch.save(ckpt, path)
    if form == "zip":
        with zipfile.ZipFile(tmp_path / "bixt_ti_l64_p16.zip", "w") as archive:
            archive.write(path, "bixt_ti_l64_p16/model_best.pth.tar")
        path = tmp_path / "bixt_ti_l64_p16.zip"
    model = timm.create_model("bixt_ti_l64_p16", **golden["kwargs"]).eval()
    load_weights(model, path, use_ema=(form == "ema"))
    if form == "safetensors":
        path = tmp_path / "w.safetensors"
        save_safetensors(model, path)
        model = timm.create_model("bixt_ti_l64_p16", **golden["kwargs"]).eval()
        load_weights(model, path)
    with torch.no_grad():
        assert (model(golden["input"]) - golden["logits"]).abs().max() <= 1e-5


def test_use_ema_without_ema_weights_is_an_error(golden, tmp_path):
    path = tmp_path / "model_best.pth.tar"
    torch.save(_official_training_checkpoint(golden), path)
    model = timm.create_model("bixt_ti_l64_p16", **golden["kwargs"])
    with pytest.raises(KeyError, match="no EMA weights"):
        load_weights(model, path, use_ema=True)


@pytest.mark.parametrize("suffix", ["pth.tar", "zip"])
def test_timm_pretrained_file(golden, tmp_path, suffix):
    path = tmp_path / "model_best.pth.tar"
    torch.save(_official_training_checkpoint(golden), path)
    if suffix == "zip":
        with zipfile.ZipFile(tmp_path / "w.zip", "w") as archive:
            archive.write(path, "model_best.pth.tar")
        path = tmp_path / "w.zip"
    model = timm.create_model("bixt_ti_l64_p16", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              **golden["kwargs"]).eval()
    with torch.no_grad():
        assert (model(golden["input"]) - golden["logits"]).abs().max() <= 1e-5
    # another number of classes keeps the backbone and re-initialises the classifier
    kwargs = dict(golden["kwargs"], num_classes=3)
    model = timm.create_model("bixt_ti_l64_p16", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    assert model.head.weight.shape == (3, 96)
    torch.testing.assert_close(model.encoder.latents, golden["state_dict"]["latents"])


def test_ft384_loads_224_checkpoint_and_runs_any_size(golden):
    kwargs = dict(golden["kwargs"])
    model = timm.create_model("bixt_ti_l64_p16_ft384", **kwargs).eval()
    load_weights(model, golden["state_dict"])  # 224 checkpoint with its 14x14 Fourier buffer
    with torch.no_grad():
        assert (model(golden["input"]) - golden["logits"]).abs().max() <= 1e-5  # same maths at 224
        for size in (384, 160, 96):
            assert model(torch.randn(1, 3, size, size)).shape == (1, 10)
    with pytest.raises(ValueError, match="divisible by the token stride 16"):
        model(torch.randn(1, 3, 200, 200))


def test_create_model_overrides_and_timm_interface():
    model = timm.create_model("bixt_ti_l64_p16s8", **TINY)
    assert len(model.encoder.blocks) == 2 and model.encoder.latents.shape == (1, 8, 32)
    assert model.encoder.blocks[-1].cross.one_sided
    x = torch.randn(2, 3, 32, 32)
    features = model.forward_features(x)
    assert features.shape == (2, 8, 32)
    assert model.forward_head(features, pre_logits=True).shape == (2, 32)
    assert model(x).shape == (2, 5)
    model.reset_classifier(0)
    assert model(x).shape == (2, 32)
    model.set_grad_checkpointing(True)
    assert model.encoder.grad_checkpointing
    groups = model.group_matcher()
    assert set(groups) == {"stem", "blocks"}
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["classifier"] == "head" and cfg["first_conv"] == "patch_embed.proj"
    official = timm.create_model("bixt_ti_l64_p16", embed_dim_lat=32, embed_dim_pat=32, embed_dim_attn=32,
                                 sa_num_heads=2, ca_num_heads=2, depth=1, num_classes=2)
    assert official.encoder.dim == 32 and official.encoder.token_dim == 32


def test_weight_decay_groups_follow_official_recipe():
    from timm.optim import create_optimizer_v2

    model = timm.create_model("bixt_ti_l64_p16", **TINY)
    opt = create_optimizer_v2(model, "lambc", lr=1e-3, weight_decay=0.05)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(model.encoder.latents) in decayed
    assert id(model.fc_norm.weight) not in decayed


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.randn(1, 1, 32, 32), r"expected images of shape \(batch, 3, height, width\), got \(1, 1, 32, 32\)"),
        (torch.randn(1, 3, 48, 48), r"takes 32x32 images, got 48x48"),
        (torch.randn(3, 32, 32), r"got \(3, 32, 32\)"),
    ],
)
def test_bad_images(x, match):
    model = timm.create_model("bixt_ti_l64_p16", **TINY)
    with pytest.raises(ValueError, match=match):
        model(x)


def test_checkpoint_for_other_architecture_is_rejected(golden, tmp_path):
    model = timm.create_model("bixt_ti_l64_p16", **dict(golden["kwargs"], depth=2))
    with pytest.raises(RuntimeError, match=r"missing keys: .*unexpected keys: .*encoder\.blocks\.2\."):
        load_weights(model, golden["state_dict"])
    model = timm.create_model("bixt_ti_l64_p16s8", **golden["kwargs"])
    with pytest.raises(RuntimeError, match=r"\(14, 14\) token grid but this model uses \(28, 28\)"):
        load_weights(model, golden["state_dict"])
    model = timm.create_model("bixt_ed256_l64_p16", **dict(golden["kwargs"], embed_dim_lat=120, embed_dim_pat=120, embed_dim_attn=120))
    with pytest.raises(RuntimeError, match=r"shape mismatches: .*encoder\.latents: checkpoint \(1, 64, 96\) vs model \(1, 64, 120\)"):
        load_weights(model, golden["state_dict"])
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        read_state_dict(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="could not read"):
        read_state_dict(tmp_path / "junk.pth")


def test_bad_model_arguments():
    with pytest.raises(TypeError, match="unexpected arguments: \\['bogus'\\]"):
        BiXT(bogus=1)
    with pytest.raises(ValueError, match="stride must be one of"):
        BiXT(stride=5)
    with pytest.raises(ValueError, match="must be even"):
        BiXT(patch_size=7, stride=4, img_size=32)


def test_eval_after_fused_optimizer_steps_matches_a_fresh_copy():
    # fused AdamW updates weights without bumping version counters: no inference cache may go stale
    torch.manual_seed(0)
    kwargs = dict(num_classes=10, img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2, num_latents=8)
    model = timm.create_model("bixt_ti_l64_p16", **kwargs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    for _ in range(2):
        model.train()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        model.eval()
        with torch.no_grad():
            out = model(x)
            fresh = timm.create_model("bixt_ti_l64_p16", **kwargs).eval()
            fresh.load_state_dict(model.state_dict())
            torch.testing.assert_close(out, fresh(x), atol=1e-6, rtol=1e-6)
    # weights changed in eval mode, no mode switch: the version counters must invalidate the caches
    with torch.no_grad():
        model(x)
        for p in model.parameters():
            p.add_(0.01)
        fresh = timm.create_model("bixt_ti_l64_p16", **kwargs).eval()  # a new model: no caches at all
        fresh.load_state_dict(model.state_dict())
        torch.testing.assert_close(model(x), fresh(x), atol=1e-6, rtol=1e-6)
        # and a cache filled under bf16 autocast is not served to an fp32 forward
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(x)
        torch.testing.assert_close(model(x), fresh(x), atol=1e-6, rtol=1e-6)


def test_bf16_autocast_eval_and_training_on_every_cpu(golden):
    # plain autocast on every CPU (AVX2-only ones have no native bf16 GEMM: slower, still correct)
    model, x = _golden_model(golden), golden["input"]
    with torch.no_grad():
        reference = model.forward_features(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features = model.forward_features(x).float()
    assert (features - reference).abs().max() / reference.abs().max() < 2e-2
    assert not torch.equal(features, reference)  # bf16 did run
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(x), torch.arange(x.shape[0]) % 10)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_weights_changed_behind_autograd_show_at_once():
    # hand-written EMA / weight averaging edit .data; fused optimizers skip version counters
    kwargs = dict(num_classes=10, img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2, num_latents=8)
    torch.manual_seed(0)
    model, other = timm.create_model("bixt_ti_l64_p16", **kwargs).eval(), timm.create_model("bixt_ti_l64_p16", **kwargs)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.nn.init.normal_(other.head.weight)  # a zero head would hide stale features behind zero logits
        model(x)
        for p, q in zip(model.parameters(), other.parameters()):
            p.data.copy_(q.data)
        torch.testing.assert_close(model.forward_features(x), other.eval().forward_features(x), rtol=0, atol=0)
        torch.testing.assert_close(model(x), other(x), rtol=0, atol=0)
    model.train()
    torch.nn.functional.cross_entropy(model(x), torch.tensor([1, 2])).backward()
    model.eval()
    with torch.no_grad():
        model(x)
        torch.optim.AdamW(model.parameters(), lr=0.1, fused=True).step()  # no forward in between
        fresh = timm.create_model("bixt_ti_l64_p16", **kwargs).eval()
        fresh.load_state_dict(model.state_dict())
        torch.testing.assert_close(model(x), fresh(x), rtol=0, atol=0)
    with torch.inference_mode():  # built and run under inference mode, as a timm ViT can be
        built = timm.create_model("bixt_ti_l64_p16", **kwargs).eval()
        assert built(x).shape == (2, 10)


def test_every_published_weight_file_has_a_model_of_its_name():
    lines = (DATA / "published_weights.txt").read_text().splitlines()
    names = [line.split()[0].removesuffix(".zip") for line in lines if line.strip() and not line.startswith("#")]
    assert len(names) == 17
    missing = [n for n in names if n not in timm.list_models("bixt_*")]
    assert not missing
    keys = {p.stem for p in OFFICIAL}
    assert len(keys) == 24
    for name in names:  # the published conv files use bixt_conv_ti_*, the key lists bixt_ti_cnv_*
        assert name.replace("bixt_conv_ti_", "bixt_ti_cnv_") in keys


@pytest.mark.parametrize("name", ["bixt_ed256LS_l64_p16s8_ft384", "bixt_ti_l64_d13_p16_ft384",
                                  "bixt_ti_l64_d13_p16s8_ft384"])
def test_new_ft384_names_run_at_384_and_any_grid(name):
    model = timm.create_model(name, depth=2, embed_dim=32, num_heads=2, num_latents=8, num_classes=5).eval()
    assert model.pretrained_cfg["input_size"] == (3, 384, 384) and not model.pretrained_cfg["fixed_input_size"]
    assert model.pos_embed.grid_size is None  # resolution-adaptive positional encoding
    with torch.no_grad():
        assert model(torch.randn(1, 3, 384, 384)).shape == (1, 5)
        assert model(torch.randn(1, 3, 224, 256)).shape == (1, 5)
    if "LS" in name:
        assert model.encoder.blocks[0].cross.ls_latents.gamma.shape == (32,)


def test_a_corrupt_weight_file_inside_a_zip_is_named(tmp_path):
    path = tmp_path / "bixt_ti_l64_p16.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("bixt_ti_l64_p16/model_best.pth.tar", b"not a checkpoint")
    with pytest.raises(RuntimeError, match=r"could not read bixt_ti_l64_p16/model_best.pth.tar inside .*\.zip"):
        read_state_dict(path)
