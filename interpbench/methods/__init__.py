"""Built-in explanation methods, one module per family; registered like any third-party plugin."""

from ..hookspecs import hookimpl


@hookimpl
def register_methods():
    from .attention import AttentionRollout, TransformerAttribution
    from .baselines import CenterMap, RandomMap
    from .cam import GradCAM, GradCAMPlusPlus, ScoreCAM
    from .gradients import Gradient, GuidedBackprop, InputXGradient, IntegratedGradients, SmoothGrad
    from .occlusion import Occlusion
    from .perturbation import ExtremalPerturbation, MeaningfulPerturbation
    from .rise import RISE

    return [Gradient, GradCAM, RandomMap, CenterMap, InputXGradient, IntegratedGradients, SmoothGrad, GuidedBackprop,
            GradCAMPlusPlus, ScoreCAM, MeaningfulPerturbation, ExtremalPerturbation, RISE, Occlusion,
            AttentionRollout, TransformerAttribution]
