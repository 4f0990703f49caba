"""Unit ablation: remove units of one layer and measure what the classifier loses.

References: Bau, Zhu, Strobelt, Lapedriza, Zhou & Torralba, "Understanding the role of individual units in a deep
neural network" (PNAS 2020): single-unit removal ranks the units of a layer per class (on one split of the data),
and removing a class's most important units (measured on the other split) destroys that class while the others
barely move. Morcos, Barrett, Rabinowitz & Botvinick, "On the importance of single directions for generalization"
(ICLR 2018): accuracy as a growing number of units is removed, and the class selectivity index.

The layer's activations ``A`` (``N x U x h x w``) are computed once; an ablation is a keep-mask ``m`` over the
units and the ablated activations are ``m * A + (1 - m) * fill`` (``fill`` zero, or each unit's dataset mean). Only
the part of the network after the layer (the *tail*) runs again, on a batch holding many masks at once: one batch
element per (mask, image) pair.

The tail comes from :func:`tail_module`: a ``torch.fx`` trace of the network with the layer kept as one node,
cut after that node. It exists when nothing after the layer reads a value computed before it (no skip connection
around the layer) and the trace runs; otherwise :class:`TailRunner` falls back to whole-network passes with a forward
hook that substitutes the ablated activations (correct for every model, at the cost of a full forward per
ablation).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from interpbench.core.base import ComponentError
from interpbench.ops.drift import rank_correlation_rows

# --------------------------------------------------------------------------------------------- tail of a network


def tail_module(root: nn.Module, layer: str) -> tuple[nn.Module | None, str]:
    """``(tail, why)``: a module mapping the output of ``root``'s submodule ``layer`` to ``root``'s output, or
    ``(None, reason)`` when the network cannot be cut there (fx cannot trace it, the layer runs more than once, or a
    later operation reads a value computed before the layer, e.g. a residual connection around it)."""
    import torch.fx as fx

    leaves, functions = _notrace()

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            if qualname == layer:
                return True
            if layer.startswith(qualname + ".") or qualname == "":
                return False  # trace into the layer's ancestors so that the layer is one node
            return isinstance(m, leaves) or super().is_leaf_module(m, qualname)

    try:
        graph = _Tracer(autowrap_functions=functions).trace(root)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: no tail, use the hook fallback
        return None, f"torch.fx cannot trace the model ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    nodes = list(graph.nodes)
    cuts = [i for i, n in enumerate(nodes) if n.op == "call_module" and n.target == layer]
    if len(cuts) != 1:
        return None, f"layer {layer!r} runs {len(cuts)} times in the traced graph (not once)"
    cut = cuts[0]
    before = set(nodes[:cut])
    tail_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {nodes[cut]: tail_graph.placeholder("activations")}
    for node in nodes[cut + 1:]:
        for arg in node.all_input_nodes:
            if arg in before and arg.op != "get_attr":
                return None, f"{node.name!r} after layer {layer!r} reads {arg.name!r} computed before it (a skip path)"
        for arg in node.all_input_nodes:
            if arg.op == "get_attr" and arg not in env:
                env[arg] = tail_graph.node_copy(arg, lambda n: env[n])
        env[node] = tail_graph.node_copy(node, lambda n: env[n])
    tail_graph.lint()
    return fx.GraphModule(root, tail_graph), "fx tail"


def _notrace() -> tuple[tuple[type, ...], tuple[Callable, ...]]:
    """The modules and functions timm keeps opaque to torch.fx (data-dependent control flow inside), if timm is
    installed: traced as single calls, so timm models can be cut after a layer too."""
    try:
        from timm.layers import _fx
    except Exception:  # noqa: BLE001 - timm absent or without fx helpers
        return (), ()
    return tuple(_fx.get_notrace_modules()), tuple(_fx.get_notrace_functions())


class TailRunner:
    """Logits of the network with ``layer``'s output replaced: ``runner(ablated, images)``.

    ``mode`` is ``"tail"`` (only the part after the layer runs; ``images`` unused) or ``"hook"`` (the whole network
    runs on ``images`` and a forward hook returns ``ablated`` as the layer's output). ``forward`` maps images in
    ``[0, 1]`` to logits (the model, with its normalisation); ``root`` is the network that holds ``layer`` and
    ``prepare`` maps images to ``root``'s input (e.g. the normalisation).
    """

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], root: nn.Module, layer: str, *,
                 mode: str = "auto") -> None:
        if mode not in ("auto", "tail", "hook"):
            raise ComponentError(f"unit ablation: tail mode {mode!r} must be 'auto', 'tail' or 'hook'")
        self.forward, self.root, self.layer = forward, root, layer
        modules = dict(root.named_modules())
        if layer not in modules:
            raise ComponentError(f"unit ablation: the model has no layer {layer!r}; list the names with "
                                 "dict(model.named_modules())")
        self.module = modules[layer]
        self.tail, self.why = (None, "hook mode asked for") if mode == "hook" else tail_module(root, layer)
        if mode == "tail" and self.tail is None:
            raise ComponentError(f"unit ablation: no tail pass for layer {layer!r}: {self.why}; use mode='hook'")
        self.mode = "tail" if self.tail is not None else "hook"

    def check(self, activations: torch.Tensor, logits: torch.Tensor) -> None:
        """Fall back to hook mode when the tail does not reproduce the network's logits on unablated activations
        (a trace that fixed a data-dependent branch)."""
        if self.mode != "tail":
            return
        with torch.no_grad():
            out = self.tail(activations.clone())
        if out.shape != logits.shape or not torch.allclose(out.float(), logits.float(), rtol=1e-4, atol=1e-4):
            self.tail, self.mode = None, "hook"
            self.why = "the traced tail does not reproduce the network's logits"

    @torch.no_grad()
    def __call__(self, ablated: torch.Tensor, images: torch.Tensor | None) -> torch.Tensor:
        if self.mode == "tail":
            return self.tail(ablated)
        if images is None or len(images) != len(ablated):
            raise ComponentError("unit ablation: hook mode needs the images behind each ablated activation")
        handle = self.module.register_forward_hook(lambda _m, _i, _o: ablated)
        try:
            return self.forward(images)
        finally:
            handle.remove()


# --------------------------------------------------------------------------------------------- masks and counts


def ablate(activations: torch.Tensor, keep: torch.Tensor, fill: torch.Tensor | None = None) -> torch.Tensor:
    """``(M*B) x U x h x w``: for each keep-mask ``keep[m]`` (``M x U``, 1 keeps a unit, 0 removes it) and image
    ``b``, ``keep * A_b + (1 - keep) * fill`` (``fill``: ``[U]``, default 0). Row ``m * B + b``."""
    m, u = keep.shape
    keep = keep.to(activations.dtype).view(m, 1, u, *([1] * (activations.dim() - 2)))
    out = activations.unsqueeze(0) * keep
    if fill is not None:
        out = out + (1 - keep) * fill.to(activations.dtype).view(1, 1, u, *([1] * (activations.dim() - 2)))
    return out.reshape(m * activations.shape[0], *activations.shape[1:])


def removal_masks(units: int, removed: Sequence[Sequence[int]], device: torch.device | str | None = None) -> torch.Tensor:
    """Float ``M x U`` keep-masks, mask ``m`` zero at the units ``removed[m]``."""
    keep = torch.ones(len(removed), units, device=device)
    for m, rows in enumerate(removed):
        if len(rows):
            keep[m, torch.as_tensor(list(rows), dtype=torch.long, device=device)] = 0
    return keep


def class_counts(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(correct, probability)``, float64 ``M x C`` from logits ``M x B x K`` and labels ``[B]``: per mask the number
    of images of class ``c`` classified as ``c``, and the sum of their softmax probabilities of ``c``."""
    m, b, _ = logits.shape
    hit = (logits.argmax(-1) == labels.view(1, b)).double()
    prob = logits.double().softmax(-1).gather(-1, labels.view(1, b, 1).expand(m, b, 1)).squeeze(-1)
    index = labels.view(1, b).expand(m, b)
    correct = torch.zeros(m, num_classes, dtype=torch.float64, device=logits.device).scatter_add_(1, index, hit)
    probability = torch.zeros(m, num_classes, dtype=torch.float64, device=logits.device).scatter_add_(1, index, prob)
    return correct, probability


def ablation_counts(runner: TailRunner, activations: torch.Tensor, images: torch.Tensor | None, labels: torch.Tensor,
                    keep: torch.Tensor, num_classes: int, *, fill: torch.Tensor | None = None,
                    max_rows: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class counts (see :func:`class_counts`) of every mask in ``keep`` (``M x U``) over the images whose layer
    activations are ``activations`` (``B x U x h x w``), the masks batched ``max_rows // B`` at a time (at least
    one) into tail passes of up to ``max_rows`` rows."""
    b = len(activations)
    step = max(1, max_rows // max(1, b))
    correct = torch.zeros(len(keep), num_classes, dtype=torch.float64, device=activations.device)
    probability = torch.zeros_like(correct)
    for start in range(0, len(keep), step):
        chunk = keep[start:start + step]
        ablated = ablate(activations, chunk, fill)
        repeated = None if images is None else images.repeat(len(chunk), *([1] * (images.dim() - 1)))
        logits = runner(ablated, repeated).reshape(len(chunk), b, -1)
        c, p = class_counts(logits, labels, num_classes)
        correct[start:start + step] = c
        probability[start:start + step] = p
    return correct, probability


# --------------------------------------------------------------------------------------------- rankings and indices


def class_selectivity(class_means: torch.Tensor) -> torch.Tensor:
    """Morcos et al. 2018's class selectivity index per unit, from ``U x C`` mean activations per class (each unit's
    activation averaged over positions, then over the class's images): ``(mu_max - mu_rest) / (mu_max + mu_rest)``,
    ``mu_max`` the largest class mean and ``mu_rest`` the mean of the other classes' means. 0 for a unit silent
    everywhere; in [0, 1] for non-negative activations."""
    if class_means.shape[1] < 2:
        raise ComponentError("class selectivity needs at least two classes")
    top, arg = class_means.max(dim=1)
    rest = (class_means.sum(dim=1) - top) / (class_means.shape[1] - 1)
    denominator = top + rest
    return torch.where(denominator != 0, (top - rest) / torch.where(denominator != 0, denominator, 1), 0.0)


def rank_units(accuracy_drop: torch.Tensor, probability_drop: torch.Tensor) -> torch.Tensor:
    """``C x U`` unit indices per class, most important first: by the drop in the class's accuracy when the unit
    alone is removed, ties broken by the drop in the class's mean true-class probability, then by unit index.
    Inputs ``U x C``."""
    units = accuracy_drop.shape[0]
    order = []
    for c in range(accuracy_drop.shape[1]):
        key = sorted(range(units), key=lambda u: (-float(accuracy_drop[u, c]), -float(probability_drop[u, c]), u))
        order.append(key)
    return torch.tensor(order, dtype=torch.long)


def powers_of_two(units: int) -> list[int]:
    """``[1, 2, 4, ...]`` up to ``units``, with ``units`` itself last."""
    ks, k = [], 1
    while k < units:
        ks.append(k)
        k *= 2
    return ks + [units]


def others_order(order: torch.Tensor, c: int) -> list[int]:
    """Units important to classes other than ``c``: round-robin over the other classes' rankings (each class's most
    important unit, then each one's second, ...), without repeats, without the units ``c`` ranks at the same depth
    or above. Returns every unit not ranked above for ``c`` once, in that order."""
    classes, units = order.shape
    seen: list[int] = []
    taken = set()
    for depth in range(units):
        for other in range(classes):
            if other == c:
                continue
            u = int(order[other, depth])
            if u not in taken:
                taken.add(u)
                seen.append(u)
    return seen


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either side is constant
    (:func:`interpbench.ops.drift.rank_correlation_rows` on one row)."""
    return float(rank_correlation_rows(x.reshape(1, -1), y.reshape(1, -1))[0])


def split_halves(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """Long ``[N]``: 0 (ranking half) or 1 (measurement half) per image, stratified: each class's images in a
    permutation seeded with ``seed``, the first ``ceil(n_c / 2)`` ranking, the rest measuring."""
    generator = torch.Generator().manual_seed(int(seed) % (2**63))
    split = torch.ones(len(labels), dtype=torch.long)
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        split[members[: (len(members) + 1) // 2]] = 0
    return split
