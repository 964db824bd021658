"""``prefenv text``: the text RLHF stages from the command line.

    prefenv text pipeline --out runs/sentiment                 # base -> sft -> rm -> ppo -> dpo -> eval
    prefenv text sft --out runs/sentiment                      # one stage (earlier ones must be done)
    prefenv text rm --out runs/sentiment --teacher verbose     # ...with another annotator
    prefenv text pipeline --out runs/mine --base-model path/to/local/hf_model

Every option is a field of :class:`prefenv.app.text_runs.TextPipelineConfig` (its docstring is the
help). A run folder remembers its settings: resuming a killed pipeline is the same command again.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import sys
from pathlib import Path
from typing import Any

from prefenv.app.text_config import TextPipelineConfig
from prefenv.app.text_runs import STAGES, run_pipeline, run_stage

__all__ = ["add_text_parser", "cmd_text", "field_docs"]


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of a dataclass whose fields carry attribute docstrings."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, following in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    docs = field_docs(TextPipelineConfig)
    for field in dataclasses.fields(TextPipelineConfig):
        flag = "--" + field.name.replace("_", "-")
        help_text = f"{docs.get(field.name, '')} (default: {field.default})"
        if field.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default,
                                help=help_text)  # fmt: skip
        elif field.type in ("str | None", "str"):
            parser.add_argument(flag, type=str, default=field.default, help=help_text)
        else:
            kind = float if "float" in str(field.type) else int
            parser.add_argument(flag, type=kind, default=field.default, help=help_text)


def add_text_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``prefenv text <stage>`` on the main parser's subcommands."""
    text = sub.add_parser("text", help="the text RLHF pipeline: sft, rm, ppo, dpo, eval, pipeline")
    stages = text.add_subparsers(dest="stage", required=True)
    helps = {
        "pipeline": "every stage in order, skipping finished ones (resumes a killed run)",
        "base": "the starting LM (--base-model DIR or the default tiny GPT-2)",
        "sft": "supervised fine-tuning on demonstrations (the reference model)",
        "rm": "sample SFT pairs, label them with the teacher, train the text reward model",
        "ppo": "PPO-KL on the learned reward with a per-token KL leash to SFT",
        "dpo": "DPO on the same comparisons (reference = SFT)",
        "eval": "SFT vs PPO vs DPO on held-out prompts: summary.json/.md and eval.png",
    }
    for stage in ("pipeline", *STAGES):
        parser = stages.add_parser(stage, help=helps[stage])
        parser.add_argument("--out", type=Path, required=True, help="run folder")
        _add_config_options(parser)


def _config(args: argparse.Namespace) -> TextPipelineConfig:
    values: dict[str, Any] = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(TextPipelineConfig)
    }
    return TextPipelineConfig(**values)


def cmd_text(args: argparse.Namespace) -> int:
    """Run the chosen stage (or the pipeline) and say where its outputs are."""
    config = _config(args)
    if args.stage == "pipeline":
        summary = run_pipeline(config, args.out)
    else:
        summary = run_stage(args.stage, config, args.out)
    if args.stage in ("pipeline", "eval"):
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
