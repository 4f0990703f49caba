"""Built-in metrics, one module per family; registered like any third-party plugin."""

from interpbench.core.hookspecs import hookimpl


@hookimpl
def register_metrics():
    from interpbench.metrics.ablation import UnitAblation
    from interpbench.metrics.adversarial import AdversarialDetection
    from interpbench.metrics.adversarial_consistency import (
        AdversarialClassConsistency,
        AdversarialConsistency,
    )
    from interpbench.metrics.causal import Deletion, Insertion
    from interpbench.metrics.dissection import Dissection
    from interpbench.metrics.explanation_drift import ExplanationDrift
    from interpbench.metrics.localization import (
        EnergyPointingGame,
        EnergyPointingGameMasks,
        GridPointingGame,
        PointingGame,
        ShortcutLocalization,
    )
    from interpbench.metrics.net2vec import Net2Vec
    from interpbench.metrics.road import RoadLeRF, RoadMoRF
    from interpbench.metrics.roar import Kar, Roar
    from interpbench.metrics.unit_drift import UnitDrift

    return [Deletion, Insertion, Dissection, Net2Vec, PointingGame, EnergyPointingGame, EnergyPointingGameMasks,
            GridPointingGame,
            ShortcutLocalization, AdversarialDetection, AdversarialConsistency, AdversarialClassConsistency, UnitDrift,
            ExplanationDrift,
            RoadMoRF, RoadLeRF, UnitAblation, Roar, Kar]
