"""The layer rule of the architecture, read from the source of every module.

Layers, bottom to top: the core ``prefenv`` (every module outside ``prefenv.app``), then ``agents``
and ``envs`` side by side, then the application layer ``prefenv.app``. An import may point down
or sideways inside its own package, never up; agents and envs never import each other. Imports
inside functions count (a lazy import does not change a layer), and so do string imports through
``importlib.import_module``. Also checked: no import cycle among the core's modules, and no module
over 400 lines without its reason written at its top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("prefenv", "agents", "envs")
LONG_MODULE_LINES = 400
LONG_MODULE_REASON = "over 400 lines"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def _imports(path: Path, name: str) -> set[str]:
    """Every module name ``path`` imports, at any depth, resolved to absolute names."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return found


def _layer(module: str) -> str | None:
    if module == "prefenv.app" or module.startswith("prefenv.app."):
        return "app"
    root = module.split(".")[0]
    if root == "prefenv":
        return "core"
    return root if root in ("agents", "envs") else None


ALLOWED = {
    "core": {"core"},
    "agents": {"core", "agents"},
    "envs": {"core", "envs"},
    "app": {"core", "agents", "envs", "app"},
}


def test_every_import_points_down_the_layers() -> None:
    wrong = []
    for name, path in _modules().items():
        layer = _layer(name)
        for imported in sorted(_imports(path, name)):
            target = _layer(imported)
            if target is not None and target not in ALLOWED[layer]:
                wrong.append(f"{path.relative_to(ROOT)} ({layer}) imports {imported} ({target})")
    assert not wrong, "wrong-way imports:\n" + "\n".join(wrong)


def test_the_rule_catches_a_lazy_wrong_way_import(tmp_path: Path) -> None:
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from agents.ppo_kl import PPOKL\n    return PPOKL\n")
    assert "agents.ppo_kl" in _imports(module, "prefenv.lazy")
    module.write_text("import importlib\nimportlib.import_module('envs')\n")
    assert "envs" in _imports(module, "prefenv.lazy")


def _core_graph() -> dict[str, set[str]]:
    modules = _modules()
    core = {name: path for name, path in modules.items() if _layer(name) == "core"}
    return {
        name: {
            imported
            for imported in _imports(path, name)
            if imported in core
            and imported != name
            and not name.startswith(imported + ".")
            and imported != "prefenv"
        }
        for name, path in core.items()
    }


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_among_core_modules() -> None:
    cycle = _find_cycle(_core_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("package", PACKAGES)
def test_long_modules_say_why_at_their_top(package: str) -> None:
    unexplained = []
    for path in sorted((ROOT / package).rglob("*.py")):
        source = path.read_text()
        lines = len(source.splitlines())
        if lines > LONG_MODULE_LINES:
            docstring = ast.get_docstring(ast.parse(source)) or ""
            if LONG_MODULE_REASON not in docstring.lower():
                unexplained.append(f"{path.relative_to(ROOT)} ({lines} lines)")
    assert not unexplained, (
        f"modules over {LONG_MODULE_LINES} lines without a reason in their docstring (write "
        f"'{LONG_MODULE_REASON}: <why>' at the top, or split them): {unexplained}"
    )
