"""Point-cloud tokenisers: farthest-point sampling + kNN grouping, and a naive one-token-per-point baseline.

Everything is plain batched torch (no compiled extensions), so it runs on CPU and GPU alike.
Clouds of different sizes share a batch through ``point_mask`` (B, N), True for real points;
padded points are never chosen as centres or neighbours.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Optional

import torch
from torch import nn

from bixt.constraints import Range

__all__ = [
    "farthest_point_sample",
    "knn",
    "gather",
    "PointTokens",
    "PointGroupTokenizer",
    "PointwiseTokenizer",
]


def _check_cloud(pos: torch.Tensor, point_mask: Optional[torch.Tensor], name: str = "pos") -> None:
    if pos.dim() != 3 or pos.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (batch, points, 3), got {tuple(pos.shape)}")
    if point_mask is not None:
        if point_mask.shape != pos.shape[:2]:
            raise ValueError(
                f"point_mask must have shape (batch, points) = {tuple(pos.shape[:2])}, got {tuple(point_mask.shape)}"
            )
        if point_mask.dtype != torch.bool:
            raise TypeError(f"point_mask must be a bool tensor (True = real point), got dtype {point_mask.dtype}")


def _check_enough_points(point_mask: Optional[torch.Tensor], num_points: int, needed: int, what: str) -> None:
    """Raise if any cloud has fewer real points than ``needed`` (a host sync on CPU only; none unmasked)."""
    if point_mask is None:
        if num_points < needed:
            raise ValueError(f"clouds have {num_points} points but {what} needs at least {needed}")
        return
    counts = point_mask.sum(dim=1)
    if torch.compiler.is_compiling():
        return
    if counts.device.type != "cpu":  # checked on the device: no host sync per step
        torch._assert_async((counts >= needed).all(), f"a cloud has fewer real points than {what} needs ({needed})")
        return
    if bool((counts < needed).any()):
        bad = (counts < needed).nonzero().flatten().tolist()
        raise ValueError(
            f"cloud(s) at batch index {bad} have {[int(counts[i]) for i in bad]} real points but {what} needs "
            f"at least {needed}; drop such clouds, upsample them, or lower the group count / group size"
        )


def gather(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Per-batch gather: ``values`` (B, N, C) and ``index`` (B, *S) -> (B, *S, C)."""
    batch, _, channels = values.shape
    flat = index.reshape(batch, -1)
    picked = torch.gather(values, 1, flat.unsqueeze(-1).expand(-1, -1, channels))
    return picked.reshape(*index.shape, channels)


