"""Forward-hook helpers: record what named submodules output, and always remove the hooks afterwards.

Used by the CAM methods (activations to differentiate) and by dissection (activations to threshold).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from interpbench.core.base import ComponentError


class OutputCapture:
    """What :func:`capture_outputs` recorded: the latest output of each module, and how often it ran.

    ``outputs[name]`` is the module's output on its last call (a tensor, or whatever the module returns).
    ``calls[name]`` counts the calls since the context was entered. ``modified_in_place(name)`` says whether a
    later in-place operation (e.g. ``ReLU(inplace=True)``) changed the recorded tensor after the module returned.
    """

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.outputs: dict[str, Any] = {}
        self.calls: dict[str, int] = {n: 0 for n in names}
        self._versions: dict[str, int] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self.outputs:
            raise ComponentError(
                f"layer {name!r} did not run during the forward pass (captured: {sorted(self.outputs)}); "
                "choose a layer that the model's forward() calls"
            )
        return self.outputs[name]

    def modified_in_place(self, name: str) -> bool:
        out = self.outputs.get(name)
        return isinstance(out, torch.Tensor) and out._version != self._versions[name]

    def _record(self, name: str, output: Any, detach: bool) -> None:
        if detach and isinstance(output, torch.Tensor):
            output = output.detach()
        self.outputs[name] = output
        self.calls[name] += 1
        if isinstance(output, torch.Tensor):
            self._versions[name] = output._version


@contextlib.contextmanager
def capture_outputs(modules: Mapping[str, nn.Module], *, detach: bool = False) -> Iterator[OutputCapture]:
    """Record the forward outputs of ``modules`` (name -> module) while the context is open.

    The hooks are removed on exit, also when the body raises. ``detach=True`` stores detached tensors (for
    statistics that need no gradient, e.g. dissection); the default keeps the autograd graph (for CAMs).
    """
    capture = OutputCapture(list(modules))
    handles = []
    try:
        for name, module in modules.items():
            hook = lambda _m, _inp, out, name=name: capture._record(name, out, detach)  # noqa: E731
            handles.append(module.register_forward_hook(hook))
        yield capture
    finally:
        for handle in handles:
            handle.remove()


def named_module(root: nn.Module, name: str, owner: str = "model") -> nn.Module:
    """``root``'s submodule called ``name`` (dotted path as in ``named_modules()``); ComponentError with close names."""
    modules = dict(root.named_modules())
    if name in modules:
        return modules[name]
    import difflib

    close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.5)
    raise ComponentError(
        f"{owner} has no layer {name!r}" + (f"; close matches: {close}" if close else "")
        + "; list the names with dict(model.named_modules())"
    )


# --------------------------------------------------------------------------------------------- guided backprop


