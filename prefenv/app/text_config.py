"""Settings of the text RLHF pipeline (:mod:`prefenv.app.text_runs`); how a run folder keeps them.

:class:`TextPipelineConfig` is one validated dataclass; each field's docstring is its
``prefenv text`` command-line help. The ppo stage's PPO-KL settings are a :class:`~agents.ppo_kl.config.PPOKLConfig` (field ``ppo``), not copies of its fields: the
KL leash (``kl_coef``, ``adaptive_kl``, ``kl_target``, ``kl_horizon``, ``kl_estimator``) and the
learning rate are declared, documented and validated there once, and the command line offers
them as ``--kl-coef`` etc. (:data:`PPO_OPTIONS`) with that documentation as help.

A run folder saves its settings (``text_config.json``) and keeps them: :func:`accept_settings`
refuses a change that would invalidate a finished stage before the one being run (naming the
flags, :func:`settings_refusal`), accepts one that only this stage or later ones read
(:data:`READ_FIRST_BY`) and then moves the later stages' outputs to ``stale/``;
:func:`clear_run` is ``--overwrite``.

(Over 400 lines: every text stage's settings, each with its help text and validation, live in
one dataclass next to the run-folder rules that read them; splitting would part a setting from
the stage it invalidates.)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.ppo_kl.config import PPOKLConfig
from agents.text.devices import DEVICES, DTYPES, placement
from agents.text.lora import check_lora_settings
from prefenv.app.runs import CLIPS_DIR, LABELLING_FILE
from prefenv.app.spec import HUMAN, write_json_atomic
from prefenv.errors import CheckpointError
from prefenv.human import ON_TIMEOUT

__all__ = [
    "PIPELINE", "PPO_OPTIONS", "READ_FIRST_BY", "STAGES", "STAGE_OUTPUTS", "TEXT_PPO",
    "TextPipelineConfig", "accept_settings", "check_sources", "clear_run", "setting_flag", "settings_refusal",
]  # fmt: skip

logger = logging.getLogger(__name__)

TEXT_PPO = PPOKLConfig(
    learning_rate=3e-5, n_epochs=4, gamma=1.0, gae_lambda=0.95, kl_coef=0.3, adaptive_kl=True,
    kl_target=6.0, kl_horizon=10000, kl_estimator="k1", torch_threads=None,
)  # fmt: skip
"""PPO-KL defaults of the text pipeline (undiscounted episodes, 4 epochs, Adam 3e-5).