@torch.no_grad()
def farthest_point_sample(
    pos: torch.Tensor,
    num_samples: int,
    point_mask: Optional[torch.Tensor] = None,
    random_start: bool = False,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Batched farthest-point sampling.

    Args:
        pos: (B, N, 3) coordinates.
        num_samples: number of centres K per cloud; every cloud needs at least K real points.
        point_mask: optional (B, N) bool, True for real points.
        random_start: start from a random real point instead of the first real one.
        generator: RNG for ``random_start``.

    Returns:
        (B, K) long indices into the point axis, in selection order.
    """
    _check_cloud(pos, point_mask)
    batch, num_points, _ = pos.shape
    _check_enough_points(point_mask, num_points, num_samples, f"farthest-point sampling of {num_samples} centres")
    device = pos.device
    # Distances are accumulated in fp32 at least: fp16 ties would make the choice arbitrary.
    pos = pos.float() if pos.dtype in (torch.float16, torch.bfloat16) else pos
    # Squared distance of every point to its nearest selected centre; padded points get -1 so that
    # argmax never selects them (real points always have a distance >= 0).
    min_dist = torch.full((batch, num_points), float("inf"), device=device, dtype=pos.dtype)
    if point_mask is not None:
        min_dist.masked_fill_(~point_mask, -1.0)
    if random_start:
        noise = torch.rand(batch, num_points, device=device, generator=generator)
        if point_mask is not None:
            noise.masked_fill_(~point_mask, -1.0)
        current = noise.argmax(dim=1)
    else:
        current = min_dist.argmax(dim=1)  # the first real point (argmax returns the first maximum)
    selected = torch.empty(batch, num_samples, dtype=torch.long, device=device)
    batch_index = torch.arange(batch, device=device)
    # Coordinate planes (3, B, N): the update below is then a few fused element-wise ops over (B, N)
    # instead of a reduction over a length-3 inner axis, which vectorises poorly on CPU.
    planes = pos.permute(2, 0, 1).contiguous()
    dist = torch.empty_like(min_dist)
    diff = torch.empty_like(min_dist)
    for i in range(num_samples):
        selected[:, i] = current
        centre = planes[:, batch_index, current].unsqueeze(-1)  # (3, B, 1)
        torch.sub(planes[0], centre[0], out=dist).square_()
        for axis in (1, 2):
            torch.sub(planes[axis], centre[axis], out=diff)
            dist.addcmul_(diff, diff)
        torch.minimum(min_dist, dist, out=min_dist)  # padded points stay at -1 < any distance
        current = min_dist.argmax(dim=1)
    return selected


@torch.no_grad()
def knn(
    query: torch.Tensor,
    points: torch.Tensor,
    k: int,
    point_mask: Optional[torch.Tensor] = None,
    chunk_size: int = 1 << 24,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest neighbours of every query among the real points of the same cloud.

    Args:
        query: (B, M, 3) query coordinates.
        points: (B, N, 3) candidate coordinates.
        k: neighbours per query; every cloud needs at least k real points.
        point_mask: optional (B, N) bool, True for real candidates.
        chunk_size: bound on B * M_chunk * N distance entries held at once (queries are chunked).

    Returns:
        ``(sq_dist, index)``, both (B, M, k), sorted nearest first; ``index`` points into N.
    """
    _check_cloud(points, point_mask, "points")
    if query.dim() != 3 or query.shape[-1] != 3 or query.shape[0] != points.shape[0]:
        raise ValueError(
            f"query must have shape ({points.shape[0]}, queries, 3) to match points, got {tuple(query.shape)}"
        )
    batch, num_points, _ = points.shape
    _check_enough_points(point_mask, num_points, k, f"a {k}-nearest-neighbour search")
    dtype = torch.promote_types(query.dtype, torch.float32)
    query, points = query.to(dtype), points.to(dtype)
    step = max(1, chunk_size // max(1, batch * num_points))
    dists, indices = [], []
    for start in range(0, query.shape[1], step):
        # Exact pairwise differences rather than the |a|^2 + |b|^2 - 2ab expansion: the expansion
        # cancels badly for nearby points and would reorder close neighbours.
        sq = torch.cdist(query[:, start:start + step], points, compute_mode="donot_use_mm_for_euclid_dist").square_()
        if point_mask is not None:
            sq.masked_fill_(~point_mask.unsqueeze(1), float("inf"))
        d, i = sq.topk(k, dim=-1, largest=False, sorted=True)
        dists.append(d)
        indices.append(i)
    return torch.cat(dists, dim=1), torch.cat(indices, dim=1)


@dataclass
class PointTokens:
    """What a point tokeniser hands to the encoder and, later, to a dense head.

    tokens (B, G, D) and token_mask (B, G) bool go to the encoder; ``token_mask`` is None when every
    token is real, so the encoder skips its mask checks (a host sync on CUDA). ``centres`` (B, G, 3)
    are the token positions a dense head reads. ``tokens_are_points``: token i is input point i
    (``centres`` is the input ``pos``), so a dense head reads each point's own token instead of
    interpolating from the nearest centres.
    """

    tokens: torch.Tensor
    token_mask: Optional[torch.Tensor]
    centres: torch.Tensor
    tokens_are_points: bool = False


def _mlp(dims: list[int], norm: bool = True) -> nn.Sequential:
    """Shared point-wise MLP: Linear (+LayerNorm) + GELU between layers, plain Linear at the end."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2:
            if norm:
                layers.append(nn.LayerNorm(d_out))
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class CentreEmbedding(nn.Module):
    """Learned positional embedding of 3-D coordinates (a small MLP, as in Point-BERT / Point-MAE)."""

    def __init__(self, dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.mlp = _mlp([3, hidden, dim], norm=False)

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        return self.mlp(xyz)


class PointGroupTokenizer(nn.Module):
    """One token per local group: FPS centres, kNN neighbourhoods, a shared mini-PointNet per group.

    Each group's points are expressed relative to their centre (plus optional per-point features,
    e.g. normals), embedded by a shared two-stage PointNet (point MLP -> max-pool -> concat the
    pooled feature back to every point -> MLP -> max-pool), and the centre coordinates get a learned
    positional embedding that is added to the token.

    Args:
        dim: token width.
        num_groups: number of centres G (every cloud needs at least G real points).
        group_size: neighbours k per group.
        in_features: extra per-point feature channels (0 for xyz only, 3 with normals).
        hidden: width of the first PointNet stage (it outputs ``2 * hidden``, the second runs at ``4 * hidden``).
        random_start: random (instead of first-point) FPS start while training.
        relative_scale: factor on the neighbour offsets from their centre before the PointNet. The
            offsets are small in a unit-sphere cloud (~0.1 for 16 of 1024 points), so the first
            layer's bias dominates and its layer norm washes the local geometry out at the start of
            training; scaling them to ~1 (e.g. 10) makes learning start at once. 1 = unscaled.
    """

    def __init__(
        self,
        dim: int = 192,
        num_groups: Annotated[int, Range(min=1)] = 128,
        group_size: Annotated[int, Range(min=1)] = 32,
        in_features: int = 0,
        hidden: int = 64,
        random_start: bool = False,
        relative_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.relative_scale = relative_scale
        self.num_groups = num_groups
        self.group_size = group_size
        self.in_features = in_features
        self.random_start = random_start
        self.local_mlp = _mlp([3 + in_features, hidden, hidden * 2])
        # Second stage on [group max, point feature]; its first layer is split in two so that the
        # group summary is projected once per group and broadcast instead of concatenated per point.
        self.fuse_point = nn.Linear(hidden * 2, hidden * 4)
        self.fuse_group = nn.Linear(hidden * 2, hidden * 4, bias=False)
        self.fuse_mlp = nn.Sequential(nn.LayerNorm(hidden * 4), nn.GELU(), nn.Linear(hidden * 4, dim))
        self.pos_embed = CentreEmbedding(dim)

    def group(self, pos: torch.Tensor, point_mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Centres (B, G) and their neighbourhoods (B, G, k) as indices into the point axis."""
        centre_index = farthest_point_sample(
            pos, self.num_groups, point_mask, random_start=self.random_start and self.training
        )
        _, neighbour_index = knn(gather(pos, centre_index), pos, self.group_size, point_mask)
        return centre_index, neighbour_index

    def forward(
        self,
        pos: torch.Tensor,
        point_mask: Optional[torch.Tensor] = None,
        features: Optional[torch.Tensor] = None,
    ) -> PointTokens:
        _check_features(pos, features, self.in_features)
        centre_index, neighbour_index = self.group(pos, point_mask)
        centres = gather(pos, centre_index)  # (B, G, 3)
        local = gather(pos, neighbour_index) - centres.unsqueeze(2)  # (B, G, k, 3), relative to centre
        if self.relative_scale != 1.0:
            local = local * self.relative_scale
        if features is not None:
            local = torch.cat([local, gather(features, neighbour_index)], dim=-1)
        x = self.local_mlp(local)  # (B, G, k, 2h)
        # max() rather than amax(): its backward routes the gradient through the saved argmax
        # indices, much cheaper on CPU than amax's tie-splitting mask.
        summary = x.max(dim=2).values  # (B, G, 2h)
        x = self.fuse_point(x) + self.fuse_group(summary).unsqueeze(2)  # each point sees its group's summary
        tokens = self.fuse_mlp(x).max(dim=2).values + self.pos_embed(centres)
        # every group has a real centre (FPS picks real points only), so no token is padding
        return PointTokens(tokens=tokens, token_mask=None, centres=centres)


class PointwiseTokenizer(nn.Module):
    """Naive baseline: every point is a token (point MLP of its features + positional embedding).

    Cost grows with the number of points (BiXT's cross-attention stays linear in it); padded
    points become padded tokens.
    """

    def __init__(self, dim: int = 192, in_features: int = 0, hidden: int = 64) -> None:
        super().__init__()
        self.dim = dim
        self.in_features = in_features
        self.pos_embed = CentreEmbedding(dim)
        self.feature_mlp = _mlp([in_features, hidden, dim]) if in_features else None

    def forward(
        self,
        pos: torch.Tensor,
        point_mask: Optional[torch.Tensor] = None,
        features: Optional[torch.Tensor] = None,
    ) -> PointTokens:
        _check_cloud(pos, point_mask)
        _check_features(pos, features, self.in_features)
        tokens = self.pos_embed(pos)
        if self.feature_mlp is not None:
            tokens = tokens + self.feature_mlp(features)
        if point_mask is not None:
            tokens = tokens * point_mask.unsqueeze(-1).to(tokens.dtype)
        return PointTokens(tokens=tokens, token_mask=point_mask, centres=pos, tokens_are_points=True)


def _check_features(pos: torch.Tensor, features: Optional[torch.Tensor], in_features: int) -> None:
    if in_features == 0:
        if features is not None and features.shape[-1] != 0:
            raise ValueError(
                f"this tokeniser was built with in_features=0 but got per-point features of shape "
                f"{tuple(features.shape)}; build it with in_features={features.shape[-1]} or pass features=None"
            )
        return
    if features is None or features.shape != (*pos.shape[:2], in_features):
        got = None if features is None else tuple(features.shape)
        raise ValueError(
            f"per-point features must have shape {(*pos.shape[:2], in_features)} (in_features={in_features}), got {got}"
        )