@contextlib.contextmanager
def guided_relu_backward(root: nn.Module) -> Iterator[list[str]]:
    """While open, every ``nn.ReLU`` of ``root`` passes only positive gradients backwards (guided backprop).

    Springenberg et al. 2015, sec. 3.4: R_in = 1[x > 0] * max(R_out, 0). A forward hook on each ``nn.ReLU``
    registers a hook on the module's output tensor that clamps the incoming gradient at 0; the ReLU's own backward
    then applies the forward gate ``1[x > 0]``. This works for in-place ReLUs too (the tensor hook attaches to the
    ReLU's backward node). Yields the names of the hooked modules; the hooks are removed on exit.
    """
    names = [name for name, module in root.named_modules() if isinstance(module, nn.ReLU)]
    modules = dict(root.named_modules())
    handles = []

    def clamp_output_gradient(_module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(lambda grad: grad.clamp(min=0))

    try:
        for name in names:
            handles.append(modules[name].register_forward_hook(clamp_output_gradient))
        yield names
    finally:
        for handle in handles:
            handle.remove()


# Element-wise nonlinearities (functional and module forms all reach these torch functions) other than ReLU.
_NONLINEAR_FUNCTIONS = frozenset({
    "relu6", "hardtanh", "hardtanh_", "gelu", "silu", "silu_", "mish", "mish_", "hardswish", "hardswish_",
    "hardsigmoid", "hardsigmoid_", "sigmoid", "sigmoid_", "tanh", "tanh_", "elu", "elu_", "selu", "selu_", "celu",
    "celu_", "leaky_relu", "leaky_relu_", "softplus", "softsign", "prelu", "rrelu", "rrelu_", "glu", "logsigmoid",
    "softmax", "log_softmax", "threshold", "threshold_", "clamp", "clamp_", "clip", "clip_", "clamp_min",
    "clamp_min_", "erf", "exp", "exp_",
})
_RELU_FUNCTIONS = frozenset({"relu", "relu_"})


class NonlinearityLog:
    """What :func:`record_nonlinearities` saw: nonlinear torch functions called outside ``nn.ReLU`` modules.

    ``foreign`` lists ``(function, module name, module class)`` for nonlinearities other than ReLU (SiLU, GELU,
    sigmoid gates, ReLU6 = hardtanh, ...); ``functional_relus`` lists the modules that call ``relu`` themselves
    instead of through an ``nn.ReLU`` submodule. The module is the innermost one running at the call (``""`` =
    the root).
    """

    def __init__(self) -> None:
        self.foreign: list[tuple[str, str, str]] = []
        self.functional_relus: list[str] = []
        self.relu_modules: set[str] = set()

    @property
    def only_relu_modules(self) -> bool:
        return not self.foreign and not self.functional_relus

    def describe(self, limit: int = 3) -> str:
        """A short phrase naming the offending functions and modules, for error messages."""
        parts = [f"{fn} in module {mod or '<root>'!r} ({cls})" for fn, mod, cls in dict.fromkeys(self.foreign)][:limit]
        parts += [f"a functional relu in module {mod or '<root>'!r}" for mod in dict.fromkeys(self.functional_relus)][
            : max(0, limit - len(parts))
        ]
        return ", ".join(parts)


@contextlib.contextmanager
def record_nonlinearities(root: nn.Module) -> Iterator[NonlinearityLog]:
    """Record, during a forward pass of ``root``, which nonlinear torch functions run and in which modules.

    A ``TorchFunctionMode`` sees every torch function call; forward pre-/post-hooks on all submodules keep the
    stack of running modules, so a ``relu`` is attributed to an ``nn.ReLU`` module or flagged as functional.
    Hooks and the mode are removed on exit.
    """
    from torch.overrides import TorchFunctionMode

    log = NonlinearityLog()
    stack: list[tuple[str, nn.Module]] = []

    class _Mode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            if name in _RELU_FUNCTIONS or name in _NONLINEAR_FUNCTIONS:
                where, module = stack[-1] if stack else ("", root)
                if name in _RELU_FUNCTIONS:
                    if isinstance(module, nn.ReLU):
                        log.relu_modules.add(where)
                    else:
                        log.functional_relus.append(where)
                else:
                    log.foreign.append((name, where, type(module).__name__))
            return func(*args, **(kwargs or {}))

    def enter(name: str, module: nn.Module) -> None:
        stack.append((name, module))

    def leave() -> None:  # a forward hook must return None (a value would replace the module's output)
        if stack:
            stack.pop()

    handles = []
    try:
        for name, module in root.named_modules():
            handles.append(module.register_forward_pre_hook(lambda m, _i, name=name: enter(name, m)))
            handles.append(module.register_forward_hook(lambda _m, _i, _o: leave()))
        with _Mode():
            yield log
    finally:
        for handle in handles:
            handle.remove()


# --------------------------------------------------------------------------------------------- attention weights


def attention_modules(root: nn.Module) -> dict[str, nn.Module]:
    """The self-attention modules of ``root`` whose weights can be read: timm's ``Attention`` convention, a
    ``fused_attn`` switch and an ``attn_drop`` dropout applied to the softmax-normalised weights (ViT, DeiT, BEiT,
    EVA, ...), in module order."""
    return {name: m for name, m in root.named_modules()
            if hasattr(m, "fused_attn") and isinstance(getattr(m, "attn_drop", None), nn.Module)}


@contextlib.contextmanager
def capture_attention(root: nn.Module, *, detach: bool = False) -> Iterator[list[torch.Tensor]]:
    """While open, each forward pass of ``root`` appends every block's attention weights ``B x heads x N x N`` to
    the yielded list, in the order the blocks run.

    The fused path (``scaled_dot_product_attention``, which never materialises the weights) is switched off on
    each attention module, and a forward hook on its ``attn_drop`` (the identity in eval mode) records its input,
    the softmax output; ``detach=False`` keeps the autograd graph so gradients w.r.t. the weights can be taken.
    The switches are restored and the hooks removed on exit, also when the body raises.
    """
    modules = attention_modules(root)
    if not modules:
        raise ComponentError(
            f"{type(root).__name__} has no readable self-attention modules (timm's Attention: fused_attn and "
            "attn_drop); attention methods need a ViT-style transformer"
        )
    weights: list[torch.Tensor] = []
    saved = {name: m.fused_attn for name, m in modules.items()}
    handles = []

    def record(_module, inputs, _output):
        attn = inputs[0]
        weights.append(attn.detach() if detach else attn)

    try:
        for module in modules.values():
            module.fused_attn = False
            handles.append(module.attn_drop.register_forward_hook(record))
        yield weights
    finally:
        for handle in handles:
            handle.remove()
        for name, module in modules.items():
            module.fused_attn = saved[name]
