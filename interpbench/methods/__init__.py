"""Built-in explanation methods, one module per family; registered like any third-party plugin."""

from interpbench.core.hookspecs import hookimpl
from interpbench.methods.attention import AttentionRollout, TransformerAttribution
from interpbench.methods.baselines import CenterMap, RandomMap
from interpbench.methods.cam import GradCAM, GradCAMPlusPlus, ScoreCAM
from interpbench.methods.gradients import (
    Gradient,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    SmoothGrad,
)
from interpbench.methods.occlusion import Occlusion
from interpbench.methods.perturbation import (
    ExtremalPerturbation,
    MeaningfulPerturbation,
)
from interpbench.methods.rise import RISE


@hookimpl
def register_methods():
    return [Gradient, GradCAM, RandomMap, CenterMap, InputXGradient, IntegratedGradients, SmoothGrad, GuidedBackprop,
            GradCAMPlusPlus, ScoreCAM, MeaningfulPerturbation, ExtremalPerturbation, RISE, Occlusion,
            AttentionRollout, TransformerAttribution]
