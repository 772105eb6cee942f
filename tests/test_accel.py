"""bixt.accel.optimize: the opt-in eager CPU inference copy, its capability checks and fallbacks."""
from __future__ import annotations

import copy
import pickle

import pytest
import timm
import torch

import bixt  # noqa: F401  (registers the models)
from bixt import accel

TINY = dict(depth=2, embed_dim=32, num_heads=2, num_latents=8, num_classes=5, img_size=32)


def tiny_model(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("bixt_ti_l64_d13_p16s8", **{**TINY, **kwargs}).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.head.weight, std=0.1)
    return model


def images(batch: int) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))


@pytest.mark.parametrize("forced_off", [False, True], ids=["this-cpu", "kernels-forced-off"])
def test_optimized_copy_matches_the_plain_model_at_every_batch_size(forced_off):
    model = tiny_model()
    with accel.cpu_kernels_forced_off("fp32") if forced_off else torch.no_grad():
        fast = accel.optimize(model)
        with torch.no_grad():
            for batch in (1, 3, 2, 5, 3, 7):  # one packed weight serves every row count
                torch.testing.assert_close(fast(images(batch)), model(images(batch)), rtol=1e-5, atol=1e-6)
            again = copy.deepcopy(fast)  # after use: holds a packed oneDNN tensor, which has no storage
            torch.testing.assert_close(again(images(2)), model(images(2)), rtol=1e-5, atol=1e-6)
            other = tiny_model()
            other.head.weight.mul_(2.0)
            restored = accel.optimize(other)
            restored(images(3))  # packed from the other weights, then loaded over: must repack
            restored.load_state_dict(pickle.loads(pickle.dumps(fast.state_dict())))
            torch.testing.assert_close(restored(images(3)), model(images(3)), rtol=1e-5, atol=1e-6)
    swapped = {type(m).__name__ for m in fast.modules()}
    assert {"PackedMlp", "PackedLinear"} <= swapped and "Linear" not in swapped
    assert not any(p.requires_grad for p in fast.parameters())
    assert all(type(m) is not accel.PackedLinear for m in model.modules())  # the original is untouched


def test_optimized_copy_is_a_snapshot_and_falls_back_outside_fp32_inference():
    model = tiny_model()
    fast = accel.optimize(model)
    x = images(2)
    with torch.no_grad():
        before = model(x)
        for p in model.parameters():
            p.add_(0.01)
        torch.testing.assert_close(fast(x), before, rtol=1e-5, atol=1e-6)  # documented: optimize again
        torch.testing.assert_close(accel.optimize(model)(x), model(x), rtol=1e-5, atol=1e-6)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # plain autocast, as the plain model runs it
            torch.testing.assert_close(accel.optimize(model)(x), model(x), rtol=0, atol=0)
    with torch.enable_grad():
        torch.testing.assert_close(accel.optimize(model)(x), model(x), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"call model.eval\(\) before optimizing"):
        accel.optimize(model.train())


def test_long_inputs_run_the_mlp_in_equal_row_chunks(monkeypatch):
    mlp = timm.layers.Mlp(16, 64).eval()
    x = torch.randn(3, 7, 16)
    packed = accel.PackedMlp(mlp)
    with torch.no_grad():
        whole = mlp(x)
        monkeypatch.setattr(accel, "MLP_CHUNK_ROWS", 4)  # 21 rows -> 6 chunks of 4 (the last: 1)
        torch.testing.assert_close(packed(x), whole, rtol=1e-6, atol=1e-6)
    assert packed(x).shape == (3, 7, 16)


def test_cpu_kernel_probe_treats_a_refusing_kernel_as_missing(monkeypatch):
    def refuse(*args, **kwargs):  # what oneDNN says on an AVX2-only CPU
        raise RuntimeError("mkldnn_reorder_linear_weight: bf16 path needs the cpu support avx_ne_convert or "
                           "avx512bw, avx512vl and avx512dq")

    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", refuse)
    assert accel.probe_cpu_kernel("bf16") is False and accel.probe_cpu_kernel("fp32") is False
    with pytest.raises(ValueError, match="kind must be one of"):
        accel.cpu_kernel_available("int8")
    with accel.cpu_kernels_forced_off("fp32", "bf16"):
        assert not accel.cpu_kernel_available("fp32") and not accel.cpu_kernel_available("bf16")
        with accel.cpu_kernels_forced_off("fp32"):  # nested: leaving the inner block keeps the outer one
            pass
        assert not accel.cpu_kernel_available("fp32")
    monkeypatch.undo()
    assert accel.cpu_kernel_available("fp32") == accel.probe_cpu_kernel("fp32")
    assert accel.cpu_kernel_available("bf16") == accel.probe_cpu_kernel("bf16")


def test_packed_copies_follow_device_and_dtype_moves():
    layer = accel.PackedLinear(torch.nn.Linear(8, 4))
    x = torch.randn(3, 8)
    with torch.no_grad():
        layer(x)
        layer.double()  # the fp32 packed copy must not be used for, or survive, another dtype
        torch.testing.assert_close(layer(x.double()), torch.nn.functional.linear(x.double(), layer.weight, layer.bias))
        layer.float()
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))


def test_optimized_copy_follows_in_place_edits_of_its_own_weights():
    # issue 25: edits in place (or through .data / numpy) left the packed copy on the old weights
    model = tiny_model()
    fast = accel.optimize(model)
    x = images(3)
    with torch.no_grad():
        fast(x)  # packs every linear
        edits = (lambda m: m.head.weight.mul_(2.0),
                 lambda m: m.head.bias.add_(1.0),
                 lambda m: m.encoder.blocks[0].cross.mlp_latents.fc1.weight.data.add_(0.05),
                 lambda m: m.encoder.blocks[1].cross.mlp_latents.fc2.weight.numpy().__imul__(0.5))
        for edit in edits:
            edit(model)
            edit(fast)
            torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)
