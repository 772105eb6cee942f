"""The modality-agnostic BiXT encoder: learned latents refined together with the input tokens."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
from timm.layers import register_notrace_function, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from bixt.core.attention import UPDATES
from bixt.core.blocks import BiXTLayer, check_cross_attention


def init_weights_jax(module: nn.Module) -> None:
    """Xavier-uniform linear weights with zero bias, as in the official ("jax") initialisation."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# The checks below read shapes and values, which torch.fx's symbolic tracing cannot see through:
# registered with timm as leaf functions, they run on the real tensors of a traced model.
@register_notrace_function
def check_tokens(tokens: torch.Tensor, token_dim: int, name: str = "tokens") -> None:
    if tokens.dim() != 3 or tokens.shape[-1] != token_dim:
        raise ValueError(f"{name} must have shape (batch, tokens, {token_dim}), got {tuple(tokens.shape)}")


@register_notrace_function
def check_token_mask(token_mask: torch.Tensor, batch: int, length: int, name: str = "token_mask") -> torch.Tensor:
    if token_mask.shape != (batch, length):
        raise ValueError(
            f"{name} must have shape (batch, tokens) = {(batch, length)}, got {tuple(token_mask.shape)}"
        )
    if token_mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor (True = real token), got dtype {token_mask.dtype}")
    if torch.compiler.is_compiling() or token_mask.device.type != "cpu":
        # checked where the data is, inside a compiled graph too: no host sync, no graph break
        torch._assert_async(token_mask.any(dim=1).all(), "a token mask marks every token of a sample as padding")
        return token_mask
    if not bool(token_mask.any(dim=1).all()):
        empty = (~token_mask.any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(
            f"{name} marks every token of sample(s) {empty} as padding; each sequence needs at least one "
            "real token (drop empty samples or give them a placeholder token)"
        )
    return token_mask


class BiXTEncoder(nn.Module):
    """Latents and tokens refine each other through ``depth`` cross-attention layers.

    ``dim``, ``depth`` and ``num_latents`` may be given by position, the rest by keyword only.

    Args:
        dim: latent width.
        depth: number of layers (cross-attention block + latent self-attention block each).
        num_latents: number of learned latent vectors.
        token_dim: token width (defaults to ``dim``).
        token_dims: several named token streams, name -> width (fusion; instead of ``token_dim``),
            e.g. ``{"image": 192, "text": 128}``: each stream has its own cross-attention weights, a
            learned modality embedding added as it enters, and its own padding mask; in every layer
            the latents meet each stream in turn (the order of ``token_dims``) through the chosen
            ``cross_attention``, then attend to themselves. Cost is linear in the total token count.
        attn_dim: width of the shared cross-attention space (defaults to ``dim``).
        num_heads: heads of the latent self-attention.
        cross_heads: heads of the cross-attention (defaults to ``num_heads``).
        mlp_ratio / token_mlp_ratio: MLP expansion on the latent / token side.
        qkv_bias / rv_bias: biases of the self-attention qkv and cross-attention (r, v) projections.
        drop_path_rate / token_drop_path_rate: stochastic depth, linearly increasing over layers,
            for the latent and token side (token side defaults to the latent rate).
        init_values: layer-scale initial value (None: no layer scale).
        cross_attention: "bidirectional" (BiXT, the default), "sequential" (latents read the tokens,
            then the tokens read the updated latents) or "iterative" (Perceiver: latents read the
            tokens, which pass through unchanged); see :mod:`bixt.core.blocks`.
        last_layer: what the last layer updates: "both" (the default), "latents" (one-sided, as
            in the classification models: only the latents are read) or "tokens" (a dense model
            whose last latents nothing reads). Ignored by "iterative" but for "tokens" (refused).
        update_tokens_last: the older spelling of ``last_layer``: False = "latents", True = "both".
        grad_checkpointing: recompute each layer in backward to save activation memory.
        attn_impl: "auto" | "math" | "sdpa" for the cross-attention kernels (auto: the shared
            similarity in training while it is small, SDPA otherwise; see BiCrossAttention).

    ``forward(tokens, token_mask=None, return_attention=False)`` takes tokens (B, N, token_dim) and an
    optional bool ``token_mask`` (B, N), True for real tokens. Padded tokens are zeroed where they enter
    (whatever they hold, NaN or inf included) and are invisible to the latents. Returns ``(latents, tokens)`` of shapes (B, L, dim) / (B, N, token_dim), padded token
    positions zeroed; with ``return_attention`` a third item lists per layer the cross-attention maps
    ``(latents->tokens (B, H, L, N), tokens->latents (B, H, L, N) or None)`` (None where a layer
    leaves the tokens alone: a one-sided last layer, every iterative layer).

    Streams (``token_dims``): ``forward(tokens, token_masks=None, return_attention=False)`` takes a dict
    name -> (B, N_name, width) holding any non-empty subset of the streams (a stream absent for a whole
    batch is skipped: a text-only forward of an image+text model) and optional bool masks by name.
    Returns ``(latents, tokens)`` with ``tokens`` the dict of the refined streams given; with
    ``return_attention`` a third item maps each given stream to its per-layer maps, in the
    single-stream format above. With one stream given it computes what a single-stream encoder
    with that stream's weights computes on the tokens plus the stream's modality embedding.
    """

    def __init__(
        self,
        dim: int = 192,
        depth: int = 12,
        num_latents: int = 64,
        *,
        token_dim: Optional[int] = None,
        token_dims: Optional[Mapping[str, int]] = None,
        attn_dim: Optional[int] = None,
        num_heads: int = 6,
        cross_heads: Optional[int] = None,
        mlp_ratio: float = 4.0,
        token_mlp_ratio: Optional[float] = None,
        qkv_bias: bool = True,
        rv_bias: bool = True,
        drop_path_rate: float = 0.0,
        token_drop_path_rate: Optional[float] = None,
        init_values: Optional[float] = None,
        cross_attention: str = "bidirectional",
        last_layer: Optional[str] = None,
        update_tokens_last: Optional[bool] = None,
        grad_checkpointing: bool = False,
        attn_impl: str = "auto",
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if num_latents < 1:  # with no latents every softmax over them is empty: all-NaN outputs
            raise ValueError(f"num_latents must be >= 1, got {num_latents}")
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim = dim
        self.token_dims = check_token_dims(token_dims, token_dim)
        self.token_dim = None if self.token_dims else (token_dim or dim)
        self.attn_dim = attn_dim or dim
        self.num_latents = num_latents
        self.cross_attention = cross_attention
        kinds = layer_kinds(depth, cross_attention, last_layer, update_tokens_last)
        self.grad_checkpointing = grad_checkpointing
        token_drop_path_rate = drop_path_rate if token_drop_path_rate is None else token_drop_path_rate
        # stochastic depth grows linearly over layers (plain floats: works under torch.device("meta"))
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        token_rates = [token_drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]

        self.latents = nn.Parameter(torch.zeros(1, num_latents, dim))
        layer_kwargs = [
            dict(latent_dim=dim, token_dim=self.token_dims or self.token_dim, attn_dim=self.attn_dim, num_heads=num_heads,
                 cross_heads=cross_heads or num_heads, mlp_ratio=mlp_ratio, token_mlp_ratio=token_mlp_ratio,
                 qkv_bias=qkv_bias, rv_bias=rv_bias, drop_path=rates[i], token_drop_path=token_rates[i],
                 init_values=init_values, cross_attention=cross_attention, attn_impl=attn_impl)
            for i in range(depth)
        ]
        self.blocks = nn.ModuleList(BiXTLayer(**kwargs, updates=kind) for kwargs, kind in zip(layer_kwargs, kinds))
        init_weights_jax(self)
        trunc_normal_(self.latents, std=0.02)
        if self.token_dims:  # tells the latents which stream a token came from
            self.modality_embed = nn.ParameterDict(
                {name: nn.Parameter(trunc_normal_(torch.zeros(1, 1, width), std=0.02))
                 for name, width in self.token_dims.items()})

    @property
    def streams(self) -> tuple[str, ...]:
        """The names of the token streams (empty for a single-stream encoder)."""
        return tuple(self.token_dims or ())

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        # The official recipe decays every >=2-D parameter, latents included.
        return set()

    @property
    def token_layers(self) -> list[int]:
        """Indices of the layers that refine the tokens (all but a one-sided last layer; none if iterative)."""
        return [i for i, block in enumerate(self.blocks) if block.updates != "latents"]

    @property
    def update_tokens_last(self) -> bool:
        """Whether the last layer refines the tokens."""
        return self.blocks[-1].updates != "latents"

    def require_refined_tokens(self, consumer: str, *, in_last_layer: bool = True) -> None:
        """Raise a clear error unless the last layer (``in_last_layer=False``: any layer) refines the
        tokens, for a consumer that reads them (a dense head, token maps)."""
        if self.cross_attention == "iterative":
            raise ValueError(f"{consumer} reads refined tokens, but cross_attention='iterative' (Perceiver) never "
                             "updates the tokens: use cross_attention='bidirectional' or 'sequential'")
        if in_last_layer and not self.update_tokens_last:
            raise ValueError(f"{consumer} reads refined tokens, but the encoder's last layer updates the latents only "
                             "(one-sided); build it with last_layer='both' (update_tokens_last=True) for dense prediction")

    def forward(self, tokens, token_mask: Optional[torch.Tensor] = None, return_attention: bool = False, *,
                token_masks: Optional[Mapping[str, torch.Tensor]] = None):
        if self.token_dims:
            if token_mask is not None:
                raise TypeError(f"this encoder reads the streams {self.streams}: give their masks as "
                                "token_masks={name: mask}, not token_mask=")
            latents, tokens, maps = self._run_streams(tokens, token_masks or {}, return_attention)
        else:
            if isinstance(tokens, Mapping) or token_masks is not None:
                raise TypeError("this encoder reads one token stream (a tensor and token_mask=); build it with "
                                "token_dims={name: width} to read several named streams")
            latents, tokens, maps, _ = self._run(tokens, token_mask, return_attention=return_attention)
        return (latents, tokens, maps) if return_attention else (latents, tokens)

    def forward_intermediates(
        self, tokens: torch.Tensor, token_mask: Optional[torch.Tensor] = None, *, indices: Sequence[int],
        stop_early: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """``(latents, tokens, intermediates)``: as :meth:`forward`, plus the tokens after each layer
        in ``indices`` (absolute layer indices), padded positions zeroed. ``stop_early`` runs no layer
        past the last index asked for (the returned latents and tokens are then that layer's)."""
        if self.token_dims:
            raise ValueError(f"forward_intermediates reads one token stream; this encoder reads {self.streams}")
        if self.cross_attention == "iterative":
            self.require_refined_tokens("forward_intermediates")
        take = sorted(set(indices))
        if not take or take[0] < 0 or take[-1] >= len(self.blocks):
            raise ValueError(f"layer indices must lie in 0..{len(self.blocks) - 1}, got {list(indices)}")
        latents, tokens, _, intermediates = self._run(tokens, token_mask, take=take,
                                                      last=take[-1] if stop_early else None)
        return latents, tokens, intermediates

    def _run(self, tokens, token_mask, return_attention: bool = False, take: Sequence[int] = (),
             last: Optional[int] = None):
        check_tokens(tokens, self.token_dim)
        if token_mask is not None:
            check_token_mask(token_mask, tokens.shape[0], tokens.shape[1])
            tokens = mask_padding(tokens, token_mask)  # whatever padding holds (NaN, inf) must reach nothing
        latents = self.latents.expand(tokens.shape[0], -1, -1)
        maps, intermediates = [], []
        blocks = self.blocks if last is None else self.blocks[: last + 1]
        for i, block in enumerate(blocks):
            if self.grad_checkpointing and self.training and not return_attention:
                latents, tokens, layer_maps = checkpoint(block, latents, tokens, token_mask, use_reentrant=False)
            else:
                latents, tokens, layer_maps = block(latents, tokens, token_mask, return_attention)
            if return_attention:
                maps.append(layer_maps)
            if i in take:
                intermediates.append(mask_padding(tokens, token_mask))
        return latents, mask_padding(tokens, token_mask), maps, intermediates

    def _run_streams(self, tokens: Mapping[str, torch.Tensor], token_masks: Mapping[str, torch.Tensor],
                     return_attention: bool):
        tokens, token_masks = self._check_streams(tokens, token_masks)
        tokens = {name: mask_padding(x, token_masks.get(name)) + self.modality_embed[name] for name, x in tokens.items()}
        latents = self.latents.expand(next(iter(tokens.values())).shape[0], -1, -1)
        maps = {name: [] for name in tokens}
        for block in self.blocks:
            if self.grad_checkpointing and self.training and not return_attention:
                latents, tokens, layer_maps = checkpoint(block, latents, tokens, token_masks, use_reentrant=False)
            else:
                latents, tokens, layer_maps = block(latents, tokens, token_masks, return_attention)
            if return_attention:
                for name in tokens:
                    maps[name].append(layer_maps[name])
        return latents, {name: mask_padding(x, token_masks.get(name)) for name, x in tokens.items()}, maps

    def _check_streams(self, tokens, token_masks):
        """The streams given, in the encoder's order, each checked with its mask (names, widths, batch)."""
        if not isinstance(tokens, Mapping):
            raise TypeError(f"this encoder reads the named streams {self.streams}: give tokens as a dict "
                            f"{{name: (batch, tokens, width)}}, got {type(tokens).__name__}")
        for what, given in (("tokens", tokens), ("token_masks", token_masks)):
            unknown = [name for name in given if name not in self.token_dims]
            if unknown:
                raise ValueError(f"{what} has stream(s) {unknown} this encoder was not built for; its streams: "
                                 f"{self.streams} (build it with token_dims including them)")
        if not tokens:
            raise ValueError(f"tokens holds no stream; give at least one of {self.streams}")
        orphans = [name for name in token_masks if name not in tokens]
        if orphans:
            raise ValueError(f"token_masks has mask(s) for {orphans}, which tokens does not hold")
        tokens = {name: tokens[name] for name in self.streams if name in tokens}
        batch = None
        for name, x in tokens.items():
            check_tokens(x, self.token_dims[name], f"tokens[{name!r}]")
            if batch is not None and x.shape[0] != batch:
                raise ValueError(f"tokens[{name!r}] has batch size {x.shape[0]}, the other streams {batch}")
            batch = x.shape[0]
            if token_masks.get(name) is not None:
                check_token_mask(token_masks[name], x.shape[0], x.shape[1], f"token_masks[{name!r}]")
        return tokens, {name: mask for name, mask in token_masks.items() if mask is not None}


def mask_padding(tokens: torch.Tensor, token_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Padded positions set to zero (selected, not multiplied: 0 * NaN would stay NaN)."""
    return tokens if token_mask is None else tokens.masked_fill(~token_mask.unsqueeze(-1), 0.0)


def check_token_dims(token_dims: Optional[Mapping[str, int]], token_dim: Optional[int]) -> Optional[dict[str, int]]:
    """The streams' widths by name, checked (None for a single-stream encoder)."""
    if token_dims is None:
        return None
    if token_dim is not None:
        raise ValueError(f"give token_dim ({token_dim}) for one stream or token_dims ({dict(token_dims)}) for "
                         "several, not both")
    if not token_dims:
        raise ValueError("token_dims is empty; name at least one stream and its width, e.g. {'image': 192}")
    for name, width in token_dims.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"token_dims: stream name {name!r} must be an identifier (letters, digits, _)")
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"token_dims[{name!r}] must be a positive int width, got {width!r}")
    return dict(token_dims)


def layer_kinds(depth: int, cross_attention: str, last_layer: Optional[str],
                update_tokens_last: Optional[bool]) -> list[str]:
    """What each layer updates ("both" | "latents" | "tokens"), from the encoder's arguments."""
    check_cross_attention(cross_attention)
    if last_layer is not None and update_tokens_last is not None:
        raise ValueError(f"give last_layer ({last_layer!r}) or update_tokens_last ({update_tokens_last!r}), not both")
    if last_layer is None:
        last_layer = "latents" if update_tokens_last is False else "both"
    if last_layer not in UPDATES:
        raise ValueError(f"last_layer must be one of {UPDATES}, got {last_layer!r}")
    if cross_attention == "iterative":
        if last_layer == "tokens":
            raise ValueError("last_layer='tokens' needs a layer that refines the tokens, but cross_attention="
                             "'iterative' (Perceiver) never does: use 'bidirectional' or 'sequential'")
        return ["latents"] * depth
    return ["both"] * (depth - 1) + [last_layer]
