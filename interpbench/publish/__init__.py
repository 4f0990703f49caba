"""From a results store to what a reader sees: the store read into tables (``results``), each metric's headline
values (``headline``), leaderboards (``leaderboard``), paper tables (``tables``, laid out with ``grid``,
``ranking`` and ``selection``), the HTML report (``report``), the terminal summary (``summary``) and re-runs of a
committed experiment (``reproduce``, judged number by number by ``compare``).

Builds on the engine (docs/design.md); the command line in ``commands`` calls it.
"""