``kl_coef`` 0.3: over the default 24k tokens the Ziegler controller (horizon 10000) moves beta by
only a few percent, so this initial value sets the KL reached: 0.3 keeps the sentiment task under
the 6-nat target (0.1 overshot it to 9-12 nats on two of three seeds; benchmarks/RESULTS.md).
The reward is the whitened reward-model score (unit std), so beta has the meaning
:attr:`PPOKLConfig.kl_coef` documents. ``n_steps``, ``batch_size`` and ``seed`` are set by the
ppo stage (``max_new_tokens``, ``n_envs * max_new_tokens // 4``, ``seed``)."""

STREAMS = ("train_prompts", "eval_prompts", "demonstrations", "rm_samples", "rm_oracle",
           "rm_heldout", "eval_sampling", "rm_fallback")  # fmt: skip
"""The pipeline's random streams, each seeded by :meth:`TextPipelineConfig.stream_seed` (a new
stream goes at the end: a stream's seed is its index)."""

PPO_OPTIONS = ("learning_rate", "kl_coef", "adaptive_kl", "kl_target", "kl_estimator", "kl_horizon")
"""The :class:`PPOKLConfig` fields ``prefenv text`` sets from the command line."""


@dataclass(frozen=True)
class TextPipelineConfig:
    """Settings of every text stage; each field's docstring is its CLI help."""

    task: str = "sentiment"
    """Text task: sentiment, keyword or concise (see envs.text.tasks)."""
    seed: int = 0
    """Seeds every stage (model init, data, sampling, teacher)."""
    base_model: str | None = None
    """Local Hugging Face causal LM directory to start from; None = build the default tiny GPT-2."""
    base_train_steps: int = 300
    """Pretraining steps of the default tiny GPT-2 (ignored with base_model)."""
    max_new_tokens: int = 24
    """Completion length cap (tokens) in every stage."""
    sft_demos: int = 2000
    """Demonstrations for SFT (generated reviews split into prompt + completion)."""
    sft_steps: int = 150
    """SFT optimiser steps (batch 16)."""
    teacher: str = "oracle"
    """Text teacher preset: oracle, noisy, mistake, verbose, position, population or a '+' mix,
    with parameters in parentheses (verbose(verbosity=0.5), mistake(bpref.eps_mistake=0.2)); or
    human: people label the rm stage's pairs through `prefenv label --run OUT`. The store
    keeps every teacher's labels; the rm and dpo stages use this teacher's only."""
    queries: int = 1000
    """Comparisons of the teacher (two SFT samples of one prompt each) the rm and dpo stages
    train on; only those not yet in the store are asked."""
    comparisons_file: str | None = None
    """A prompt/chosen/rejected JSONL file (human labels, a Hugging Face preference dataset, a
    prefenv export) to train the reward model and DPO on instead of asking the teacher."""
    fallback_teacher: str = "oracle"
    """With --teacher human: the text teacher preset that answers the queries people left
    unanswered at the deadline under --on-timeout simulate (the mixed mode)."""
    human_timeout: float = 600.0
    """With --teacher human: seconds the rm stage waits for people to answer its queries, each
    time it runs; it never waits longer."""
    on_timeout: str = "continue"
    """With --teacher human, at the deadline: continue (close the unanswered queries, train on
    what people gave; refused if nobody answered), simulate (--fallback-teacher answers the
    rest), or pause (stop without training; label them, then run the rm stage again)."""
    overlap: int = 1
    """With --teacher human: annotators asked per query (2 or more measures agreement); each
    label is one comparison."""
    rm_ensemble: int = 1
    """Reward-model ensemble members (> 1: mean and disagreement)."""
    rm_epochs: int = 8
    """Reward-model training epochs."""
    ppo_steps: int = 24000
    """PPO-KL env steps (tokens generated) over all envs."""
    n_envs: int = 16
    """Parallel text envs for PPO-KL."""
    ppo: PPOKLConfig = TEXT_PPO
    """PPO-KL settings of the ppo stage: learning rate and the per-token KL leash to the SFT
    reference (see TEXT_PPO); n_steps, batch_size and seed are set by the stage."""
    dpo_beta: float = 0.1
    """DPO beta: KL strength to the SFT reference (sigmoid, ipo, robust, kto); simpo uses its
    own scale, 2.0."""
    dpo_loss: str = "sigmoid"
    """The dpo stage's loss: sigmoid (DPO), ipo, simpo (no reference), robust (corrects for
    --dpo-label-smoothing flipped labels) or kto (each comparison gives one desirable and one
    undesirable example); see agents.text.dpo_losses."""
    dpo_label_smoothing: float = 0.0
    """Assumed probability that a comparison's label is flipped, in [0, 0.5): sigmoid, ipo and
    simpo train on the soft label 1 - eps (cDPO), robust corrects for it."""
    dpo_uncertainty: bool = False
    """Uncertainty-aware DPO: relabel the pairs the rm stage's ensemble confidently contradicts
    and down-weight those its members disagree on (agents.text.dpo_losses.uncertainty_weights);
    needs --rm-ensemble >= 2."""
    dpo_epochs: int = 3
    """DPO passes over the comparisons."""
    dpo_learning_rate: float = 5e-5
    """DPO AdamW learning rate."""
    grpo_steps: int = 16
    """Steps of the grpo and rloo stages; each samples --group-size completions of 8 prompts
    (16 x 8 x 8 = 1024 completions, the ppo stage's default 24000 tokens at 24 a completion)."""
    group_size: int = 8
    """G: completions per prompt in the grpo and rloo stages (>= 2; the group is the baseline)."""
    grpo_beta: float = 0.3
    """KL coefficient to the SFT reference in the grpo and rloo stages: grpo puts it on the k3
    term of the loss, rloo on a reward penalty (agents.text.grpo). 0.3 with the learning rate and
    iterations below ends near PPO-KL's KL on the sentiment task (benchmarks/RESULTS.md, quality
    frontier); TRL's usual 0.04 lets the KL run to 6-9 nats there."""
    grpo_loss_type: str = "grpo"
    """grpo (advantages / group std, loss averaged per completion) or dr_grpo (Dr. GRPO: no std,
    loss divided by a constant); rloo uses its loss normalisation."""
    grpo_learning_rate: float = 1e-4
    """AdamW learning rate of the grpo and rloo stages."""
    grpo_iterations: int = 4
    """mu: optimiser steps on each sampled batch in the grpo and rloo stages (> 1 reuses the
    samples off-policy, with the clipped ratio; TRL's num_iterations). With 1 (and learning rate
    5e-5), 16 steps barely move the tiny model: +0.19 true score against PPO-KL's +0.44 at the
    same samples (benchmarks/RESULTS.md, quality frontier)."""
    reward_clip: float = 5.0
    """PPO reward = clip((reward model score - mean) / std, -reward_clip, reward_clip), with the
    mean and std of the reward model's scores on SFT samples (whitening)."""
    eval_prompts: int = 256
    """Held-out prompts each model is sampled on in the eval stage."""
    torch_threads: int = 1
    """torch.set_num_threads for every stage: 1 suits the tiny default models (more intra-op
    threads only add overhead and thrash a busy machine); raise it for larger models."""
    device: str = "auto"
    """Torch device of every stage after base (sft, rm, ppo, dpo, grpo, rloo, eval): the
    policy, its reference and the reward model; auto (cuda if visible, else cpu), cpu or cuda
    (agents.text.devices). The base stage builds the default tiny GPT-2 on the CPU."""
    dtype: str = "float32"
    """Precision in those stages: float32 or bfloat16 (for GPUs; allowed on cpu, slow). The LMs'
    weights take it; the reward model keeps float32 weights and computes in it (autocast)."""
    lora_r: int = 0
    """LoRA rank of the sft, ppo, dpo, grpo and rloo stages (0: full fine-tuning); the reference
    is the same model with its adapters disabled (agents.text.lora)."""
    lora_alpha: float = 16.0
    """LoRA scale numerator (the update is scaled by lora_alpha / lora_r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA adapters' input, in [0, 1)."""

    def __post_init__(self) -> None:
        from envs.text.feedback import TEXT_PRESETS
        from envs.text.tasks import TASKS
        from prefenv.teachers import merge_presets

        if self.task not in TASKS:
            raise ValueError(
                f"unknown text task {self.task!r} (--task): choose one of {sorted(TASKS)}"
            )
        for name in ("sft_demos", "sft_steps", "queries", "rm_ensemble", "rm_epochs", "n_envs",
                     "dpo_epochs", "eval_prompts", "max_new_tokens", "torch_threads",
                     "overlap"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{setting_flag(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("dpo_beta", "dpo_learning_rate", "reward_clip"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(
                    f"{setting_flag(name)} must be a number > 0, got {getattr(self, name)}"
                )
        if self.ppo_steps < 0:
            raise ValueError(f"--ppo-steps must be >= 0 (0 skips training), got {self.ppo_steps}")
        if not isinstance(self.ppo, PPOKLConfig):
            raise TypeError(
                f"TextPipelineConfig.ppo must be a PPOKLConfig, got {type(self.ppo).__name__}: "
                "write ppo=dataclasses.replace(TEXT_PPO, kl_coef=0.1)"
            )
        self._check_human_settings()
        check_lora_settings(self.lora_r, self.lora_alpha, self.lora_dropout)
        if self.device not in DEVICES or self.dtype not in DTYPES:
            raise ValueError(
                f"--device {self.device!r} --dtype {self.dtype!r}: choose --device from "
                f"{', '.join(DEVICES)} and --dtype from {', '.join(DTYPES)}"
            )
        self._check_dpo_settings()
        self._check_grpo_settings()
        presets = {"teacher": self.teacher} if self.teacher != HUMAN else {}
        for name, preset in {**presets, "fallback_teacher": self.fallback_teacher}.items():
            try:
                merge_presets(preset, TEXT_PRESETS, kind="text teacher")
            except ValueError as error:
                raise ValueError(f"{setting_flag(name)} {preset!r}: {error}") from None

    def _check_human_settings(self) -> None:
        """``--on-timeout`` and ``--human-timeout`` (they are read with ``--teacher human``)."""
        if self.on_timeout not in ON_TIMEOUT:
            raise ValueError(
                f"unknown --on-timeout {self.on_timeout!r}: choose one of {', '.join(ON_TIMEOUT)}"
            )
        if not (math.isfinite(self.human_timeout) and self.human_timeout >= 0):
            raise ValueError(f"--human-timeout must be a number of seconds >= 0, got "
                             f"{self.human_timeout}")  # fmt: skip

    def _check_dpo_settings(self) -> None:
        """``--dpo-loss`` and the options that go with it (read by the dpo stage)."""
        from agents.text.dpo_losses import LOSSES

        if self.dpo_loss not in LOSSES:
            raise ValueError(f"unknown --dpo-loss {self.dpo_loss!r}: choose one of {LOSSES}")
        if not 0 <= self.dpo_label_smoothing < 0.5:
            raise ValueError(
                f"--dpo-label-smoothing must be in [0, 0.5), got {self.dpo_label_smoothing}"
            )
        if self.dpo_uncertainty and self.rm_ensemble < 2:
            raise ValueError(
                "--dpo-uncertainty weighs pairs by the disagreement of the rm stage's reward-model "
                f"ensemble, but --rm-ensemble is {self.rm_ensemble}: pass --rm-ensemble 3 (and "
                "redo the rm stage), or leave --dpo-uncertainty out"
            )

    def _check_grpo_settings(self) -> None:
        """The grpo and rloo stages' settings (the rest GRPOConfig checks when they run)."""
        if self.grpo_iterations < 1:
            raise ValueError(f"--grpo-iterations must be >= 1, got {self.grpo_iterations}")
        if self.grpo_steps < 1 or self.group_size < 2:
            raise ValueError(
                f"--grpo-steps must be >= 1 and --group-size >= 2 (a group compares its "
                f"completions), got {self.grpo_steps} and {self.group_size}"
            )
        if self.grpo_loss_type not in ("grpo", "dr_grpo"):
            raise ValueError(f"unknown --grpo-loss-type {self.grpo_loss_type!r}: grpo or dr_grpo")
        if not (math.isfinite(self.grpo_beta) and self.grpo_beta >= 0):
            raise ValueError(f"--grpo-beta must be a number >= 0, got {self.grpo_beta}")
        if not (math.isfinite(self.grpo_learning_rate) and self.grpo_learning_rate > 0):
            raise ValueError(
                f"--grpo-learning-rate must be a number > 0, got {self.grpo_learning_rate}"
            )

    @property
    def lora(self) -> tuple[int, float, float]:
        """``(lora_r, lora_alpha, lora_dropout)``: the arguments of agents.text.lora.with_lora."""
        return self.lora_r, self.lora_alpha, self.lora_dropout

    def placement(self) -> tuple[torch.device, torch.dtype]:
        """``(device, dtype)`` of ``--device`` and ``--dtype``; raises if the machine lacks them."""
        return placement(self.device, self.dtype)

    def stream_seed(self, stream: str, *index: int) -> int:
        """An int seed for one random stream of the pipeline (and an index within it).

        Every stream is a named child of ``seed`` (``SeedSequence`` spawn keys), so streams never
        overlap the way offset seeds (seed + 1, seed + 7, ...) can across seeds.
        """
        if stream not in STREAMS:
            raise ValueError(f"unknown random stream {stream!r}: one of {STREAMS}")
        key = (STREAMS.index(stream), *index)
        return int(np.random.SeedSequence(self.seed, spawn_key=key).generate_state(1)[0])

    def changed_from(self, saved: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """``{setting: (saved, given)}`` where this config differs from a saved ``to_dict()``.

        Fields added since the folder was saved compare at their defaults.
        """
        saved_flat = _flat_settings(saved)
        defaults = _flat_settings(TextPipelineConfig().to_dict())
        return {
            k: (saved_flat.get(k, defaults[k]), v)
            for k, v in _flat_settings(self.to_dict()).items()
            if saved_flat.get(k, defaults[k]) != v
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form; ``ppo`` is :meth:`PPOKLConfig.to_dict`."""
        return {**dataclasses.asdict(self), "ppo": self.ppo.to_dict()}


def _flat_settings(config: dict[str, Any]) -> dict[str, Any]:
    """A saved config flattened to one level (``ppo.kl_coef``), so a field added to
    ``PPOKLConfig`` later resumes at its default; run folders from before the pipeline composed
    ``PPOKLConfig`` saved its command-line fields (``kl_coef``...) at the top level."""
    flat = {k: v for k, v in config.items() if k != "ppo" and k not in PPO_OPTIONS}
    legacy = {f"ppo.{k}": config[k] for k in PPO_OPTIONS if k in config}
    return {**flat, **legacy, **{f"ppo.{k}": v for k, v in config.get("ppo", {}).items()}}


# ----------------------------------------------------------------------------- changed settings


STAGES = ("base", "sft", "rm", "ppo", "dpo", "grpo", "rloo", "eval")
"""The text stages in order (:mod:`prefenv.app.text_runs`)."""

PIPELINE = ("base", "sft", "rm", "ppo", "dpo", "eval")
"""What ``prefenv text pipeline`` runs: grpo and rloo run when named (``prefenv text grpo``),
and the eval stage then includes their models. They share their settings (``--grpo-*``,
``--group-size``), first read by grpo."""

EVERY_STAGE = "every stage"
NO_OUTPUT = "no output"

READ_FIRST_BY: dict[str, str] = {
    "task": EVERY_STAGE, "seed": EVERY_STAGE,
    "base_model": "base", "base_train_steps": "base",
    "sft_demos": "sft", "sft_steps": "sft",
    "teacher": "rm", "queries": "rm", "comparisons_file": "rm", "rm_ensemble": "rm",
    "fallback_teacher": "rm", "human_timeout": "rm", "on_timeout": "rm", "overlap": "rm",
    "rm_epochs": "rm", "max_new_tokens": "rm", "eval_prompts": "rm",
    "ppo_steps": "ppo", "n_envs": "ppo", "ppo": "ppo", "reward_clip": "ppo",
    "dpo_beta": "dpo", "dpo_epochs": "dpo", "dpo_learning_rate": "dpo", "dpo_loss": "dpo",
    "dpo_label_smoothing": "dpo", "dpo_uncertainty": "dpo",
    "grpo_steps": "grpo", "group_size": "grpo", "grpo_beta": "grpo", "grpo_loss_type": "grpo",
    "grpo_learning_rate": "grpo", "grpo_iterations": "grpo",
    "torch_threads": NO_OUTPUT, "device": NO_OUTPUT,
    "dtype": "sft", "lora_r": "sft", "lora_alpha": "sft", "lora_dropout": "sft",
}  # fmt: skip
"""The first stage whose output each setting shapes (read from the stage functions).

Changing a setting invalidates that stage and every later one. ``task`` and ``seed`` shape every
stage and the comparison store's labels (a teacher judges texts by the task's score), so a run
folder never changes them. ``max_new_tokens`` and ``eval_prompts`` are first read by the rm
stage (its samples and its held-out accuracy), not by eval. ``torch_threads`` and ``device``
change speed (and float rounding), not results, and may change at any time."""


SIBLINGS = {"rloo": ("grpo",)}
"""Stages that read the settings an earlier stage reads first, without reading its output: rloo
reads the grpo stage's ``--grpo-*`` and ``--group-size``, but not its model. Running rloo with
such a change is allowed; it moves grpo's outputs (made with the old settings) to ``stale/``."""


def _readers(changed: dict[str, tuple[Any, Any]], stage: str | None) -> set[str]:
    """The stages that first read ``changed``, a sibling of ``stage`` counted as ``stage``."""
    siblings = SIBLINGS.get(stage or "", ())
    return {stage if r in siblings else r for r in map(_first_reader, changed)} - {NO_OUTPUT}


def setting_flag(setting: str) -> str:
    """The command-line flag of a setting: ``teacher`` -> ``--teacher``, ``ppo.kl_coef`` ->
    ``--kl-coef``; a PPO-KL field with no flag reads ``ppo.n_epochs (Python only)``."""
    name = setting.removeprefix("ppo.")
    if name != setting and name not in PPO_OPTIONS:
        return f"{setting} (Python only: TextPipelineConfig.ppo)"
    return "--" + name.replace("_", "-")


def _first_reader(setting: str) -> str:
    """The stage of :data:`READ_FIRST_BY` for a flat setting name (``ppo.kl_coef`` -> ``ppo``)."""
    return READ_FIRST_BY[setting.split(".")[0]]


def _shown(value: Any) -> str:
    return "(none)" if value is None else str(value)


def _describe_changes(changed: dict[str, tuple[Any, Any]]) -> str:
    """``--teacher oracle saved, verbose given; --kl-coef 0.3 saved, 0.1 given``."""
    return "; ".join(
        f"{setting_flag(k)} {_shown(saved)} saved, {_shown(given)} given"
        for k, (saved, given) in changed.items()
    )


def settings_refusal(
    out: str, changed: dict[str, tuple[Any, Any]], stage: str | None
) -> str | None:
    """Why running ``stage`` (None: the pipeline) in ``out`` with these changes is refused.

    Args:
        out: the run folder, as the user gave it.
        changed: ``{setting: (saved, given)}`` from :meth:`TextPipelineConfig.changed_from`.
        stage: the stage to run, or None for ``prefenv text pipeline``.

    Returns:
        None when allowed: every changed setting is first read by ``stage`` or a later stage
        (or by no stage at all); else the message, naming the flags and the ways out.
    """
    binding = {k: v for k, v in changed.items() if _first_reader(k) != NO_OUTPUT}
    readers = _readers(binding, stage)
    if not binding or (
        stage is not None
        and EVERY_STAGE not in readers
        and min(STAGES.index(r) for r in readers) >= STAGES.index(stage)
    ):
        return None
    if EVERY_STAGE in readers:
        flags = ", ".join(setting_flag(k) for k in binding if _first_reader(k) == EVERY_STAGE)
        reason = f"{flags} shape every stage and the stored labels, so a run folder keeps them"
    else:
        earliest = min(readers, key=STAGES.index)
        flags = ", ".join(setting_flag(k) for k in binding if _first_reader(k) == earliest)
        why = "`pipeline` keeps a folder's settings" if stage is None else f"{stage} comes after it"
        reason = (
            f"{flags}: first read by the {earliest} stage ({why}), so changing it invalidates "
            f"{earliest} and every later stage; run `prefenv text {earliest} --out {out}` with "
            "the new settings to redo it (then `prefenv text pipeline` redoes the later ones)"
        )
    return (
        f"{out} was started with other settings ({_describe_changes(binding)}): {reason}. Give "
        "the saved settings to resume, pass --overwrite to start again (it deletes the folder's "
        "outputs and stored labels), or use another --out"
    )


# ----------------------------------------------------------------------------- run folder


STAGE_OUTPUTS = {
    "base": ("base",), "sft": ("sft",), "rm": ("reward_model", "comparisons.jsonl"),
    "ppo": ("ppo",), "dpo": ("dpo",), "grpo": ("grpo",), "rloo": ("rloo",),
    "eval": ("summary.json", "summary.md", "eval.png"),
}  # fmt: skip
"""What each stage writes under the run folder (``ppo/`` holds its checkpoint and event files)."""

_RUN_FILES = ("text_config.json", "comparisons.sqlite", "comparisons.sqlite-wal",
              "comparisons.sqlite-shm", LABELLING_FILE, CLIPS_DIR, "stale")  # fmt: skip
"""The run folder's own files: settings, the comparison store (with --teacher human's queries),
what ``prefenv label`` reads of them, the outputs marked stale."""


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def clear_run(out: Path) -> None:
    """``--overwrite``: delete everything a text run writes in ``out`` (other files stay)."""
    for name in (*_RUN_FILES, *(name for stage in STAGES for name in STAGE_OUTPUTS[stage])):
        _remove(out / name)


def _mark_stale(out: Path, stages: list[str], changes: str) -> None:
    """Move the outputs of ``stages`` to ``out/stale/`` (replacing older stale copies)."""
    moved = {stage: [n for n in STAGE_OUTPUTS[stage] if (out / n).exists()] for stage in stages}
    moved = {stage: names for stage, names in moved.items() if names}
    for name in (name for names in moved.values() for name in names):
        _remove(out / "stale" / name)
        (out / "stale").mkdir(exist_ok=True)
        (out / name).rename(out / "stale" / name)
    if moved:
        logger.warning(
            "%s: settings changed (%s): the %s outputs, made with the old settings, moved to %s "
            "(%s); `prefenv text pipeline --out %s` redoes those stages",
            out, changes, ", ".join(moved), out / "stale",
            ", ".join(name for names in moved.values() for name in names), out,
        )  # fmt: skip


def _unread_outside_pipeline(out: Path, setting: str) -> bool:
    """Whether only stages outside :data:`PIPELINE` read ``setting`` (grpo's, read by rloo too)
    and none of them has an output in ``out``: a changed value then invalidates nothing."""
    reader = _first_reader(setting)
    readers = {reader, *(s for s, siblings in SIBLINGS.items() if reader in siblings)}
    if reader not in STAGES or readers & set(PIPELINE):
        return False
    return not any((out / name).exists() for r in readers for name in STAGE_OUTPUTS[r])


def accept_settings(config: TextPipelineConfig, out: Path, stage: str | None) -> None:
    """Save the settings of a first start; refuse changed ones, or accept them for ``stage``.

    A run folder keeps the settings it started with (``text_config.json``). Running one stage
    with settings that only later stages read (:data:`~prefenv.app.text_config.READ_FIRST_BY`)
    is allowed: the outputs of the stages after it (and its own, if it reads a changed setting)
    are moved to ``stale/`` first, then the new settings are saved and the stage runs.
    The pipeline also accepts new values of settings that only the stages it never runs read
    (grpo, rloo) while those have no output (a folder saved before a default changed).

    Raises:
        CheckpointError: the change would invalidate a stage before ``stage`` (or ``stage`` is
            None: the pipeline); the message names the flags and the ways out.
    """
    path = out / "text_config.json"
    if path.is_file():
        changed = config.changed_from(json.loads(path.read_text()))
        if not changed:
            return
        if stage is None:  # the pipeline accepts what only stages it never runs read, unrun
            changed = {k: v for k, v in changed.items() if not _unread_outside_pipeline(out, k)}
        refusal = settings_refusal(str(out), changed, stage)
        if refusal is not None:
            raise CheckpointError(refusal)
        readers = _readers(changed, stage)
        if stage is not None and readers:  # the refusal let through only settings read from here
            later = list(STAGES[STAGES.index(stage) + 1 :])
            own = [*SIBLINGS.get(stage, ()), stage] if stage in readers else []
            _mark_stale(out, own + later, _describe_changes(changed))
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, config.to_dict())


def check_sources(config: TextPipelineConfig, stages: list[str]) -> None:
    """The inputs named by the settings exist, before anything is written."""
    if "base" in stages and config.base_model is not None:
        if not (Path(config.base_model) / "config.json").is_file():
            raise FileNotFoundError(
                "--base-model needs a local model directory written by save_pretrained (with "
                f"config.json); {config.base_model} is not one: pass such a folder, or leave "
                "--base-model out to build the default tiny GPT-2"
            )
    if {"rm", "dpo"} & set(stages) and config.comparisons_file is not None:
        if not Path(config.comparisons_file).is_file():
            raise FileNotFoundError(
                f"--comparisons-file {config.comparisons_file} does not exist: pass a "
                "prompt/chosen/rejected JSONL file, or leave it out to ask --teacher"
            )
