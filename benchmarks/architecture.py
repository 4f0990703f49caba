"""Print the shape of the package: modules per folder, the largest modules, imports inside functions, the
internal import graph's circles and the imports that run against the layer rule.

    python benchmarks/architecture.py            # a summary
    python benchmarks/architecture.py --edges    # and every internal import that breaks the rule

The layer rule is the one `tests/test_architecture.py` enforces (docs/design.md explains it). This script reads
files as text (``ast``), imports nothing from the package, and works on any checkout, so the same command gives the
figures before and after a change of layout.
"""

from __future__ import annotations

import argparse
import ast
import collections
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "interpbench"

# Lower number = lower layer. A module may import from its own layer's folder (within a folder) and from any lower
# layer. Top-level files are placed by name; anything unlisted is reported as "unplaced".
LAYERS = {
    "core": 0,
    "ops": 1,
    "datasets": 2,
    "models": 3,  # a model may be built from the dataset it was trained on (the shapes world)
    "methods": 4,
    "metrics": 4,  # peers: a metric never imports a method, nor a method a metric
    "api": 5,
    "package": 5,  # ``interpbench`` itself: the public API (its __init__ re-exports api and core)
    "engine": 6,
    "publish": 7,
    "testing": 7,
    "commands": 8,
}


def module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> list[str]:
    if node.level:
        base = mod.split(".")
        if not is_pkg:
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not target.startswith("interpbench"):
        return []
    # `from pkg import name` may name a submodule: count it as importing that submodule when one exists.
    return [target] + [f"{target}.{a.name}" for a in node.names]


def imports(known: dict[str, pathlib.Path]):
    """Yield (importer, imported, lineno, inside_function) for every internal import."""
    for mod, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_pkg = path.name == "__init__.py"
        parents: dict[ast.AST, ast.AST] = {}
        for parent in ast.walk(tree):
            for child in ast.iter_child_nodes(parent):
                parents[child] = parent
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("interpbench")]
            elif isinstance(node, ast.ImportFrom):
                targets = _resolve(mod, is_pkg, node)
            else:
                continue
            inside = False
            typing_only = False
            up = parents.get(node)
            while up is not None:
                if isinstance(up, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    inside = True
                if isinstance(up, ast.If) and "TYPE_CHECKING" in ast.unparse(up.test):
                    typing_only = True
                up = parents.get(up)
            if typing_only:
                continue
            seen = set()
            for t in targets:
                while t and t not in known:
                    t = t.rpartition(".")[0]
                if t and t != mod and t not in seen:
                    seen.add(t)
                    yield mod, t, node.lineno, inside


def layer_of(mod: str) -> tuple[str, int | None]:
    parts = mod.split(".")
    key = "package" if len(parts) == 1 else "package" if parts[1] == "__main__" else parts[1]
    return key, LAYERS.get(key)


def against_rule(src: str, dst: str) -> bool:
    """True when ``src`` may not import ``dst``: only modules of a lower layer, or of its own folder."""
    (sk, sl), (dk, dl) = layer_of(src), layer_of(dst)
    if sl is None or dl is None:
        return False  # reported separately as unplaced
    if sk == dk:
        return False
    if sk == "package":
        return False  # the package's own __init__ and __main__ re-export the API and start the command line
    return dl >= sl


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def analyse() -> dict:
    known = modules()
    edges: dict[str, set[str]] = collections.defaultdict(set)
    inside: set[tuple[str, int]] = set()  # import statements inside functions (one statement may name several)
    against = []
    for src, dst, line, in_function in imports(known):
        if in_function:
            inside.add((src, line))
        # A package __init__ that re-exports its own submodules is not a circle with them.
        if not (src.split(".")[-1] != dst.split(".")[-1] and dst.startswith(src + ".")):
            edges[src].add(dst)
        if against_rule(src, dst):
            against.append((src, dst, line))
    per_folder = collections.Counter(
        layer_of(m)[0] if len(m.split(".")) > 2 or known[m].name == "__init__.py" and len(m.split(".")) > 1
        else "interpbench/" for m in known
    )
    sizes = sorted(((len(p.read_text().splitlines()), m) for m, p in known.items()), reverse=True)
    unplaced = sorted({layer_of(m)[0] for m in known if layer_of(m)[1] is None and layer_of(m)[0] != "package"})
    return {
        "modules": len(known),
        "per_folder": per_folder,
        "sizes": sizes,
        "inside": len(inside),
        "cycles": cycles(edges),
        "against": sorted(set(against)),
        "unplaced": unplaced,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", action="store_true", help="list every import against the layer rule")
    parser.add_argument("--largest", type=int, default=8, help="how many of the largest modules to list")
    args = parser.parse_args()
    a = analyse()
    print(f"modules: {a['modules']}")
    print("modules per folder: " + ", ".join(f"{k} {v}" for k, v in sorted(a["per_folder"].items())))
    print("largest: " + ", ".join(f"{m.removeprefix('interpbench.')} {n}" for n, m in a["sizes"][: args.largest]))
    print(f"modules over 500 lines: {sum(n > 500 for n, _ in a['sizes'])}")
    print(f"internal imports inside functions: {a['inside']}")
    print(f"import circles: {len(a['cycles'])}")
    for c in a["cycles"]:
        print("  " + " <-> ".join(m.removeprefix("interpbench.") for m in c))
    print(f"imports against the layer rule: {len(a['against'])}")
    if a["unplaced"]:
        print("top-level modules outside any layer folder: " + ", ".join(a["unplaced"]))
    if args.edges:
        for src, dst, line in a["against"]:
            print(f"  {src}:{line} -> {dst}")


if __name__ == "__main__":
    main()
