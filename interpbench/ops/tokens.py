"""Token-grid layers of vision transformers, read as feature maps, and attention-based relevance.

A ViT block outputs ``B x (P + h*w) x C`` tokens: ``P`` prefix tokens (class token, DeiT's distillation token,
registers) followed by the ``h x w`` patch tokens in row-major order. Swin's stages output ``B x h x w x C``
(channels last). Every layer-based method (Grad-CAM family, Score-CAM) and dissection read a layer as a
``B x C x h x w`` map; :func:`as_feature_map` folds either layout into it, dropping the prefix tokens (as
pytorch-grad-cam's ViT ``reshape_transform`` does by hand).

Relevance through the attention blocks:

- :func:`attention_rollout`: Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020.
- :func:`attention_relevance`: Chefer, Gur & Wolf, "Generic Attention-model Explainability for Interpreting
  Bi-Modal and Encoder-Decoder Transformers", ICCV 2021 (eq. 5-6, self-attention only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from interpbench.core.base import NotApplicable


@dataclass(frozen=True)
class TokenGrid:
    """How a network's layers carry tokens.

    ``grid``: the patch grid (h, w) at the model's input size (None if unknown, e.g. Swin, whose grid shrinks per
    stage). ``prefix``: the number of tokens before the patch tokens (class, distillation, registers).
    ``channels_last``: 4-D outputs of non-convolutional modules are ``B x h x w x C`` (timm's ``output_fmt =
    'NHWC'``, e.g. Swin). ``pool``: how the classifier reads the tokens, ``"token"`` (the first prefix token) or
    ``"avg"`` (the mean of the patch tokens).
    """

    grid: tuple[int, int] | None = None
    prefix: int = 0
    channels_last: bool = False
    pool: str = "token"


def token_grid_of(model: Any) -> TokenGrid | None:
    """The token layout of ``model`` (an interpbench Model or a bare network), or None for a plain CNN.

    An explicit ``token_grid`` attribute wins (on the Model or its ``net``); otherwise timm's conventions are read:
    ``patch_embed.grid_size`` and ``num_prefix_tokens`` (ViT, DeiT, registers), ``output_fmt == 'NHWC'`` (Swin).
    """
    for owner in (model, getattr(model, "net", None)):
        declared = getattr(owner, "token_grid", None) if owner is not None else None
        if isinstance(declared, TokenGrid):
            return declared
    net = getattr(model, "net", model)
    if getattr(net, "output_fmt", None) == "NHWC":
        return TokenGrid(grid=None, prefix=0, channels_last=True, pool=str(getattr(net, "global_pool", "avg")))
    grid = getattr(getattr(net, "patch_embed", None), "grid_size", None)
    if grid is None or not hasattr(net, "num_prefix_tokens"):
        return None
    pool = getattr(net, "global_pool", "token")
    pool = pool if isinstance(pool, str) else "token"
    return TokenGrid(grid=(int(grid[0]), int(grid[1])), prefix=int(net.num_prefix_tokens),
                     pool="token" if pool == "token" else "avg")


def fold_tokens(tokens: torch.Tensor, grid: tuple[int, int], prefix: int) -> torch.Tensor:
    """``B x (P + h*w) x C`` tokens -> ``B x C x h x w``, dropping the ``P = prefix`` leading tokens.

    The patch tokens are in row-major order (timm's ``PatchEmbed``: ``flatten(2).transpose(1, 2)``). Returns a view
    (gradients through it reach ``tokens``).
    """
    h, w = grid
    b, n, c = tokens.shape
    if n != prefix + h * w:
        raise ValueError(f"fold_tokens: {n} tokens are not {prefix} prefix + {h}x{w} patch tokens")
    return tokens[:, prefix:].reshape(b, h, w, c).permute(0, 3, 1, 2)


def unfold_tokens(maps: torch.Tensor, grid: tuple[int, int], prefix: int) -> torch.Tensor:
    """Inverse of :func:`fold_tokens` on the patch tokens: ``B x C x h x w`` -> ``B x (P + h*w) x C`` with zero
    prefix tokens (e.g. to carry a gradient w.r.t. the folded map back to the token tensor)."""
    b, c, h, w = maps.shape
    patches = maps.permute(0, 2, 3, 1).reshape(b, h * w, c)
    return torch.cat([patches.new_zeros(b, prefix, c), patches], dim=1)


def patch_grid(n_patches: int, grid: tuple[int, int] | None, image_size: tuple[int, int] | None) -> tuple[int, int] | None:
    """The (h, w) grid of ``n_patches`` tokens: the model's grid if it fits, else the one with the image's aspect
    ratio (a model run at another input size), else None."""
    if grid is not None and grid[0] * grid[1] == n_patches:
        return tuple(grid)
    if image_size is not None:
        height, width = image_size
        for h in range(1, n_patches + 1):
            if n_patches % h == 0 and h * width == (n_patches // h) * height:
                return h, n_patches // h
    return None


def as_feature_map(output: torch.Tensor, layout: TokenGrid | None, *, module: nn.Module | None = None,
                   image_size: tuple[int, int] | None = None) -> torch.Tensor | None:
    """A layer's output as a ``B x C x h x w`` map, or None if it is neither a feature map nor a token grid.

    - no token layout (a CNN): a 4-D output is returned as is;
    - ``channels_last`` (Swin): a 4-D output of a non-convolutional module is permuted from ``B x h x w x C``;
    - 3-D ``B x N x C`` tokens with ``N = P + h*w`` (or ``h*w``: before the prefix tokens are added, e.g. the
      patch embedding) are folded by :func:`fold_tokens`.
    """
    if not isinstance(output, torch.Tensor):
        return None
    if output.dim() == 4:
        if layout is not None and layout.channels_last and not isinstance(module, nn.modules.conv._ConvNd):
            return output.permute(0, 3, 1, 2)
        return output
    if output.dim() != 3 or layout is None:
        return None
    n = output.shape[1]
    for prefix in dict.fromkeys((layout.prefix, 0)):
        grid = patch_grid(n - prefix, layout.grid, image_size) if n > prefix else None
        if grid is not None:
            return fold_tokens(output, grid, prefix)
    return None


def feature_map_or_raise(owner: str, layer: str, model: Any, output: Any, module: nn.Module | None,
                         image_size: tuple[int, int] | None, hint: str) -> torch.Tensor:
    """:func:`as_feature_map` of a captured layer output; NotApplicable naming the layer, its shape and ``hint``."""
    folded = as_feature_map(output, token_grid_of(model), module=module, image_size=image_size)
    if folded is None:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        layout = token_grid_of(model)
        what = ("not a B x K x h x w feature map" if layout is None else
                f"neither a feature map nor {layout.prefix} prefix + h*w patch tokens")
        raise NotApplicable(
            f"{owner}: layer {layer!r} of {getattr(model, 'spec', type(model).__name__)!r} outputs {shape}, {what}; "
            + hint
        )
    return folded


# --------------------------------------------------------------------------------------------- attention relevance


def class_row(relevance: torch.Tensor, prefix: int, pool: str = "token") -> torch.Tensor:
    """The relevance of the patch tokens for the classifier's input: ``B x N x N`` -> ``B x (N - P)``.

    ``pool="token"``: the class token's row (token 0); ``"avg"``: the mean of the patch tokens' rows (the
    classifier averages them). Columns of the prefix tokens are dropped.
    """
    if pool == "token" and prefix > 0:
        row = relevance[:, 0]
    else:
        row = relevance[:, prefix:].mean(dim=1)
    return row[:, prefix:]


def attention_rollout(attentions: Sequence[torch.Tensor], residual: float = 0.5) -> torch.Tensor:
    """Attention rollout ``B x N x N`` from per-block attention weights ``B x heads x N x N`` (first block first).

    Abnar & Zuidema 2020, sec. 3: the heads are averaged, the residual connection is modelled by
    ``A' = (1 - residual) A + residual I`` (0.5 in the paper), each row is renormalised to sum 1, and the blocks
    are multiplied through: ``R = A'_L ... A'_2 A'_1``.
    """
    if not attentions:
        raise ValueError("attention_rollout: no attention weights")
    rollout = None
    for attn in attentions:
        a = attn.float().mean(dim=1)
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = (1 - residual) * a + residual * eye
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    return rollout


def attention_relevance(attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor]) -> torch.Tensor:
    """Gradient-weighted attention relevance ``B x N x N`` (first block first).

    Chefer et al. ICCV 2021, eq. 5-6 (self-attention): ``R = I``; for each block in order,
    ``Abar = E_h[(grad_A * A)^+]`` (element-wise product of the attention map and the gradient of the target
    logit w.r.t. it, negatives removed, averaged over heads) and ``R <- R + Abar R``.
    """
    if not attentions or len(attentions) != len(gradients):
        raise ValueError("attention_relevance: needs one gradient per attention map")
    relevance = None
    for attn, grad in zip(attentions, gradients):
        a = (grad.float() * attn.float()).clamp(min=0).mean(dim=1)
        if relevance is None:
            relevance = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a).clone()
        relevance = relevance + a @ relevance
    return relevance
