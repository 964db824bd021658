"""The core install (no text extra) runs the command line: nothing on its import path needs
transformers or peft (the README's main job installs `.[mujoco]` only)."""

from __future__ import annotations

import subprocess
import sys


def test_the_cli_parses_and_helps_without_transformers_or_peft() -> None:
    code = (
        "import sys\n"
        "sys.modules['transformers'] = None\n"  # any import of it raises ImportError
        "sys.modules['peft'] = None\n"
        "from prefenv.app.cli import main\n"
        "assert main(['train', '--help']) == 0\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "--teacher" in run.stdout
