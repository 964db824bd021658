"""The application layer: run folders, the text pipeline, evaluation, monitoring, reports, the CLI.

The only code allowed to import all three packages (the core ``prefenv``, ``agents`` and
``envs``); the core never imports it. See ``docs/pages/architecture.md``.

Its Python API is the command line's: :func:`train`, :func:`resume` and :func:`evaluate`
(:mod:`prefenv.app.api`) take the same settings with the same defaults as ``prefenv train``;
:func:`run_sweep` runs a grid file as ``prefenv sweep`` does.
"""

from prefenv.app.api import evaluate, resume, run_sweep, train

__all__ = ["evaluate", "resume", "run_sweep", "train"]
