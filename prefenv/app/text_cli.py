"""``prefenv text``: the text RLHF stages from the command line.

    prefenv text pipeline --out runs/sentiment                 # base -> sft -> rm -> ppo -> dpo -> eval
    prefenv text sft --out runs/sentiment                      # one stage (earlier ones must be done)
    prefenv text rm --out runs/sentiment --teacher verbose     # ...with another annotator
    prefenv text rm --out runs/sentiment --teacher human       # ...with people, who label in
    prefenv label --run runs/sentiment --annotator alice       #    the browser meanwhile
    prefenv text grpo --out runs/sentiment                     # GRPO on the learned reward (named
    prefenv text rloo --out runs/sentiment                     #   only; eval then includes it)
    prefenv text pipeline --out runs/sentiment --overwrite     # start the folder again
    prefenv text pipeline --out runs/mine --base-model path/to/local/hf_model

Every option is a field of :class:`prefenv.app.text_config.TextPipelineConfig`, or one of the
PPO-KL fields it composes (``--learning-rate``, ``--kl-coef``, ``--adaptive-kl``, ``--kl-target``,
``--kl-estimator``, ``--kl-horizon``: :data:`~prefenv.app.text_config.PPO_OPTIONS` of
:class:`~agents.ppo_kl.config.PPOKLConfig`); each option's help is the docstring of the field
where it is declared (:mod:`prefenv.app.fields`). A run folder remembers its settings: resuming a
killed pipeline is the same command again. One stage may run with settings that only it and
later stages read (``rm --teacher verbose``): the later stages' outputs move to ``stale/`` and
``pipeline`` redoes them. Other changes are refused with the flags named; ``--overwrite`` starts
the folder again. A failed first start leaves nothing in ``--out``
(:func:`prefenv.app.text_runs.run_stage`). With ``--teacher human`` the rm stage waits for people
(``--human-timeout``, ``--on-timeout``, ``--overlap``, ``--fallback-teacher``:
:mod:`prefenv.app.text_human`); after a pause the command exits 0 and says what to run next.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path

from agents.ppo_kl.config import KLEstimator, PPOKLConfig
from prefenv.app.fields import add_field_options, field_docs, from_options
from prefenv.app.spec import HUMAN
from prefenv.app.text_config import PPO_OPTIONS, TEXT_PPO, TextPipelineConfig, setting_flag
from prefenv.app.text_runs import STAGES, run_pipeline, run_stage

__all__ = ["add_text_parser", "cmd_text"]


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """``--field`` options of the pipeline's settings and of the PPO-KL fields it exposes."""
    add_field_options(parser, TextPipelineConfig, skip={"ppo"})
    # add_field_options has no form for Literal fields: kl_estimator gets its choices here.
    skip = {f.name for f in dataclasses.fields(PPOKLConfig)} - set(PPO_OPTIONS) | {"kl_estimator"}
    add_field_options(parser, PPOKLConfig, defaults=TEXT_PPO, skip=skip)
    parser.add_argument(
        "--kl-estimator",
        choices=typing.get_args(KLEstimator),
        default=TEXT_PPO.kl_estimator,
        help=f"{field_docs(PPOKLConfig)['kl_estimator']} (default: {TEXT_PPO.kl_estimator})",
    )


def add_text_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``prefenv text <stage>`` on the main parser's subcommands."""
    text = sub.add_parser(
        "text", help="the text RLHF pipeline: sft, rm, ppo, dpo, grpo, rloo, eval, pipeline"
    )
    stages = text.add_subparsers(dest="stage", required=True)
    helps = {
        "pipeline": "every stage but grpo and rloo in order, skipping finished ones (resumes)",
        "base": "the starting LM (--base-model DIR or the default tiny GPT-2)",
        "sft": "supervised fine-tuning on demonstrations (the reference model)",
        "rm": "sample SFT pairs, label them with the teacher, train the text reward model",
        "ppo": "PPO-KL on the learned reward with a per-token KL leash to SFT",
        "dpo": "DPO or a relative (--dpo-loss ipo|simpo|robust|kto) on the same comparisons",
        "grpo": "GRPO on the learned reward from SFT, with a k3 KL to SFT in the loss",
        "rloo": "RLOO: leave-one-out advantages, KL to SFT as a reward penalty",
        "eval": "SFT vs PPO vs DPO (and GRPO, RLOO if run) on held-out prompts: summary, eval.png",
    }
    for stage in ("pipeline", *STAGES):
        parser = stages.add_parser(stage, help=helps[stage])
        parser.add_argument("--out", type=Path, required=True, help="run folder")
        parser.add_argument(
            "--overwrite",
            action="store_true",
            help="first delete what a text run wrote in --out (settings, stored labels, every "
            "stage's outputs and logs), then start again with the given settings",
        )
        _add_config_options(parser)


def _config(args: argparse.Namespace) -> TextPipelineConfig:
    """The settings from the parsed options; a rejected PPO-KL option is named by its flag."""
    for name in PPO_OPTIONS:
        try:
            dataclasses.replace(TEXT_PPO, **{name: getattr(args, name)})
        except ValueError as error:
            raise ValueError(
                str(error).replace(f"PPOKLConfig.{name}", setting_flag(name))
            ) from None
    ppo = dataclasses.replace(TEXT_PPO, **{name: getattr(args, name) for name in PPO_OPTIONS})
    return from_options(TextPipelineConfig, args, ppo=ppo)


def cmd_text(args: argparse.Namespace) -> int:
    """Run the chosen stage (or the pipeline) and say where its outputs are."""
    config = _config(args)
    if config.teacher == HUMAN and args.stage in ("pipeline", "rm"):
        print(
            f"label it: prefenv label --run {args.out} --annotator NAME   (in another terminal; "
            f"the rm stage waits at most {config.human_timeout:g} s for people, then "
            f"{config.on_timeout}s)",
            flush=True,
        )
    if args.stage == "pipeline":
        summary = run_pipeline(config, args.out, overwrite=args.overwrite)
    else:
        summary = run_stage(args.stage, config, args.out, overwrite=args.overwrite)
    if summary.get("paused"):
        print(summary["message"])
    elif args.stage in ("pipeline", "eval"):
        for name, result in summary.get("eval", {}).items():
            print(
                f"{name:>4}: true score {result['true_score']:.3f}  KL to SFT "
                f"{result['kl_to_ref']:.2f} nats  length {result['mean_length']:.1f}"
            )
        print(f"summary: {args.out / 'summary.md'} (and summary.json, eval.png)")
        if (args.out / "ppo" / "ppo_monitor.png").exists():
            print(
                f"PPO monitor: {args.out / 'ppo' / 'ppo_monitor.png'} (monitor.csv, samples.jsonl)"
            )
    else:
        print(json.dumps(summary, indent=2, default=str), file=sys.stdout)
    return 0
