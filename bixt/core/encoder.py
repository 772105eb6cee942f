"""The modality-agnostic BiXT encoder: learned latents refined together with the input tokens."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from timm.layers import register_notrace_function, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from bixt.core.blocks import BiXTLayer


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
def check_tokens(tokens: torch.Tensor, token_dim: int) -> None:
    if tokens.dim() != 3 or tokens.shape[-1] != token_dim:
        raise ValueError(f"tokens must have shape (batch, tokens, {token_dim}), got {tuple(tokens.shape)}")


@register_notrace_function
def check_token_mask(token_mask: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    if token_mask.shape != (batch, length):
        raise ValueError(
            f"token_mask must have shape (batch, tokens) = {(batch, length)}, got {tuple(token_mask.shape)}"
        )
    if token_mask.dtype != torch.bool:
        raise TypeError(f"token_mask must be a bool tensor (True = real token), got dtype {token_mask.dtype}")
    if torch.compiler.is_compiling():
        return token_mask
    if token_mask.device.type != "cpu":  # checked on the device: no host sync per step
        torch._assert_async(token_mask.any(dim=1).all(), "token_mask marks every token of a sample as padding")
        return token_mask
    if not bool(token_mask.any(dim=1).all()):
        empty = (~token_mask.any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(
            f"token_mask marks every token of sample(s) {empty} as padding; each sequence needs at least one "
            "real token (drop empty samples or give them a placeholder token)"
        )
    return token_mask


class BiXTEncoder(nn.Module):
    """Latents and tokens refine each other through ``depth`` bi-directional cross-attention layers.

    Args:
        dim: latent width.
        depth: number of layers (cross-attention block + latent self-attention block each).
        num_latents: number of learned latent vectors.
        token_dim: token width (defaults to ``dim``).
        attn_dim: width of the shared cross-attention space (defaults to ``dim``).
        num_heads: heads of the latent self-attention.
        cross_heads: heads of the cross-attention (defaults to ``num_heads``).
        mlp_ratio / token_mlp_ratio: MLP expansion on the latent / token side.
        qkv_bias / rv_bias: biases of the self-attention qkv and cross-attention (r, v) projections.
        drop_path_rate / token_drop_path_rate: stochastic depth, linearly increasing over layers,
            for the latent and token side (token side defaults to the latent rate).
        init_values: layer-scale initial value (None: no layer scale).
        update_tokens_last: False makes the last layer one-sided (latents read, tokens untouched),
            as in the classification models; dense tasks need True.
        grad_checkpointing: recompute each layer in backward to save activation memory.
        attn_impl: "auto" | "math" | "sdpa" for the cross-attention kernels (auto: the shared
            similarity in training while it is small, SDPA otherwise; see BiCrossAttention).

    ``forward(tokens, token_mask=None, return_attention=False)`` takes tokens (B, N, token_dim) and an
    optional bool ``token_mask`` (B, N), True for real tokens. Padded tokens are invisible to the
    latents. Returns ``(latents, tokens)`` of shapes (B, L, dim) / (B, N, token_dim), padded token
    positions zeroed; with ``return_attention`` a third item lists per layer the cross-attention maps
    ``(latents->tokens (B, H, L, N), tokens->latents (B, H, L, N) or None)``.
    """

    def __init__(
        self,
        dim: int = 192,
        depth: int = 12,
        num_latents: int = 64,
        token_dim: Optional[int] = None,
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
        update_tokens_last: bool = True,
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
        self.token_dim = token_dim or dim
        self.attn_dim = attn_dim or dim
        self.num_latents = num_latents
        self.update_tokens_last = update_tokens_last
        self.grad_checkpointing = grad_checkpointing
        token_drop_path_rate = drop_path_rate if token_drop_path_rate is None else token_drop_path_rate
        # stochastic depth grows linearly over layers (plain floats: works under torch.device("meta"))
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        token_rates = [token_drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]

        self.latents = nn.Parameter(torch.zeros(1, num_latents, dim))
        self.blocks = nn.ModuleList(
            BiXTLayer(
                latent_dim=dim, token_dim=self.token_dim, attn_dim=self.attn_dim, num_heads=num_heads,
                cross_heads=cross_heads or num_heads, mlp_ratio=mlp_ratio, token_mlp_ratio=token_mlp_ratio,
                qkv_bias=qkv_bias, rv_bias=rv_bias,
                drop_path=rates[i], token_drop_path=token_rates[i], init_values=init_values,
                one_sided=(i == depth - 1 and not update_tokens_last), attn_impl=attn_impl,
            )
            for i in range(depth)
        )
        init_weights_jax(self)
        trunc_normal_(self.latents, std=0.02)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        # The official recipe decays every >=2-D parameter, latents included.
        return set()

    @property
    def token_layers(self) -> list[int]:
        """Indices of the layers that refine the tokens (all but a one-sided last layer)."""
        return [i for i, block in enumerate(self.blocks) if not block.cross.one_sided]

    def forward(self, tokens: torch.Tensor, token_mask: Optional[torch.Tensor] = None, return_attention: bool = False):
        latents, tokens, maps, _ = self._run(tokens, token_mask, return_attention=return_attention)
        return (latents, tokens, maps) if return_attention else (latents, tokens)

    def forward_intermediates(
        self, tokens: torch.Tensor, token_mask: Optional[torch.Tensor] = None, *, indices: Sequence[int],
        stop_early: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """``(latents, tokens, intermediates)``: as :meth:`forward`, plus the tokens after each layer
        in ``indices`` (absolute layer indices), padded positions zeroed. ``stop_early`` runs no layer
        past the last index asked for (the returned latents and tokens are then that layer's)."""
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


def mask_padding(tokens: torch.Tensor, token_mask: Optional[torch.Tensor]) -> torch.Tensor:
    return tokens if token_mask is None else tokens * token_mask.unsqueeze(-1).to(tokens.dtype)
