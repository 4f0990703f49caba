"""Attention-based explanations of vision transformers (timm's ViT / DeiT attention modules).

- ``attention_rollout``: Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020. Class-agnostic:
  the map does not depend on the target (a documented expected failure of the target-sensitivity check).
- ``transformer_attribution``: Chefer, Gur & Wolf, "Generic Attention-model Explainability for Interpreting
  Bi-Modal and Encoder-Decoder Transformers", ICCV 2021 (the self-attention rule, eq. 5-6): attention weighted by
  its gradient w.r.t. the target logit, accumulated through the blocks.

Both read the attention weights with hooks (:func:`interpbench.ops.hooks.capture_attention`, which switches timm's
fused attention off while explaining and restores it), take the classifier's row of the relevance matrix over the
patch tokens (the class token's row; the mean of the patch rows for an average-pooled model), fold it into the
patch grid and upsample it bilinearly to the input, as the reference implementations do.
"""

from __future__ import annotations

import torch

from interpbench.core.base import Method, NotApplicable
from interpbench.methods.cam import upsample_maps
from interpbench.methods.gradients import check_batch, finite_maps, target_logits
from interpbench.ops.hooks import attention_modules, capture_attention
from interpbench.ops.tokens import (
    TokenGrid,
    attention_relevance,
    attention_rollout,
    class_row,
    patch_grid,
    token_grid_of,
)


def transformer_layout(method: str, model) -> TokenGrid:
    """The model's token layout; NotApplicable unless it is a ViT-style transformer with readable attention."""
    spec = getattr(model, "spec", type(model).__name__)
    layout = token_grid_of(model)
    net = getattr(model, "net", model)
    if layout is None or layout.channels_last or not attention_modules(net):
        why = ("its attention is windowed (Swin): no global token-to-token matrix" if layout is not None
               and layout.channels_last else "it has no ViT-style self-attention blocks (timm's Attention)")
        raise NotApplicable(
            f"{method}: model {spec!r} is not applicable: {why}; use a ViT/DeiT-style transformer, or a "
            "layer-based method (gradcam, scorecam) for other models"
        )
    return layout


def relevance_maps(method: str, model, layout: TokenGrid, relevance: torch.Tensor,
                   size: tuple[int, int]) -> torch.Tensor:
    """``B x N x N`` relevance -> ``B x H x W`` maps: the classifier's row over the patches, folded, upsampled."""
    row = class_row(relevance, layout.prefix, layout.pool)
    grid = patch_grid(row.shape[1], layout.grid, size)
    if grid is None:
        raise NotApplicable(f"{method}: {row.shape[1]} patch tokens do not fold into a grid for {size[0]}x{size[1]} "
                            f"images (model {getattr(model, 'spec', type(model).__name__)!r})")
    maps = row.reshape(row.shape[0], *grid)
    return finite_maps(method, model, upsample_maps(maps, size))


def captured_attention(method: str, model, weights: list[torch.Tensor]) -> list[torch.Tensor]:
    if not weights:
        raise NotApplicable(f"{method}: no attention weights were recorded in the forward pass of "
                            f"{getattr(model, 'spec', type(model).__name__)!r}")
    shapes = {tuple(w.shape[-2:]) for w in weights}
    if len(shapes) != 1:
        raise NotApplicable(f"{method}: the blocks attend over different token counts {sorted(shapes)}; rollout "
                            "needs one token sequence through all blocks")
    return weights


class AttentionRollout(Method):
    """Attention rollout (Abnar & Zuidema 2020): heads averaged, ``(1 - residual) A + residual I`` with rows
    renormalised, multiplied through the blocks; the class token's row over the patches.

    Independent of the target class by construction (the same map for every class).
    """

    name = "attention_rollout"
    version = "1"
    requires_grad = False
    deterministic = True
    defaults = {"residual": 0.5}
    # the conformance checks (interpbench.testing.check_method) on a transformer: the map ignores the target
    expected_failures = {"target_sensitivity": "attention rollout is class-agnostic by construction (Abnar & "
                                               "Zuidema 2020; Chefer et al. 2021, sec. 1)"}

    def explain(self, model, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        check_batch(self.name, model, images, targets)
        layout = transformer_layout(self.name, model)
        with torch.no_grad(), capture_attention(getattr(model, "net", model), detach=True) as weights:
            model(images)
        attentions = captured_attention(self.name, model, weights)
        relevance = attention_rollout(attentions, float(self.params["residual"]))
        return relevance_maps(self.name, model, layout, relevance, tuple(images.shape[-2:]))


class TransformerAttribution(Method):
    """Gradient-weighted attention relevance (Chefer et al. ICCV 2021): ``R = I``; per block
    ``R += E_h[(dS/dA * A)^+] R`` with S the target logit; the class token's row over the patches."""

    name = "transformer_attribution"
    version = "1"
    requires_grad = True
    deterministic = True
    defaults: dict = {}

    def explain(self, model, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = check_batch(self.name, model, images, targets)
        layout = transformer_layout(self.name, model)
        x = images.detach().clone().requires_grad_(True)  # keeps the weights in the graph with frozen parameters
        with torch.enable_grad(), capture_attention(getattr(model, "net", model)) as weights:
            logits = model(x)
        attentions = captured_attention(self.name, model, weights)
        selected = target_logits(self.name, logits, targets)
        gradients = torch.autograd.grad(selected.sum(), attentions, allow_unused=True)
        gradients = [torch.zeros_like(a) if g is None else g for a, g in zip(attentions, gradients)]
        relevance = attention_relevance([a.detach() for a in attentions], gradients)
        return relevance_maps(self.name, model, layout, relevance, tuple(images.shape[-2:]))
