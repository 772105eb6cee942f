"""CUDA correctness (skipped without a GPU; `benchmarks/cuda_check.py` runs these first): the
model on the GPU against the CPU, bf16 autocast, torch.compile, padding masks checked on the
device."""
from __future__ import annotations

import pytest
import timm
import torch

import bixt  # noqa: F401  (registers the models)
from bixt import BiXTEncoder

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TINY = dict(depth=2, embed_dim=32, num_heads=2, num_latents=8, num_classes=5, img_size=32)


def tiny_pair():
    torch.manual_seed(0)
    cpu = timm.create_model("bixt_ti_l64_d13_p16s8", **TINY).eval()
    with torch.no_grad():
        torch.nn.init.normal_(cpu.head.weight, std=0.1)
    gpu = timm.create_model("bixt_ti_l64_d13_p16s8", **TINY).eval().cuda()
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu


def test_forward_and_gradients_match_the_cpu():
    cpu, gpu = tiny_pair()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x), rtol=1e-4, atol=1e-4)
    cpu.train(), gpu.train()
    cpu(x).square().mean().backward()
    gpu(x.cuda()).square().mean().backward()
    for (name, p), q in zip(cpu.named_parameters(), gpu.parameters()):
        torch.testing.assert_close(q.grad.cpu(), p.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_bf16_autocast_stays_within_two_percent():
    cpu, gpu = tiny_pair()
    x = torch.randn(4, 3, 32, 32).cuda()
    with torch.no_grad():
        reference = gpu.forward_features(x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = gpu.forward_features(x).float()
    assert (low - reference).abs().max() / reference.abs().max() < 2e-2


def test_compiled_matches_eager():
    _, gpu = tiny_pair()
    x = torch.randn(4, 3, 32, 32).cuda()
    compiled = torch.compile(gpu)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), gpu(x), rtol=1e-4, atol=1e-4)


def test_masked_encoder_on_the_device():
    encoder = BiXTEncoder(dim=32, depth=2, num_latents=8, num_heads=2).cuda().eval()
    tokens = torch.randn(2, 9, 32, device="cuda")
    mask = torch.ones(2, 9, dtype=torch.bool, device="cuda")
    mask[1, 5:] = False
    with torch.no_grad():
        latents, out = encoder(tokens, mask)
        alone, _ = encoder(tokens[1:, :5])
    torch.testing.assert_close(latents[1:], alone, rtol=1e-4, atol=1e-4)  # padding is invisible
    assert not out[1, 5:].any()


def test_all_padding_sample_fails_on_the_device():
    # checked on the device (no host sync per step); a device-side assert ends the CUDA context,
    # so it runs in a process of its own
    import subprocess
    import sys

    code = ("import torch; from bixt import BiXTEncoder\n"
            "enc = BiXTEncoder(dim=32, depth=1, num_latents=4, num_heads=2).cuda()\n"
            "mask = torch.zeros(2, 5, dtype=torch.bool, device='cuda'); mask[1] = True\n"
            "enc(torch.randn(2, 5, 32, device='cuda'), mask); torch.cuda.synchronize()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "padding" in proc.stderr


def test_semseg_evaluator_accumulates_on_the_device_without_a_host_sync():
    from bixt.metrics.semseg import SemSegEvaluator, confusion_matrix

    torch.manual_seed(0)
    logits = torch.randn(2, 4, 16, 16)
    labels = torch.randint(0, 4, (2, 16, 16))
    labels[0, :2] = 255  # ignored pixels
    reference = confusion_matrix(logits.argmax(1), labels, num_classes=4)
    evaluator = SemSegEvaluator(num_classes=4, class_names=list("abcd"))
    gpu_logits, gpu_labels = logits.cuda(), labels.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any op that waits for the device raises
    try:
        evaluator.update(gpu_logits, {"labels": gpu_labels})
        state = evaluator.state()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert state["confusion"].is_cuda and torch.equal(state["confusion"].cpu(), reference)
    assert int(state["invalid_labels"]) == 0


def test_segmenter_on_the_device_matches_the_cpu_and_runs_bf16():
    from bixt.models.segmentation import BiXTSegmenter, segment

    kwargs = dict(backbone="bixt_ti_l64_d13_p16", num_classes=5, head="semfpn", fpn_dim=16, head_dim=16,
                  backbone_kwargs=dict(embed_dim=32, depth=3, num_heads=2, num_latents=8, patch_size=8, stride=8))
    torch.manual_seed(0)
    cpu = BiXTSegmenter(**kwargs).eval()
    gpu = BiXTSegmenter(**kwargs).eval().cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        expected = segment(cpu, x)
        torch.testing.assert_close(segment(gpu, x.cuda()).cpu(), expected, rtol=1e-3, atol=1e-3)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = segment(gpu, x.cuda(), mode="slide", crop_size=32, crop_stride=16).float().cpu()
    assert low.shape == expected.shape and torch.isfinite(low).all()
