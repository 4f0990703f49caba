"""interpbench.publish.leaderboard: the sections of methods.md."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_metric_sections_use_a_metrics_own_layout_and_fall_back_when_it_fails(monkeypatch):
    import pandas as pd

    from interpbench.publish import leaderboard

    rows = [{"model": "m", "dataset": "d", "method": "x", "metric": metric, "value_name": name, "mean": 0.5,
             "ci_low": 0.4, "ci_high": 0.6, "n": 3, "higher_is_better": True, "status": "done", "error": None,
             "scope": "explanation", "wall_time": 0.0, "key": metric}
            for metric, name in (("mine", "mine"), ("mine", "extra"), ("broken", "broken"), ("plain", "plain"))]
    table = pd.DataFrame(rows)

    class Mine:
        @classmethod
        def leaderboard_markdown(cls, part):
            return f"custom layout of {len(part)} values\n"

    class Broken:
        @classmethod
        def leaderboard_markdown(cls, part):
            raise ValueError("boom")

    monkeypatch.setattr(leaderboard, "_metric_class", {"mine": Mine, "broken": Broken}.get)
    with pytest.warns(UserWarning, match="broken.leaderboard_markdown failed .ValueError: boom"):
        text = leaderboard.metric_sections(table)
    assert "## mine\n\ncustom layout of 2 values" in text
    assert "## broken\n\n| model | dataset | method | broken ↑ |" in text  # the generic table instead
    assert "## plain\n\n| model | dataset | method | plain ↑ |" in text
    # the headline summary keeps one column per metric (in the run's order), the value named after it
    assert list(leaderboard.headline_table(table).columns) == ["model", "dataset", "method", "mine ↑", "broken ↑",
                                                               "plain ↑"]
