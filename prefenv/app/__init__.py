"""The application layer: run folders, the text pipeline, evaluation, monitoring, reports, the CLI.

The only code allowed to import all three packages (the core ``prefenv``, ``agents`` and
``envs``); the core never imports it. See ``docs/pages/architecture.md``.
"""
