"""The plugin manager: built-ins and third-party plugins, all through the ``interpbench`` entry-point group.

Entry points are loaded one at a time. A plugin that fails to import, or whose registration hook raises, is
recorded in ``Registry.failures`` (name, distribution, error) and the others keep working; ``strict=True`` makes
any failure fatal. Two components with one name are an error that names both plugins, raised when the name is
used (and listed by ``interpbench list plugins``).

Environment switches:
- ``INTERPBENCH_DISABLE_PLUGINS=a,b``: skip the entry points (or distributions) named a and b.
- ``INTERPBENCH_DISABLE_PLUGIN_AUTOLOAD=1``: load only interpbench's own built-ins.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata as md
import os
import traceback
from typing import Any, Iterable

import pluggy

from interpbench.core import hookspecs
from interpbench.core.base import ComponentError

GROUP = "interpbench"
SELF_DIST = "interpbench"
KINDS = ("methods", "metrics", "models", "datasets")


class PluginError(ComponentError):
    """A plugin could not be loaded or conflicts with another (strict mode, or a name used twice)."""


@dataclasses.dataclass(frozen=True)
class PluginInfo:
    name: str  # entry-point name
    dist: str  # distribution name
    version: str
    module: str

    @property
    def label(self) -> str:
        return f"{self.name} ({self.dist} {self.version})"


@dataclasses.dataclass
class Failure:
    plugin: str
    dist: str
    error: str
    detail: str = ""

    def __str__(self) -> str:
        return f"plugin {self.plugin!r} from {self.dist}: {self.error}"


@dataclasses.dataclass
class Entry:
    cls: Any
    plugin: PluginInfo
    conflict: PluginInfo | None = None


def _env_list(var: str) -> set[str]:
    return {x.strip() for x in os.environ.get(var, "").split(",") if x.strip()}


def _truthy(var: str) -> bool:
    return os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}


class Registry:
    """Everything the installed plugins provide, by kind and name."""

    def __init__(
        self,
        *,
        strict: bool = False,
        autoload: bool | None = None,
        disabled: Iterable[str] | None = None,
        extra_plugins: Iterable[tuple[str, Any]] = (),
    ) -> None:
        self.strict = strict
        self.autoload = (not _truthy("INTERPBENCH_DISABLE_PLUGIN_AUTOLOAD")) if autoload is None else autoload
        self.disabled = set(disabled) if disabled is not None else _env_list("INTERPBENCH_DISABLE_PLUGINS")
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.failures: list[Failure] = []
        self._components: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        self._load_entry_points()
        for name, module in extra_plugins:
            self._register(module, PluginInfo(name, "<in-process>", "", getattr(module, "__name__", name)))
        self._collect()

    # ------------------------------------------------------------------ loading

    def _fail(self, plugin: str, dist: str, exc: BaseException) -> None:
        failure = Failure(plugin, dist, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        self.failures.append(failure)
        if self.strict:
            raise PluginError(f"{failure} (strict mode: fix or uninstall the plugin, or run without --strict)")

    def _load_entry_points(self) -> None:
        eps = sorted(md.entry_points(group=GROUP), key=lambda ep: (ep.dist.name if ep.dist else "", ep.name))
        for ep in eps:
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            if ep.name in self.disabled or dist in self.disabled:
                continue
            if not self.autoload and dist != SELF_DIST:
                continue
            info = PluginInfo(ep.name, dist, version, ep.value)
            if ep.name in self.plugins:
                other = self.plugins[ep.name]
                if other.module == ep.value:  # the same distribution seen twice on sys.path
                    continue
                self._fail(ep.name, dist, PluginError(f"entry point name {ep.name!r} is also used by {other.label}"))
                continue
            try:
                module = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import error of a plugin is reported, not raised
                self._fail(ep.name, dist, exc)
                continue
            self._register(module, info)

    def _register(self, module: Any, info: PluginInfo) -> None:
        try:
            self.pm.register(module, name=info.name)
        except Exception as exc:  # noqa: BLE001 - e.g. a hookimpl with a wrong signature
            self._fail(info.name, info.dist, exc)
            return
        self.plugins[info.name] = info

    def _collect(self) -> None:
        for kind in KINDS:
            caller = getattr(self.pm.hook, f"register_{kind}")
            for impl in caller.get_hookimpls():  # registration order
                info = self.plugins[impl.plugin_name]
                try:
                    items = list(impl.function() or [])
                except Exception as exc:  # noqa: BLE001
                    self._fail(info.name, info.dist, exc)
                    continue
                for cls in items:
                    name = getattr(cls, "name", "")
                    if not name:
                        self._fail(info.name, info.dist, PluginError(f"register_{kind} returned {cls!r} without a .name"))
                        continue
                    table = self._components[kind]
                    if name in table:
                        first = table[name]
                        first.conflict = info
                        self._fail(
                            info.name,
                            info.dist,
                            PluginError(f"{kind[:-1]} name {name!r} is registered by both {first.plugin.label} and {info.label}"),
                        )
                        continue
                    table[name] = Entry(cls, info)

    # ------------------------------------------------------------------ lookup

    def names(self, kind: str) -> list[str]:
        return sorted(self._components[kind])

    def entries(self, kind: str) -> dict[str, Entry]:
        return dict(sorted(self._components[kind].items()))

    def get(self, kind: str, name: str) -> Any:
        table = self._components[kind]
        if name not in table:
            if kind == "datasets":
                raise ComponentError(unknown_message("dataset loader", name, table, listing="loaders"))
            raise ComponentError(unknown_message(kind[:-1], name, table))
        entry = table[name]
        if entry.conflict is not None:
            raise PluginError(
                f"{kind[:-1]} name {name!r} is registered by both {entry.plugin.label} and {entry.conflict.label}; "
                f"uninstall one of them or disable one with INTERPBENCH_DISABLE_PLUGINS={entry.plugin.name} or "
                f"INTERPBENCH_DISABLE_PLUGINS={entry.conflict.name}"
            )
        return entry.cls

    def plugin_of(self, kind: str, name: str) -> PluginInfo:
        return self._components[kind][name].plugin

    def resolve_weights(self, source: str, name: str, tag: str | None) -> Any:
        return self.pm.hook.resolve_weights(source=source, name=name, tag=tag)


def unknown_message(kind: str, name: str, known: Iterable[str], listing: str | None = None) -> str:
    known = list(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {kind} {name!r}.{hint} Run `interpbench list {listing or kind + 's'}` to see what is installed."


_REGISTRY: Registry | None = None


def get_registry(refresh: bool = False, **kwargs: Any) -> Registry:
    """The process-wide registry, built on first use (never at import time)."""
    global _REGISTRY
    if _REGISTRY is None or refresh or kwargs:
        _REGISTRY = Registry(**kwargs)
    return _REGISTRY
