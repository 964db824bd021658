"""``prefenv`` command line: train from preferences, resume a killed run, evaluate, check an env.

    prefenv train --env prefenv/HalfCheetah-v0 --agent ppo-kl --teacher oracle \\
                  --queries 1000 --steps 1000000 --seed 0 --out runs/cheetah
    prefenv resume --out runs/cheetah
    prefenv eval --out runs/cheetah --episodes 10
    prefenv check prefenv/Hopper-v0
    prefenv sweep examples/sweep_quick.toml     # a grid of runs on a local Ray instance
    prefenv train --env prefenv/RecSlate-v0 --agent ppo-kl --reference popularity \\
                  --kl-coef 0.05 --queries 500 --steps 200000 --out runs/rec

With no options, ``prefenv train`` runs the short embedded default (HalfCheetah, PPO-KL, oracle
teacher, 250 queries, 100k steps): a few minutes on 2 CPU cores, no downloads. Your own env:
``prefenv train --import my_pkg --env my/Env-v0`` or ``--env my_pkg:my/Env-v0``.

Every command is a thin layer over :mod:`prefenv.app.api` (``train``, ``resume``, ``evaluate``);
errors are one line naming the option and the fix, exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

import gymnasium as gym

from prefenv.app import api
from prefenv.app.budget import BudgetWarning, plan_budget
from prefenv.app.fields import add_field_options, field_docs, from_options
from prefenv.app.presets import parse_hparams, read_hparams_file
from prefenv.app.runs import FINAL_EVAL_FILE, LOG_DIR, TrainingRun
from prefenv.app.spec import HUMAN, TrainSpec
from prefenv.human import NoLabelsError

__all__ = ["QUICKSTART", "main", "train_spec"]

QUICKSTART = TrainSpec()
"""The embedded default that ``prefenv train`` runs with no options (``TrainSpec``'s defaults)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``prefenv train: error: ... (see prefenv train --help)``.

    An unknown option is reported by the subcommand it was given to, with the closest option.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            command = self._innermost(parsed)
            unknown = " ".join(extra)
            options = [o for action in command._actions for o in action.option_strings]
            close = difflib.get_close_matches(extra[0].split("=")[0], options, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            command.error(f"unrecognized arguments: {unknown}{hint}")
        return parsed

    def _innermost(self, parsed: argparse.Namespace) -> argparse.ArgumentParser:
        """The (sub)parser of the command line's last subcommand."""
        parser: argparse.ArgumentParser = self
        while True:
            subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
            if not subs or getattr(parsed, subs[0].dest, None) is None:
                return parser
            parser = subs[0].choices[getattr(parsed, subs[0].dest)]


def _train_parser(sub: argparse._SubParsersAction) -> None:
    """``prefenv train``: one option per :class:`TrainSpec` field, its docstring the help."""
    parser = sub.add_parser("train", help="train an agent from preference feedback")
    add_field_options(
        parser, TrainSpec, defaults=QUICKSTART, flags={"imports": "--import"}, skip={"hparams"}
    )
    parser.add_argument(
        "--hparams", nargs="+", default=[], metavar="KEY=VALUE",
        help=f"{field_docs(TrainSpec)['hparams']} Values are JSON where they parse "
        "(256, -2.0, [128,128], true), else strings (default: the preset's)",
    )  # fmt: skip
    parser.add_argument(
        "--hparams-file", type=Path, default=None, metavar="FILE",
        help="TOML or JSON table of agent settings, applied before --hparams (default: none)",
    )  # fmt: skip
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/quickstart"),
        help="run folder (default: %(default)s)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (its files only; kept if the new start fails)",
    )


def train_spec(args: argparse.Namespace) -> TrainSpec:
    """The :class:`TrainSpec` of parsed ``prefenv train`` options (``--hparams-file``, then
    ``--hparams``, as its ``hparams``)."""
    hparams = read_hparams_file(args.hparams_file) if args.hparams_file else {}
    return from_options(TrainSpec, args, hparams={**hparams, **parse_hparams(args.hparams)})


def _cmd_train(args: argparse.Namespace) -> int:
    spec = train_spec(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BudgetWarning)
        run = api.start(spec, args.out, overwrite=args.overwrite)
    for warning in caught:  # budget problems: one line each, before the run starts
        if issubclass(warning.category, BudgetWarning):
            print(f"warning: {warning.message}", file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename,
                                 warning.lineno)  # fmt: skip
    spec, plan = run.spec, plan_budget(run.spec)
    settings = ", ".join(f"{k}={v}" for k, v in spec.hparams.items()) or "the agent's defaults"
    methods = [name for on, name in (
        (spec.unsupervised, "PEBBLE pre-training"), (spec.rune, "RUNE bonus"),
        (spec.query_window, f"QPA window {spec.query_window}"), (spec.surf, "SURF"),
        (spec.reed, "REED"), (spec.robust_labels, "RIME filter"), (spec.label_noise, f"label noise {spec.label_noise:g}"),
        (spec.label_smoothing, f"label smoothing {spec.label_smoothing or 0:g}"),
        (spec.segment_draw == "step", "segments drawn per step"),
    ) if on]  # fmt: skip
    print(
        f"prefenv train: {spec.env} | agent {spec.agent} | teacher {spec.teacher} | seed "
        f"{spec.seed}\n  run folder  {args.out}\n  budget      {spec.resolved_rounds()} rounds, "
        f"{plan.total:,} env steps (whole rollouts of {plan.unit:,}), {spec.queries} labels\n"
        f"  agent       {settings} (preset: {spec.preset})\n"
        f"  reward      {spec.ensemble}-member ensemble, {spec.reward_output} output, "
        f"{spec.query_method} queries\n"
        f"  feedback    {', '.join(methods) or 'every method off'}\n"
        f"  watch       tensorboard --logdir {args.out / LOG_DIR}\n"
        f"  if killed   prefenv resume --out {args.out}",
        flush=True,
    )
    if spec.teacher == HUMAN:
        print(
            f"  label it    prefenv label --run {args.out}   (in another terminal: people answer "
            f"while the agent trains; each round waits at most {spec.human_timeout:g} s, then "
            f"{spec.on_timeout}s)",
            flush=True,
        )
    return _finish(run, args.out)


def _finish(run: TrainingRun, out: Path) -> int:
    summary = run.run(progress=True)
    if run.paused:
        print(
            f"\npaused after round {run.loop.round}/{run.spec.resolved_rounds()}: its queries are still "
            f"waiting for people (--on-timeout pause). Label them (prefenv label --run {out}), "
            f"then: prefenv resume --out {out}"
        )
        return 0
    final = summary["final_true_return"]
    print(f"\nfinal true return: {'no episode finished' if final is None else f'{final:,.1f}'}")
    if summary.get("warning"):
        print(f"warning: {summary['warning']}")
    print(f"learning curve:    {out / 'learning_curve.png'}")
    print(f"summary:           {out / 'summary.md'} (and summary.json)")
    print(f"comparisons:       {out / 'comparisons.sqlite'} ({summary['labels_used']} queries)")
    if run.spec.teacher == HUMAN:
        print(f"labels trained on: {summary['labels_human']} from people, "
              f"{summary['labels_simulated']} simulated")  # fmt: skip
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    run = api.reopen(args.out)
    loop = run.loop
    if loop.done and run.spec.eval_episodes and not (args.out / FINAL_EVAL_FILE).exists():
        print(f"prefenv resume: {args.out}: every round is done; the final evaluation was cut "
              "short, running it", flush=True)  # fmt: skip
        return _finish(run, args.out)
    if loop.done:
        print(f"{args.out} is already complete ({loop.round} rounds)")
        run.write_summary()
        run.store.close()
        return 0
    restored = (
        f"restored round {loop.round}/{run.spec.resolved_rounds()}, {loop.timesteps:,} env steps, "
        f"{loop.labels_used} labels (store: {len(run.store)} comparisons)"
        if loop.round
        else f"no round had finished: starting again from run.json, {len(run.store)} stored "
        "comparisons kept and reused"
    )
    print(f"prefenv resume: {args.out}: {restored}", flush=True)
    return _finish(run, args.out)


def _cmd_eval(args: argparse.Namespace) -> int:
    result = api.evaluate(args.out, episodes=args.episodes, seed=args.seed)
    print(json.dumps(result, indent=2))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    import prefenv
    from prefenv.checks import check

    prefenv.import_modules(args.imports or ())
    report = check(prefenv.resolve_env_id(args.env_id, prefenv.register_task_envs), seed=args.seed)
    print(json.dumps(dataclasses.asdict(report), indent=2))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="prefenv", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _train_parser(sub)
    resume = sub.add_parser("resume", help="continue a run from its last finished round")
    resume.add_argument("--out", type=Path, required=True, help="run folder")
    evaluate = sub.add_parser("eval", help="deterministic episodes of a run's latest agent")
    evaluate.add_argument("--out", type=Path, required=True, help="run folder")
    evaluate.add_argument(
        "--episodes", type=int, default=10, help="episodes to average (default: %(default)s)"
    )
    evaluate.add_argument(
        "--seed", type=int, default=12345, help="evaluation env seed (default: %(default)s)"
    )
    check = sub.add_parser("check", help="Gymnasium check_env + prefenv's contract for an id")
    check.add_argument("env_id", help="registered Gymnasium id, or my_pkg:my/Env-v0")
    check.add_argument(
        "--import", dest="imports", action="append", metavar="MODULE",
        help="module to import first, whose import registers the id (repeatable)",
    )  # fmt: skip
    check.add_argument("--seed", type=int, default=0, help="env seed (default: %(default)s)")
    from prefenv.app.label_cli import add_label_parser
    from prefenv.app.sweep_cli import add_sweep_parser
    from prefenv.app.text_cli import add_text_parser

    add_text_parser(sub)
    add_label_parser(sub)
    add_sweep_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = _parser().parse_args(argv)
    from prefenv.app.label_cli import cmd_label
    from prefenv.app.sweep_cli import cmd_sweep
    from prefenv.app.text_cli import cmd_text

    commands = {"train": _cmd_train, "resume": _cmd_resume, "eval": _cmd_eval,
                "check": _cmd_check, "text": cmd_text, "label": cmd_label,
                "sweep": cmd_sweep}  # fmt: skip
    try:
        return commands[args.command](args)
    except (ValueError, FileNotFoundError, TypeError, gym.error.Error, NoLabelsError) as exc:
        print(f"prefenv {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command not in ("train", "resume"):
            raise
        print(f"\nprefenv {args.command}: interrupted. Every finished round is kept (the store, "
              f"the checkpoint); continue with: prefenv resume --out {args.out}",
              file=sys.stderr)  # fmt: skip
        return 130  # the shell's code for a run stopped by Ctrl-C


if __name__ == "__main__":
    sys.exit(main())
