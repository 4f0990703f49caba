"""The run engine: the experiment grid (``runner``), distributed runs (``distributed``), data feeding
(``feeding``), the results store (``store``) and the training recipes that make the second model of a pair
(``recipes``).

Loaded when a run starts, not by ``import interpbench``; it builds on ``api`` and the component packages and is
used by ``publish`` and ``commands`` (docs/design.md).
"""
