"""The documentation site builds with warnings as errors and covers every module.

The build runs ``mkdocs build --strict -f docs/mkdocs.yml`` into a temporary folder (about 15 s),
once for the module; it needs the ``docs`` extra and is skipped, saying so, without it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ROOT / "docs" / "pages"
KEY_PAGES = (
    "index.html",
    "getting-started.html",
    "tasks/mujoco.html",
    "tasks/recommendation.html",
    "tasks/text.html",
    "data-flow.html",
    "teachers.html",
    "runs-and-cli.html",
    "plugging-in.html",
    "architecture.html",
    "reference/index.html",
)


def _public_modules() -> set[str]:
    """Dotted names of every public module of the three packages, read from the tree."""
    names = set()
    for package in ("prefenv", "agents", "envs"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            if not any(part.startswith("_") for part in parts):
                names.add(".".join(parts))
    return names


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason=f"{module} is not installed: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", "docs/mkdocs.yml"]
    result = subprocess.run(
        [*command, "-d", str(out)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-4000:]}"
    return out


def test_key_pages_are_built(site: Path) -> None:
    missing = [page for page in KEY_PAGES if not (site / page).is_file()]
    assert not missing, f"pages missing from the site: {missing}"


def test_api_reference_renders_docstrings(site: Path) -> None:
    page = (site / "reference" / "prefenv" / "wrappers.html").read_text(encoding="utf-8")
    assert "PreferenceReward" in page
    assert "VectorPreferenceReward" in page
    assert "info[&quot;true_reward&quot;]" in page or 'info["true_reward"]' in page


def test_api_reference_has_a_page_per_module(site: Path) -> None:
    reference = site / "reference"
    built = set()
    for path in reference.rglob("*.html"):
        parts = path.relative_to(reference).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "index" else parts
        if parts:
            built.add(".".join(parts))
    assert _public_modules() == built


def test_snippets_embed_the_examples(site: Path) -> None:
    html = (site / "plugging-in.html").read_text(encoding="utf-8")
    text = re.sub(r"<[^>]+>", "", html)  # the highlighter wraps every token in a span
    assert "class GoalReach(gym.Env):" in text, "examples/wrap_custom_env.py was not embedded"


def test_getting_started_copies_the_readme_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    page = (PAGES / "getting-started.md").read_text(encoding="utf-8")
    commands = re.findall(r"```bash\n(python3 -m venv .*?)\n```", readme)
    assert len(commands) == 2, "README.md should give the main-job and the test commands"
    for command in commands:
        assert command in page, f"docs/pages/getting-started.md lacks README's command {command!r}"


def test_the_readme_python_snippet_runs_as_written(tmp_path: Path) -> None:
    """Every README python block is run verbatim: a promise there is a tested one."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "README.md has no python block"
    for block in blocks:
        done = subprocess.run(
            [sys.executable, "-c", block],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")},
        )
        assert done.returncode == 0, f"README block failed:\n{block}\n{done.stderr[-2000:]}"
        if "train_reward_model" in block:
            accuracy = float(done.stdout.strip().splitlines()[-1])
            assert accuracy > 0.8, f"the README's reward model orders held-out pairs at {accuracy}"
        if "from prefenv.app import" in block:  # the Python train API: a whole run folder
            summary = json.loads((tmp_path / "runs" / "reacher" / "summary.json").read_text())
            final, evaluated = map(float, done.stdout.split())
            assert summary["final_true_return"] == final and evaluated < 0  # Reacher: distance
