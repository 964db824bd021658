"""MkDocs hook: the API reference, one page per module of ``prefenv``, ``agents`` and ``envs``.

The pages are generated at build time from the package tree, so a module that is added, moved or
renamed needs no edit in ``docs/``: every build walks the three package folders again. Each page
is one mkdocstrings directive (``::: prefenv.wrappers``) rendered from the module's docstrings;
``reference/index.md`` lists every module with the first line of its docstring.

Loaded through ``hooks: [gen_ref.py]`` in ``docs/mkdocs.yml``: MkDocs calls :func:`on_config`
(adds the reference to the navigation) and :func:`on_files` (adds the generated pages). Nothing
is written to disk.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parents[1]
"""The repository root (this file lives in ``docs/``)."""

PACKAGES = ("prefenv", "agents", "envs")
"""The documented top-level packages: the core (with its application layer), agents, task families."""

REFERENCE = "reference"
"""Folder of the generated pages inside the docs dir."""

NAV_TITLE = "API reference"
"""Title of the generated navigation section."""

SPHINX_ROLE = re.compile(r":(?:attr|class|data|exc|func|meth|mod|obj):<code>(~?)([\w.]+)</code>")
"""A Sphinx role as the docstrings write it (``:class:`~prefenv.records.Segment```), once rendered."""


@dataclass(frozen=True)
class Module:
    """One documented module.

    Attributes:
        name: dotted import name, e.g. ``"prefenv.app.cli"``.
        page: its generated page relative to the docs dir, e.g. ``"reference/prefenv/app/cli.md"``;
            a package's page is the ``index.md`` of its folder.
        summary: first line of the module docstring (empty when it has none).
    """

    name: str
    page: str
    summary: str

    @property
    def parts(self) -> tuple[str, ...]:
        """The dotted name split, e.g. ``("prefenv", "app", "cli")``."""
        return tuple(self.name.split("."))


def _summary(path: Path) -> str:
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    lines = docstring.strip().splitlines()
    return lines[0] if lines else ""


def find_modules(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> list[Module]:
    """Every public module under ``packages``, each package before its submodules.

    A name part starting with ``_`` marks a private module or folder, which is skipped; a
    package's ``__init__.py`` documents the package itself.

    Args:
        root: folder holding the package folders.
        packages: top-level package names.

    Returns:
        The modules sorted by their dotted names' parts.

    Raises:
        PluginError: a folder with modules but no ``__init__.py`` (griffe, which reads the
            docstrings, cannot find modules in a namespace folder inside a package).
    """
    modules = []
    for package in packages:
        for path in (root / package).rglob("*.py"):
            if not (path.parent / "__init__.py").is_file():
                raise PluginError(
                    f"{path.parent.relative_to(root)} has modules but no __init__.py, so the API "
                    "reference cannot document them: add an __init__.py with a module docstring"
                )
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
                page = "/".join((REFERENCE, *parts, "index.md"))
            else:
                page = "/".join((REFERENCE, *parts)) + ".md"
            if not any(part.startswith("_") for part in parts):
                modules.append(Module(".".join(parts), page, _summary(path)))
    return sorted(modules, key=lambda module: module.parts)


def _nav_section(modules: list[Module], prefix: tuple[str, ...]) -> list[Any]:
    """Nav entries under the package ``prefix``: its own page first, then one entry per child.

    A child that is a plain module is a page; a child package is a nested section (its own page
    becomes the section's index through material's ``navigation.indexes``).
    """
    depth = len(prefix)
    modules = [m for m in modules if m.parts[:depth] == prefix]
    entries: list[Any] = [{m.name: m.page} for m in modules if m.parts == prefix]
    children = sorted({m.parts[: depth + 1] for m in modules if len(m.parts) > depth})
    for child in children:
        below = [m for m in modules if m.parts[: depth + 1] == child]
        if len(below) == 1 and below[0].parts == child and not below[0].page.endswith("index.md"):
            entries.append({below[0].name: below[0].page})
        else:
            entries.append({".".join(child): _nav_section(below, child)})
    return entries


def _index_page(modules: list[Module]) -> str:
    """``reference/index.md``: one table per top-level package, module -> first docstring line."""
    lines = [
        f"# {NAV_TITLE}",
        "",
        "Generated from the docstrings at every build: one page per module. Layers and how they",
        "fit together: [Architecture](../architecture.md).",
    ]
    for package in PACKAGES:
        lines += ["", f"## `{package}`", "", "| module | what |", "|---|---|"]
        for module in modules:
            if module.parts[0] == package:
                link = module.page.removeprefix(f"{REFERENCE}/")
                lines.append(f"| [`{module.name}`]({link}) | {module.summary.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def _module_page(module: Module) -> str:
    return f"::: {module.name}\n"


def _cross_reference(match: re.Match[str], module: str | None) -> str:
    """A rendered Sphinx role -> an optional autorefs link (plain code when it does not resolve).

    A dotted name is tried as written; a bare name is tried inside the page's module. ``~``
    shows only the last part, as in Sphinx.
    """
    short, name = match.group(1), match.group(2)
    shown = name.rpartition(".")[2] if short else name
    target = name if "." in name or module is None else f"{module}.{name}"
    return f'<autoref identifier="{target}" optional><code>{shown}</code></autoref>'


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Append the API reference to the navigation; point ``--8<--`` snippets at the repository.

    Snippets (``--8<-- "examples/wrap_custom_env.py"``) resolve against the repository root, so
    the build works from any working directory.
    """
    config.mdx_configs.setdefault("pymdownx.snippets", {})["base_path"] = [str(ROOT)]
    modules = find_modules()
    sections = [{package: _nav_section(modules, (package,))} for package in PACKAGES]
    config.nav = [*(config.nav or []), {NAV_TITLE: [f"{REFERENCE}/index.md", *sections]}]
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the generated reference pages to the site's files."""
    modules = find_modules()
    files.append(File.generated(config, f"{REFERENCE}/index.md", content=_index_page(modules)))
    for module in modules:
        files.append(File.generated(config, module.page, content=_module_page(module)))
    return files


def on_page_content(html: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Turn the docstrings' Sphinx roles into links the autorefs plugin resolves."""
    path = page.file.src_uri
    module = None
    if path.startswith(f"{REFERENCE}/") and path != f"{REFERENCE}/index.md":
        parts = path.removeprefix(f"{REFERENCE}/").removesuffix(".md").split("/")
        module = ".".join(parts[:-1] if parts[-1] == "index" else parts)
    return SPHINX_ROLE.sub(lambda match: _cross_reference(match, module), html)
