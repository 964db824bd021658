"""``prefenv`` command line: train from preferences, resume a killed run, evaluate, check an env.

    prefenv train --env prefenv/HalfCheetah-v0 --agent ppo-kl --teacher oracle \\
                  --queries 1000 --steps 1000000 --seed 0 --out runs/cheetah
    prefenv resume --out runs/cheetah
    prefenv eval --out runs/cheetah --episodes 10
    prefenv check prefenv/Hopper-v0
    prefenv train --env prefenv/RecSlate-v0 --agent ppo-kl --reference popularity \\
                  --kl-coef 0.05 --queries 500 --steps 200000 --out runs/rec

With no options, ``prefenv train`` runs the short embedded default (HalfCheetah, PPO-KL, oracle
teacher, 250 queries, 100k steps): a few minutes on 2 CPU cores, no downloads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import gymnasium as gym

from prefenv.app.fields import add_field_options, from_options
from prefenv.app.folders import undo_failed_start
from prefenv.app.runs import TrainingRun, evaluate_run
from prefenv.app.spec import TrainSpec, load_spec, save_spec

__all__ = ["main", "QUICKSTART"]

QUICKSTART = TrainSpec(
    env="prefenv/HalfCheetah-v0",
    agent="ppo-kl",
    teacher="oracle",
    queries=250,
    steps=100_000,
    rounds=6,
    n_envs=8,
    initial_steps=10_240,
    reward_epochs=60,
)
"""The embedded default that ``prefenv train`` runs with no options."""


def _train_parser(sub: argparse._SubParsersAction) -> None:
    """``prefenv train``: one option per :class:`TrainSpec` field, its docstring the help."""
    parser = sub.add_parser("train", help="train an agent from preference feedback")
    add_field_options(parser, TrainSpec, defaults=QUICKSTART)
    parser.add_argument("--out", type=Path, default=Path("runs/quickstart"), help="run folder")
    parser.add_argument("--overwrite", action="store_true", help="allow reusing a run folder")


def _cmd_train(args: argparse.Namespace) -> int:
    out: Path = args.out
    if (out / "run.json").exists() and not args.overwrite:
        print(
            f"{out} already holds a run: continue it with `prefenv resume --out {out}`, "
            "or pass --overwrite / another --out",
            file=sys.stderr,
        )
        return 2
    if args.overwrite and out.exists():
        for name in ("comparisons.sqlite", "comparisons.sqlite-wal", "comparisons.sqlite-shm"):
            (out / name).unlink(missing_ok=True)
    spec = from_options(TrainSpec, args)
    with undo_failed_start(out):  # a rejected start leaves no run.json to refuse the retry
        out.mkdir(parents=True, exist_ok=True)
        save_spec(spec, out)
        run = TrainingRun(spec, out)
    return _run(run, out)


def _run(run: TrainingRun, out: Path) -> int:
    summary = run.run(progress=True)
    print(f"\nfinal true return: {summary['final_true_return']}")
    print(f"learning curve:    {out / 'learning_curve.png'}")
    print(f"summary:           {out / 'summary.md'} (and summary.json)")
    print(f"comparisons:       {out / 'comparisons.sqlite'} ({summary['labels_used']} queries)")
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    spec = load_spec(args.out)
    if not (args.out / "loop_state.json").exists():
        print(f"{args.out} has no finished round to resume from: start it again", file=sys.stderr)
        return 2
    run = TrainingRun(spec, args.out, resume=True)
    if run.loop.done:
        print(f"{args.out} is already complete ({run.loop.round} rounds)")
        run.write_summary()
        return 0
    return _run(run, args.out)


def _cmd_eval(args: argparse.Namespace) -> int:
    result = evaluate_run(args.out, episodes=args.episodes, seed=args.seed)
    print(json.dumps(result, indent=2))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from prefenv.checks import check

    report = check(args.env_id, seed=args.seed)
    print(json.dumps(dataclasses.asdict(report), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(prog="prefenv", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    resume = sub.add_parser("resume", help="continue a run from its last checkpoint")
    resume.add_argument("--out", type=Path, required=True, help="run folder")
    evaluate = sub.add_parser("eval", help="deterministic episodes of a run's latest agent")
    evaluate.add_argument("--out", type=Path, required=True, help="run folder")
    evaluate.add_argument("--episodes", type=int, default=10, help="episodes to average")
    evaluate.add_argument("--seed", type=int, default=12345, help="evaluation env seed")
    check = sub.add_parser("check", help="Gymnasium check_env + prefenv's contract for an id")
    check.add_argument("env_id", help="registered Gymnasium id")
    check.add_argument("--seed", type=int, default=0)
    from prefenv.app.text_cli import add_text_parser, cmd_text

    add_text_parser(sub)
    args = parser.parse_args(argv)
    try:
        commands = {"train": _cmd_train, "resume": _cmd_resume, "eval": _cmd_eval,
                    "check": _cmd_check, "text": cmd_text}  # fmt: skip
        return commands[args.command](args)
    except (ValueError, FileNotFoundError, TypeError, gym.error.Error) as exc:
        print(f"prefenv {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
