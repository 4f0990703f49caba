"""The contracts and the plumbing every other layer stands on: the component classes (``base``), the plugin hooks
(``hookspecs``) and manager (``registry``), named datasets and the spec grammar (``config``), the identity of runs
and files (``identity``), metric state (``state``) and table formatting (``tabular``).

Layer 0 of ``core < ops < datasets < models < (methods, metrics) < api < engine < (publish, testing) < commands``
(docs/design.md); nothing here imports from another layer.
"""
