"""FPS / kNN against brute-force references, padding masks, the point tokenisers and the dense head."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bixt.heads.part_segmentation import PartSegmentationHead, interpolate_to_points
from bixt.models.point import PointSegmenter
from bixt.tokenizers.point import (
    PointGroupTokenizer,
    PointwiseTokenizer,
    farthest_point_sample,
    gather,
    knn,
)


def brute_force_fps(points: np.ndarray, k: int) -> list[int]:
    """Textbook FPS on one cloud: start at point 0, repeatedly take the point farthest from the chosen set."""
    chosen = [0]
    for _ in range(k - 1):
        dist_to_set = np.min(((points[:, None, :] - points[None, chosen, :]) ** 2).sum(-1), axis=1)
        chosen.append(int(np.argmax(dist_to_set)))
    return chosen


def brute_force_knn(query: np.ndarray, points: np.ndarray, k: int) -> np.ndarray:
    out = []
    for q in query:
        d = ((points - q) ** 2).sum(-1)
        out.append(np.argsort(d, kind="stable")[:k])
    return np.stack(out)


def test_fps_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    pos = torch.randn(3, 300, 3, generator=gen, dtype=torch.float64)
    index = farthest_point_sample(pos, 24)
    assert index.shape == (3, 24)
    for b in range(3):
        assert index[b].tolist() == brute_force_fps(pos[b].numpy(), 24)


def test_fps_respects_padding_mask():
    gen = torch.Generator().manual_seed(1)
    pos = torch.randn(2, 200, 3, generator=gen, dtype=torch.float64)
    mask = torch.ones(2, 200, dtype=torch.bool)
    mask[0, :50] = False  # padding first: the start must be the first *real* point
    mask[1, 120:] = False
    pos[~mask] = 100.0  # far away: an unmasked FPS would pick them at once
    index = farthest_point_sample(pos, 40, mask)
    assert bool(mask.gather(1, index).all())
    # Same as running on the real points alone.
    real0 = farthest_point_sample(pos[0:1, 50:], 40)[0] + 50
    real1 = farthest_point_sample(pos[1:2, :120], 40)[0]
    assert index[0].tolist() == real0.tolist()
    assert index[1].tolist() == real1.tolist()
    # Random starts stay on real points and give distinct centres.
    index = farthest_point_sample(pos, 40, mask, random_start=True, generator=torch.Generator().manual_seed(3))
    assert bool(mask.gather(1, index).all())
    assert all(len(set(row)) == 40 for row in index.tolist())


def test_fps_rejects_too_few_points():
    pos = torch.randn(2, 64, 3)
    mask = torch.ones(2, 64, dtype=torch.bool)
    mask[1, 10:] = False
    with pytest.raises(ValueError, match=r"batch index \[1\] have \[10\] real points"):
        farthest_point_sample(pos, 16, mask)
    with pytest.raises(ValueError, match="at least 128"):
        farthest_point_sample(pos, 128)


def test_knn_matches_brute_force_and_chunks():
    gen = torch.Generator().manual_seed(2)
    points = torch.randn(2, 150, 3, generator=gen, dtype=torch.float64)
    query = torch.randn(2, 37, 3, generator=gen, dtype=torch.float64)
    sq, index = knn(query, points, 8, chunk_size=2 * 150 * 5)  # forces 8 chunks of 5 queries
    for b in range(2):
        ref = brute_force_knn(query[b].numpy(), points[b].numpy(), 8)
        assert (index[b].numpy() == ref).all()
        ref_d = ((query[b, :, None] - points[b, ref]) ** 2).sum(-1)
        torch.testing.assert_close(sq[b], ref_d)
    assert bool((sq[..., 1:] >= sq[..., :-1]).all())


def test_knn_never_returns_padded_points():
    gen = torch.Generator().manual_seed(3)
    points = torch.randn(2, 60, 3, generator=gen)
    mask = torch.rand(2, 60, generator=gen) > 0.5
    points[~mask] = 0.0  # padded points sit right on top of the queries
    query = torch.zeros(2, 4, 3)
    _, index = knn(query, points, 5, mask)
    assert bool(mask.gather(1, index.flatten(1)).all())
    with pytest.raises(ValueError, match="nearest-neighbour"):
        knn(query, points, 59, mask)


def test_gather_shapes():
    values = torch.arange(2 * 5 * 3).view(2, 5, 3)
    index = torch.tensor([[[0, 4], [1, 1]], [[2, 3], [4, 0]]])
    out = gather(values, index)
    assert out.shape == (2, 2, 2, 3)
    assert out[1, 0, 1].tolist() == values[1, 3].tolist()


def test_group_tokenizer_masked_clouds_match_unpadded():
    torch.manual_seed(0)
    tok = PointGroupTokenizer(dim=32, num_groups=8, group_size=6, in_features=3, hidden=16).eval()
    small, big = torch.randn(1, 40, 3), torch.randn(1, 64, 3)
    small_n, big_n = torch.randn(1, 40, 3), torch.randn(1, 64, 3)
    pos = torch.cat([torch.cat([small, torch.full((1, 24, 3), 5.0)], 1), big])
    normals = torch.cat([torch.cat([small_n, torch.zeros(1, 24, 3)], 1), big_n])
    mask = torch.ones(2, 64, dtype=torch.bool)
    mask[0, 40:] = False
    out = tok(pos, mask, normals)
    assert out.tokens.shape == (2, 8, 32) and out.centres.shape == (2, 8, 3)
    assert out.token_mask is None and not out.tokens_are_points  # no mask check (host sync) in the encoder
    alone = tok(small, None, small_n)
    torch.testing.assert_close(out.tokens[0], alone.tokens[0])
    torch.testing.assert_close(out.centres[0], alone.centres[0])
    with pytest.raises(ValueError, match="in_features=3"):
        tok(pos, mask, None)


def test_group_tokenizer_is_translation_invariant_up_to_position_embedding():
    """Group features are computed relative to their centre: shifting a cloud only changes pos_embed."""
    torch.manual_seed(0)
    tok = PointGroupTokenizer(dim=16, num_groups=4, group_size=5, hidden=8).eval()
    pos = torch.randn(1, 30, 3)
    shift = torch.tensor([0.3, -0.2, 0.1])
    a, b = tok(pos), tok(pos + shift)
    torch.testing.assert_close(a.tokens - tok.pos_embed(a.centres), b.tokens - tok.pos_embed(b.centres))


def test_pointwise_tokenizer_uses_point_mask():
    tok = PointwiseTokenizer(dim=16, in_features=3)
    pos, feats = torch.randn(2, 10, 3), torch.randn(2, 10, 3)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 6:] = False
    out = tok(pos, mask, feats)
    assert out.tokens.shape == (2, 10, 16)
    assert out.token_mask is mask and out.centres is pos and out.tokens_are_points
    assert bool((out.tokens[1, 6:] == 0).all())


def test_interpolation_reproduces_values_at_centres_and_is_convex():
    gen = torch.Generator().manual_seed(4)
    centres = torch.randn(2, 12, 3, generator=gen)
    values = torch.randn(2, 12, 5, generator=gen)
    at_centres = interpolate_to_points(values, centres, centres, k=3)
    torch.testing.assert_close(at_centres, values, atol=1e-5, rtol=1e-5)
    points = torch.randn(2, 40, 3, generator=gen)
    out = interpolate_to_points(values, centres, points, k=3)
    assert bool((out <= values.amax(1, keepdim=True) + 1e-6).all())
    assert bool((out >= values.amin(1, keepdim=True) - 1e-6).all())
    # A padded centre (placed exactly on a query point) must be ignored.
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[:, 0] = False
    centres_p = centres.clone()
    centres_p[:, 0] = points[:, 0]
    out_masked = interpolate_to_points(values, centres_p, points, mask, k=3)
    ref = interpolate_to_points(values[:, 1:], centres[:, 1:], points, k=3)
    torch.testing.assert_close(out_masked, ref)


def _tiny_segmenter(tokenizer, num_categories=3, num_classes=7):
    from bixt import BiXTEncoder

    encoder = BiXTEncoder(dim=32, depth=2, num_latents=8, num_heads=2, update_tokens_last=True)
    head = PartSegmentationHead(32, num_classes, num_categories, latent_dim=32, point_features=6, hidden=32)
    return PointSegmenter(tokenizer, encoder, head)


@pytest.mark.parametrize("kind", ["group", "pointwise"])
def test_segmenter_shapes_gradients_and_padding(kind):
    torch.manual_seed(0)
    tokenizer = (PointGroupTokenizer(32, num_groups=8, group_size=6, in_features=3, hidden=16)
                 if kind == "group" else PointwiseTokenizer(32, in_features=3))
    model = _tiny_segmenter(tokenizer).eval()
    pos, normals = torch.randn(2, 50, 3), torch.randn(2, 50, 3)
    mask = torch.ones(2, 50, dtype=torch.bool)
    mask[1, 30:] = False
    category = torch.tensor([0, 2])
    logits = model(pos, mask, normals, category)
    assert logits.shape == (2, 50, 7)
    # The padded cloud's real-point logits equal those of the cloud run alone.
    alone = model(pos[1:, :30], None, normals[1:, :30], category[1:])
    torch.testing.assert_close(logits[1, :30], alone[0], atol=1e-5, rtol=1e-4)
    model.train()
    logits = model(pos, mask, normals, category)
    logits[mask].sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["encoder.latents"].abs().sum() > 0
    assert grads["tokenizer.pos_embed.mlp.0.weight"].abs().sum() > 0


def test_segmenter_rejects_one_sided_encoder_and_missing_category():
    from bixt import BiXTEncoder

    head = PartSegmentationHead(32, 5, 2, point_features=3, hidden=16)
    with pytest.raises(ValueError, match="update_tokens_last=True"):
        PointSegmenter(PointwiseTokenizer(32), BiXTEncoder(32, 2, 4, num_heads=2, update_tokens_last=False), head)
    model = PointSegmenter(PointwiseTokenizer(32), BiXTEncoder(32, 2, 4, num_heads=2), head)
    with pytest.raises(ValueError, match="pass category"):
        model(torch.randn(1, 10, 3))
