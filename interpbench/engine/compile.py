"""``--compile``: a model's forward through ``torch.compile`` (engine layer, used by
:mod:`interpbench.engine.runner`): the options' check, the compiled forward that runs eager while hooks are
registered (:class:`CompiledForward`), and the fall-back to eager with its record for the manifest.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from interpbench.core.base import ComponentError, Model
from interpbench.engine.guards import describe_error

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")  # torch.compile modes (--compile MODE)


def check_compile_options(mode: str | None, backend: str) -> None:
    """ComponentError naming the option and the accepted values for a bad ``--compile`` / ``--compile-backend``."""
    if mode is not None and mode not in COMPILE_MODES:
        raise ComponentError(f"--compile {mode!r}: choose one of {list(COMPILE_MODES)}, or leave --compile off to run "
                             "eager")
    if mode is None and backend != "inductor":
        raise ComponentError(f"--compile-backend {backend!r} has no effect without --compile; add --compile (mode "
                             "'default') or drop --compile-backend")
    if mode is None:
        return
    from torch import _dynamo

    backends = _dynamo.list_backends(exclude_tags=())
    if backend not in backends:
        raise ComponentError(f"--compile-backend {backend!r}: choose one of {backends} (default 'inductor'; "
                             "'aot_eager' and 'eager' need no C++ compiler)")
    if mode != "default" and backend != "inductor":
        raise ComponentError(f"--compile {mode!r} is a mode of the 'inductor' backend; use --compile default with "
                             f"--compile-backend {backend!r}, or --compile-backend inductor")


COMPILE_SCOPE = ("the model's forward passes while no hook is registered on its modules; hooked passes (Grad-CAM "
                 "family, guided backprop, dissection) and a pair's model A run eager")


def _has_hooks(root: nn.Module) -> bool:
    """Whether a forward / backward hook is registered on ``root`` or a submodule, or globally."""
    from torch.nn.modules import module as nn_module

    if (nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks or nn_module._global_backward_hooks
            or nn_module._global_backward_pre_hooks):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for m in root.modules())


class CompiledForward:
    """``Model.forward`` through ``torch.compile`` while no hook is registered on the model's network, eager
    otherwise. With torch 2.14 a compiled module ignores forward hooks registered after its first call, and the
    output a hook records inside a compiled graph has no gradient path to the logits, so Grad-CAM on a compiled
    module is silently wrong; here every hooked pass runs the eager forward. A compile error at a later call (e.g.
    the first backward) switches the model to eager for good (``record``: status "fallback" and the error)."""

    def __init__(self, model: Model, compiled: Any, record: dict[str, Any]) -> None:
        self.model, self.eager, self.compiled, self.record = model, model.forward, compiled, record

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.compiled is None or _has_hooks(self.model.net):
            self.record["eager_calls"] += 1
            return self.eager(images)
        try:
            out = self.compiled(images)
        except Exception as exc:  # noqa: BLE001
            from torch._dynamo.exc import TorchDynamoException

            if not isinstance(exc, TorchDynamoException):
                raise
            self.compiled = None
            _fall_back(self.model, self.record, exc)
            return self(images)
        self.record["compiled_calls"] += 1
        return out


def _fall_back(model: Model, record: dict[str, Any], exc: BaseException) -> None:
    """Record a failed compile in the manifest record and warn: the model runs eager from here on."""
    record.update(status="fallback", error=describe_error(exc))
    warnings.warn(f"--compile: model {model.spec} falls back to eager: {record['error']}", RuntimeWarning, stacklevel=3)


def compile_model(model: Model, mode: str, backend: str, warmup: torch.Tensor | None = None) -> dict[str, Any]:
    """Route ``model``'s forward through ``torch.compile(mode, backend)`` (:class:`CompiledForward`), compiling
    once on ``warmup`` (no gradient). When compiling fails the model stays eager. Returns the manifest record:
    status "compiled" or "fallback" with the error, and the counts of compiled and eager calls."""
    record: dict[str, Any] = {"status": "compiled", "error": None, "compiled_calls": 0, "eager_calls": 0}
    try:
        compiled = torch.compile(model.forward, mode=mode, backend=backend)
        if warmup is not None:
            with torch.no_grad():
                compiled(warmup)
    except Exception as exc:  # noqa: BLE001 - an unsupported op, a missing compiler: this model runs eager
        compiled = None
        _fall_back(model, record, exc)
    model.forward = CompiledForward(model, compiled, record)  # an instance attribute: nn.Module calls it
    return record
