"""Built-in metrics, one module per family; registered like any third-party plugin."""

from ..hookspecs import hookimpl


@hookimpl
def register_metrics():
    from .ablation import UnitAblation
    from .adversarial import AdversarialClassConsistency, AdversarialConsistency, AdversarialDetection
    from .causal import Deletion, Insertion
    from .dissection import Dissection
    from .drift import ExplanationDrift, UnitDrift
    from .localization import (EnergyPointingGame, EnergyPointingGameMasks, GridPointingGame, PointingGame,
                               ShortcutLocalization)
    from .net2vec import Net2Vec
    from .road import RoadLeRF, RoadMoRF

    return [Deletion, Insertion, Dissection, Net2Vec, PointingGame, EnergyPointingGame, EnergyPointingGameMasks,
            GridPointingGame,
            ShortcutLocalization, AdversarialDetection, AdversarialConsistency, AdversarialClassConsistency, UnitDrift,
            ExplanationDrift,
            RoadMoRF, RoadLeRF, UnitAblation]
