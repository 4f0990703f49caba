"""The README's commands and CI: CI runs exactly the README's test command, which installs what the tests use."""

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands():
    """The two commands of the README's "Two commands" section (run the default experiment, run the tests)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)
    assert len(blocks) == 2 and all("\n" not in b for b in blocks), "the section holds two one-line bash commands"
    return blocks


def _toml(path):
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        from pip._vendor import tomli as tomllib
    return tomllib.loads(path.read_text())


def _declared(requirements):
    """Distribution names (normalised) of requirement strings, with everything they require, as installed."""
    from importlib import metadata

    from packaging.requirements import Requirement

    def norm(name):
        return re.sub(r"[-_.]+", "-", name).lower()

    todo = [Requirement(r).name for r in requirements]
    seen = set()
    while todo:
        name = norm(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            todo += [Requirement(r).name for r in metadata.requires(name) or [] if "extra ==" not in r]
        except metadata.PackageNotFoundError:
            pass
    return seen


def test_ci_runs_exactly_the_readme_test_command_and_it_installs_what_the_tests_use():
    import ast
    import sys
    from importlib import metadata

    install, test_cmd = readme_commands()
    assert install.startswith("python3 -m venv .venv") and install.endswith("&& interpbench run")
    # CI: the README's test command verbatim, after nothing but shell options, the repository root and removing a
    # stale virtual environment (a clean checkout has none)
    lines = [x.split("  #")[0].strip() for x in (ROOT / ".ci" / "run").read_text().splitlines()]
    lines = [x for x in lines if x and not x.startswith("#")]
    assert lines == ["set -euo pipefail", 'cd "$(dirname "$0")/.."', "rm -rf .venv", test_cmd]

    steps = [s.strip() for s in test_cmd.split("&&")]
    assert steps[-1] == "pytest"  # the whole suite, no -k / -m that would leave a test out
    # system packages: every executable a test runs is installed by the command's apt-get step
    apt = next(s for s in steps if " apt-get install " in f" {s} ")
    packages = set(apt.split("install", 1)[1].split()) - {"-y"}
    test_files = sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "plugins").glob("*/tests/*.py"))
    sources = {p: p.read_text() for p in test_files}
    used = {m for text in sources.values() for m in re.findall(r"""which\(\s*["']([\w.-]+)["']""", text)}
    used |= {b for b in SYSTEM_PACKAGES if any(f'"{b}"' in text for text in sources.values())}
    assert "chromium" in used  # the report's browser test, mandatory (never skipped)
    for binary in used:
        assert binary in SYSTEM_PACKAGES, f"a test runs {binary!r}: add its Debian package to SYSTEM_PACKAGES"
        assert SYSTEM_PACKAGES[binary] in packages, f"the README's test command does not install {binary!r}"
    # Python packages: every third-party module a test imports comes with interpbench, its [test] extra or the
    # plugins the command installs
    pip = next(s for s in steps if s.startswith("pip install"))
    targets = shlex.split(pip)[2:]
    assert targets[0] == "-e" and targets[1].startswith(".[")
    extras = targets[1][2:-1].split(",")
    project = _toml(ROOT / "pyproject.toml")["project"]
    assert set(extras) <= set(project["optional-dependencies"]), extras
    requirements = list(project["dependencies"]) + [r for e in extras for r in project["optional-dependencies"][e]]
    installed = {"interpbench"}
    for plugin in targets[2:]:
        if plugin == "-e":
            continue
        meta = _toml(ROOT / plugin / "pyproject.toml")["project"]
        installed.add(meta["name"])
        requirements += meta.get("dependencies", []) + meta.get("optional-dependencies", {}).get("test", [])
    provided = _declared(requirements) | installed | {"pip"}  # python3 -m venv ships pip
    local = {p.stem for p in test_files} | {"conftest"}
    distributions = metadata.packages_distributions()
    for path, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in local:
                    continue
                dists = {re.sub(r"[-_.]+", "-", d).lower() for d in distributions.get(top, [top])}
                assert dists & provided, (f"{path.relative_to(ROOT)} imports {top!r}, which the README's test command "
                                          "does not install: add it to the [test] extra of pyproject.toml")


# executables the tests run -> the Debian package that provides them
SYSTEM_PACKAGES = {"chromium": "chromium", "chromium-browser": "chromium", "pdflatex": "texlive-latex-recommended"}
