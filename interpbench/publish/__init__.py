"""From a results store to what a reader sees: leaderboards (``leaderboard``), paper tables (``tables``), the HTML
report (``report``), the terminal summary (``summary``) and re-runs of a committed experiment (``reproduce``).

Builds on the engine (docs/design.md); the command line in ``commands`` calls it.
"""
