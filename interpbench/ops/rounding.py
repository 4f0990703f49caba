"""Rounding sensitivity: a perturbation that changes only the float rounding of a computation, and the tolerances
that ``interpbench reproduce`` derives from how much a number moves under it.

Two runs of the same code on two CPUs differ only where a reduction is summed in another order (another vector
width, blocking or thread count): each layer's output moves by a few units in the last place (ulp), and the
rest of the computation carries that on, sometimes amplifying it (an optimised mask, an attack that lands near a
decision boundary, an arg-max between near ties). :func:`rounding_noise` reproduces that cause directly, in the
spirit of Monte Carlo arithmetic (Parker, Pierce & Eggert, "Monte Carlo arithmetic", Comput. Sci. Eng. 2000;
Denis, de Oliveira Castro & Petit, "Verificarlo", ARITH 2016), at the granularity of modules: every floating
output of every leaf module is moved by independent noise of :data:`NOISE_ULPS` ulps of the tensor's mean
magnitude, which is what summing a reduction of a few hundred float32 terms in another order does (its error
grows as ``sqrt(k)`` ulps for ``k`` terms). Everything downstream (the methods' iterations, the metrics, the
detector's fits) then runs as it would on another machine, so the spread it shows is *measured*, per number.

The noise comes from its own generator: the global torch random stream, from which stochastic methods draw, is
never touched (another seed is a real change, not rounding).

:func:`sample_mean_tolerance`, :func:`scalar_tolerance` and :func:`moved_beyond_rounding` turn the measured
spread into a verdict (``docs/reproduce.md`` gives the reasoning and what a reader may conclude).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

#: Size of the rounding perturbation, in units in the last place of each tensor's dtype (8 ulps of float32 is
#: 2^-20, about 9.5e-7, of the tensor's mean magnitude).
NOISE_ULPS = 8.0
#: The tolerance of a mean over samples: this many standard errors of the rounding-only change of the mean
#: (a Gaussian exceeds 4 standard deviations with probability 6e-5).
K_MEAN = 4.0
#: The tolerance of a value without per-sample scores: this many times the largest change seen across the
#: rounding runs (with 2 runs, a rounding-only change exceeds it with probability about 0.1% for Gaussian
#: changes, 0.4% for heavy-tailed Student t with 2 degrees of freedom).
K_SCALAR = 20.0
#: Float32 resolution below which no change is judged: 2^-20 of the number's magnitude (8 float32 ulps) plus an
#: absolute 2^-30 (about 9e-10) for numbers at zero.
FLOOR_REL = 2.0 ** -20
FLOOR_ABS = 2.0 ** -30
#: Significance of the one-sided rank test that per-sample scores moved more than rounding moves them.
ALPHA = 0.001


def _perturb(value: Any, generators: dict[torch.device, torch.Generator], seed: int, ulps: float) -> Any:
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point() or value.numel() == 0:
            return value
        gen = generators.get(value.device)
        if gen is None:
            gen = generators[value.device] = torch.Generator(device=value.device).manual_seed(seed)
        scale = value.detach().abs().mean() * (ulps * torch.finfo(value.dtype).eps)
        noise = torch.randn(value.shape, generator=gen, device=value.device, dtype=value.dtype)
        return value + noise * scale
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_perturb(v, generators, seed, ulps) for v in value)
    if isinstance(value, list):
        return [_perturb(v, generators, seed, ulps) for v in value]
    return value


@contextmanager
def rounding_noise(seed: int, ulps: float = NOISE_ULPS) -> Iterator[None]:
    """While active, every floating output of every leaf ``nn.Module`` (in this process) gets independent
    Gaussian noise of ``ulps`` units in the last place of its dtype times the tensor's mean absolute value.

    The noise is differentiable (it is added), so gradients flow through the perturbed values as they would
    through another machine's. It draws from generators seeded with ``seed``, never from torch's global stream.
    """
    if ulps < 0:
        raise ValueError(f"rounding_noise: ulps={ulps} must be >= 0")
    generators: dict[torch.device, torch.Generator] = {}

    def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
        if next(module.children(), None) is not None:
            return None  # containers: their leaves are perturbed already
        return _perturb(output, generators, seed, ulps)

    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def floor(*magnitudes: float) -> float:
    """The float32 resolution of a number of these magnitudes: :data:`FLOOR_REL` times the largest, plus
    :data:`FLOOR_ABS`."""
    finite = [abs(m) for m in magnitudes if not math.isnan(m)]
    return FLOOR_REL * max(finite, default=0.0) + FLOOR_ABS


def sample_mean_tolerance(rounding_diffs: Sequence[np.ndarray], n: int, magnitude: float) -> tuple[float, float]:
    """Tolerance of a mean over ``n`` samples: ``(tolerance, scale)``.

    ``rounding_diffs`` holds, per rounding run, the per-sample differences (rounding run minus the plain run).
    Two runs that differ by rounding alone give a mean whose change has standard error ``rms(e) / sqrt(n)``
    (the per-sample changes ``e`` pooled over the runs); a change common to the samples shows instead as the
    mean change of a rounding run, so the scale is the larger of the two. The tolerance is :data:`K_MEAN`
    times the scale plus the float32 floor of ``magnitude``.
    """
    if n <= 0:
        raise ValueError(f"sample_mean_tolerance: n={n} must be positive")
    diffs = [np.asarray(e, np.float64) for e in rounding_diffs if len(e)]
    if not diffs:
        return floor(magnitude), 0.0
    pooled = np.concatenate(diffs)
    scale = max(float(np.sqrt(np.mean(pooled ** 2)) / math.sqrt(n)), max(abs(float(e.mean())) for e in diffs))
    return K_MEAN * scale + floor(magnitude), scale


def scalar_tolerance(rounding_values: Sequence[float], value: float, magnitude: float) -> tuple[float, float]:
    """Tolerance of a value without per-sample scores: ``(tolerance, scale)``, the scale being the largest
    ``|rounding run - plain run|`` and the tolerance :data:`K_SCALAR` times it plus the float32 floor. A rounding
    run that gave NaN where the plain run did not makes the value infinitely sensitive (tolerance inf)."""
    spreads = []
    for r in rounding_values:
        if math.isnan(r) or math.isnan(value):
            if math.isnan(r) != math.isnan(value):
                return math.inf, math.inf
            continue
        spreads.append(abs(r - value))
    scale = max(spreads, default=0.0)
    return K_SCALAR * scale + floor(magnitude, value), scale


def min_rank_test_p(n: int, m: int) -> float:
    """The smallest p-value the one-sided Mann-Whitney test of ``n`` against ``m`` values can give:
    ``1 / C(n + m, n)`` (all of the ``n`` above all of the ``m``)."""
    return 1.0 / math.comb(n + m, n) if n and m else 1.0


def moved_beyond_rounding(changes: np.ndarray, rounding_changes: np.ndarray) -> float:
    """p-value of the one-sided Mann-Whitney U test (Mann & Whitney 1947) that the per-sample changes
    ``|changes|`` (reproduction minus committed) tend to be larger than the per-sample changes that rounding
    alone makes (``|rounding_changes|``, rounding runs minus the plain run, pooled). 1.0 when no sample moved.
    Ties (unmoved samples on both sides) count one half, so a single sample that flipped where rounding moved
    none is not significant: rounding flips a near tie now and then, and one flip is no evidence."""
    from scipy import stats

    a = np.abs(np.asarray(changes, np.float64))
    b = np.abs(np.asarray(rounding_changes, np.float64))
    if not a.size or not (a > 0).any():
        return 1.0
    if not b.size:
        return 0.0
    return float(stats.mannwhitneyu(a, b, alternative="greater").pvalue)
