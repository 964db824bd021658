"""The text RLHF pipeline as resumable stages writing one run folder.

Stages (each a function of ``(config, out)``; :func:`run_pipeline` runs them in order and skips
the ones whose output is complete, so a killed pipeline resumes where it stopped):

=========  ===============================================================  =====================
stage      does                                                             writes under ``out``
=========  ===============================================================  =====================
base       the starting LM: ``--base-model DIR`` or the default tiny GPT-2   ``base/``
sft        supervised fine-tuning on (prompt, completion) demonstrations     ``sft/``
rm         SFT samples two completions per prompt -> teacher labels ->       ``comparisons.sqlite``,
           comparison store -> text reward model (Bradley-Terry); with      ``comparisons.jsonl``,
           ``--teacher human`` people label them (:mod:`.text_human`)       ``reward_model/``
                                                                            (+ ``labelling.json``)
ppo        PPO-KL, the reward model's score through the learned-reward       ``ppo/`` (+ monitor)
           wrapper, per-token KL leash to the SFT model (adaptive beta)
dpo        DPO on the same comparisons, reference = SFT                      ``dpo/``
grpo       GRPO on the reward model's (whitened) score from SFT: G samples   ``grpo/`` (+
           per prompt, group-relative advantages, k3 KL to SFT in the loss   ``metrics.csv``)
rloo       RLOO: leave-one-out advantages, KL to SFT as a reward penalty     ``rloo/`` (+ csv)
           (grpo and rloo run when named: ``pipeline`` leaves them out)
eval       SFT vs PPO vs DPO on held-out prompts: true score, learned        ``summary.json``,
           score, KL to SFT, length, EOS rate                                 ``summary.md``, PNG
=========  ===============================================================  =====================

Every model directory is a Hugging Face ``save_pretrained`` folder (model + tokenizer) and holds
``stage.json`` (the stage's metrics) once complete. The comparison store keeps every label any
teacher gave in the folder; the rm and dpo stages train on the current ``--teacher``'s
(:func:`_training_comparisons`). The settings a folder keeps, ``--overwrite`` and the ``stale/``
outputs of redone stages are :mod:`prefenv.app.text_config`'s.

(Over 400 lines: the six stages share private helpers (model loading, stage requirements, prompt
streams, the training comparisons) that splitting the module would have to make public.)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from agents.text.lora import reference_of, reference_policy_of, save_lm, with_lora
from agents.text.sampling import sample_completions
from prefenv.app.folders import undo_failed_start
from prefenv.app.spec import HUMAN, write_json_atomic
from prefenv.app.text_config import (
    PIPELINE,
    STAGES,
    TextPipelineConfig,
    accept_settings,
    check_sources,
    clear_run,
)
from prefenv.app.text_eval import eval_markdown, evaluate_text_model, plot_eval
from prefenv.app.text_human import (
    HumanLabelling,
    collect_human_labels,
    label_sources,
    rm_stage_teacher,
)
from prefenv.errors import CheckpointNotFoundError
from prefenv.records import Comparison, Segment
from prefenv.store import ComparisonStore

if TYPE_CHECKING:
    from envs.text.feedback import TextTeacher

__all__ = ["STAGES", "TextPipelineConfig", "run_pipeline", "run_stage"]


# ----------------------------------------------------------------------------- helpers


def _done(directory: Path) -> bool:
    return (directory / "stage.json").is_file()


def _finish(directory: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    write_json_atomic(directory / "stage.json", metrics)
    return metrics


def _require(directory: Path, stage: str) -> Path:
    if not _done(directory):
        raise CheckpointNotFoundError(
            f"{directory} is not a finished '{stage}' stage output: run `prefenv text {stage} "
            f"--out {directory.parent}` first (or `prefenv text pipeline`)"
        )
    return directory


def _load(directory: Path, config: TextPipelineConfig | None = None) -> tuple[Any, Any]:
    """The model and tokenizer of ``directory``, on ``config``'s ``--device`` and ``--dtype``."""
    from envs.text import load_lm

    return load_lm(directory, *(config.placement() if config else ()))


def _save(model: Any, tokenizer: Any, directory: Path) -> None:
    save_lm(model, tokenizer, directory)  # a LoRA model: merged, and its adapters in adapter/


def _scorer(config: TextPipelineConfig) -> Any:
    from envs.text.tasks import TASKS

    return TASKS[config.task]()


def _train_prompts(config: TextPipelineConfig) -> list[str]:
    from envs.text.corpus import generate_prompts

    return generate_prompts(400, seed=config.stream_seed("train_prompts"))


def _eval_prompts(config: TextPipelineConfig) -> list[str]:
    from envs.text.corpus import generate_prompts

    return generate_prompts(config.eval_prompts, seed=config.stream_seed("eval_prompts"))


def _reward_model(out: Path, config: TextPipelineConfig) -> Any:
    """The rm stage's reward model (or ensemble), placed on ``--device``/``--dtype``."""
    from envs.text.reward_ensemble import load_text_reward_model

    return load_text_reward_model(_require(out / "reward_model", "rm")).place(*config.placement())


# ----------------------------------------------------------------------------- stages


def stage_base(config: TextPipelineConfig, out: Path) -> dict[str, Any]:
    """The starting LM: a copy of ``base_model`` or the default tiny GPT-2 pretrained here."""
    from envs.text import build_default_lm

    target = out / "base"
    if config.base_model is not None:
        try:
            model, tokenizer = _load(Path(config.base_model))
        except (OSError, ValueError) as error:  # transformers' errors span lines
            raise ValueError(
                f"--base-model {config.base_model} does not load as a causal LM with its "
                f"tokenizer ({' '.join(str(error).split())}): pass a folder written by "
                "model.save_pretrained and tokenizer.save_pretrained"
            ) from error
        _save(model, tokenizer, target)
        n_params = sum(p.numel() for p in model.parameters())
        return _finish(target, {"source": str(config.base_model), "n_params": n_params})
    report = build_default_lm(target, seed=config.seed, train_steps=config.base_train_steps)
    return _finish(target, {"source": "default tiny GPT-2", **dataclasses.asdict(report)})


def stage_sft(config: TextPipelineConfig, out: Path) -> dict[str, Any]:
    """Supervised fine-tuning on generated (prompt, completion) demonstrations (the reference)."""
    from agents.text.optim import SFT_OPTIM
    from agents.text.sft import TextSFTConfig, train_text_sft
    from envs.text.corpus import generate_demonstrations

    model, tokenizer = _load(_require(out / "base", "base"), config)
    model = with_lora(model, *config.lora)
    demos = generate_demonstrations(config.sft_demos, seed=config.stream_seed("demonstrations"))
    optim = dataclasses.replace(
        SFT_OPTIM, max_steps=config.sft_steps, seed=config.seed, progress=True
    )
    sft_config = TextSFTConfig(optim)
    metrics = train_text_sft(model, tokenizer, demos, sft_config)
    _save(model, tokenizer, out / "sft")
    return _finish(
        out / "sft",
        {"demonstrations": len(demos), "first_loss": metrics.first_loss,
         "final_loss": metrics.final_loss},
    )  # fmt: skip


def _sample_pairs(
    model: Any, tokenizer: Any, prompts: list[str], n: int, max_new_tokens: int, seed: int
) -> tuple[list[str], list[str], list[str]]:
    """``n`` prompts (cycled) with two independent completions of the model each."""
    chosen = [prompts[i % len(prompts)] for i in range(n)]
    first_seed, second_seed = (
        int(child.generate_state(1)[0]) for child in np.random.SeedSequence(seed).spawn(2)
    )
    first = sample_completions(model, tokenizer, chosen, max_new_tokens, seed=first_seed)
    second = sample_completions(model, tokenizer, chosen, max_new_tokens, seed=second_seed)
    return chosen, first.texts, second.texts


def _teacher(config: TextPipelineConfig) -> TextTeacher:
    from envs.text.feedback import make_text_teacher

    return make_text_teacher(config.teacher, _scorer(config), np.random.default_rng(config.seed))


def _stored_rows(store: ComparisonStore, teacher: Callable[[str], bool]) -> list[Comparison]:
    """The stored comparisons (skipped ones too) whose teacher name passes ``teacher``, in
    append order."""
    names = [t for t in store.teachers() if teacher(t)]
    rows = [row for t in names for row in store.load_with_ids(labelled_only=False, teacher=t)]
    return [comparison for _, comparison in sorted(rows, key=lambda row: row[0])]


def _teacher_rows(store: ComparisonStore, name: str) -> list[Comparison]:
    """One synthetic teacher's stored comparisons: the rows whose teacher is ``name`` or, for an
    annotator population, ``name/<annotator>``."""
    return _stored_rows(store, lambda t: t == name or t.startswith(f"{name}/"))


def _training_comparisons(config: TextPipelineConfig, out: Path) -> list[Comparison]:
    """What the rm and dpo stages train on: every comparison of ``--comparisons-file``, else the
    first ``queries`` comparisons the current ``--teacher`` gave in the run's store; with
    ``--teacher human``, every label people gave in the folder (``overlap`` per query) and the
    fallback teacher's answers to the queries they left (:mod:`prefenv.app.text_human`).

    The store keeps every label ever given (one run may hold several teachers' labels), so
    switching ``--teacher`` back reuses the old teacher's labels instead of asking again.
    """
    if config.comparisons_file is not None:
        from prefenv.jsonl import import_jsonl

        return import_jsonl(config.comparisons_file, default_teacher="imported")
    with ComparisonStore(out / "comparisons.sqlite") as store:
        if config.teacher == HUMAN:
            return _stored_rows(store, rm_stage_teacher)
        return _teacher_rows(store, _teacher(config).name)[: config.queries]


def _sft_pairs(
    config: TextPipelineConfig, model: Any, tokenizer: Any
) -> Callable[[int, int], list[tuple[Segment, Segment]]]:
    """``(n, start) -> n`` text-segment pairs scored by the task: the SFT pairs ``start ..
    start + n - 1`` of stream ``rm_samples`` (indexed by how many a teacher was already asked,
    so every teacher, people too, is first asked about the same pairs)."""
    from envs.text.feedback import text_pairs

    def sample(n: int, start: int) -> list[tuple[Segment, Segment]]:
        texts = _sample_pairs(model, tokenizer, _train_prompts(config), n, config.max_new_tokens,
                              seed=config.stream_seed("rm_samples", start))  # fmt: skip
        return text_pairs(*texts, _scorer(config))

    return sample


def _ask_labels(
    config: TextPipelineConfig, out: Path, model: Any, tokenizer: Any
) -> HumanLabelling | None:
    """Get the labels the rm stage trains on: people's (the human labelling's state) or the
    synthetic teacher's (None); nothing to ask with ``--comparisons-file``."""
    if config.comparisons_file is not None:
        return None
    sample = _sft_pairs(config, model, tokenizer)
    if config.teacher == HUMAN:
        return collect_human_labels(config, out, tokenizer, sample)
    teacher = _teacher(config)  # resumable: asks only what it has not answered yet
    with ComparisonStore(out / "comparisons.sqlite") as store:
        have = len(_teacher_rows(store, teacher.name))
        if have < config.queries:
            store.append(teacher.label(sample(config.queries - have, have)))
    return None


def stage_rm(config: TextPipelineConfig, out: Path) -> dict[str, Any]:
    """Teacher-labelled SFT samples -> comparison store + JSONL -> text reward model.

    Trains on :func:`_training_comparisons` and exports exactly those to ``comparisons.jsonl``.
    With ``--teacher human`` it waits for people first (:mod:`prefenv.app.text_human`); after
    an ``--on-timeout pause`` it returns ``{"paused": True, "message", ...}`` without training,
    and the stage is not done.
    """
    from envs.text.feedback import make_text_teacher
    from envs.text.reward_config import text_reward_config
    from envs.text.reward_ensemble import TextRewardEnsemble
    from envs.text.reward_model import TextRewardModel
    from envs.text.reward_predictor import Whitening
    from prefenv.jsonl import export_jsonl
    from prefenv.reward_training import evaluate_reward_model, train_reward_model

    model, tokenizer = _load(_require(out / "sft", "sft"), config)
    human = _ask_labels(config, out, model, tokenizer)
    if human is not None and human.paused:
        return {"paused": True, "message": human.pause_message(out), "queries": human.posted,
                "labels_human": human.human, "waiting": human.waiting}  # fmt: skip
    comparisons = _training_comparisons(config, out)
    export_jsonl(comparisons, out / "comparisons.jsonl")
    reward = (
        TextRewardModel.build(tokenizer=tokenizer, seed=config.seed)
        if config.rm_ensemble == 1
        else TextRewardEnsemble.build(config.rm_ensemble, tokenizer=tokenizer, seed=config.seed)
    ).place(*config.placement())
    train_config = text_reward_config(max_epochs=config.rm_epochs, seed=config.seed, progress=True)
    metrics = train_reward_model(reward, comparisons, train_config)
    # Held-out accuracy against the *true* score on fresh SFT samples (oracle labels).
    oracle = make_text_teacher(
        "oracle", _scorer(config), np.random.default_rng(config.stream_seed("rm_oracle"))
    )
    fresh = oracle.label_texts(*_sample_pairs(model, tokenizer, _eval_prompts(config), 500,
                                              config.max_new_tokens, seed=config.stream_seed("rm_heldout")))  # fmt: skip
    _, true_accuracy = evaluate_reward_model(reward, fresh, train_config)
    # Whitening statistics on the SFT policy's own samples: PPO's reward predictor returns
    # clip((score - mean) / std, -reward_clip, reward_clip).
    whitening = Whitening.fit(reward.predict([c.segment0.context["prompt"] for c in fresh],
                                             [c.segment0.context["completion"] for c in fresh]))  # fmt: skip
    reward.save_pretrained(out / "reward_model")
    return _finish(
        out / "reward_model",
        {"comparisons": len(comparisons), "labelled": sum(c.label is not None for c in comparisons),
         "teacher": None if config.comparisons_file else config.teacher,
         **label_sources(comparisons, from_file=config.comparisons_file is not None),
         "comparisons_file": config.comparisons_file, "train_accuracy": metrics.train_accuracy,
         "val_accuracy": metrics.val_accuracy, "true_order_accuracy": true_accuracy,
         "score_mean": whitening.mean, "score_std": whitening.std},
    )  # fmt: skip


def _ppo_agent(config: TextPipelineConfig, out: Path, tokenizer: Any, env: Any, model: Any) -> Any:
    from agents.ppo_kl import PPOKL
    from agents.text.lm_policy import CausalLMPolicy

    # --lora-r: the policy trains adapters; the reference is the same LM with them disabled
    policy = CausalLMPolicy(with_lora(model, *config.lora), action_dim=len(tokenizer))
    ref_policy = reference_policy_of(policy)
    checkpoint = out / "ppo" / "checkpoint"
    if checkpoint.is_dir():  # a killed run resumes exactly where its last checkpoint left it
        return PPOKL.load_checkpoint(checkpoint, env, policy=policy, ref_policy=ref_policy,
                                     log_dir=out / "ppo" / "logs")  # fmt: skip
    ppo_config = dataclasses.replace(
        config.ppo, n_steps=config.max_new_tokens,
        batch_size=config.n_envs * config.max_new_tokens // 4, seed=config.seed,
        device=str(model.device),
    )  # fmt: skip
    return PPOKL(
        env, ppo_config, policy=policy, ref_policy=ref_policy, log_dir=out / "ppo" / "logs"
    )


def _reward_env(config: TextPipelineConfig, out: Path, tokenizer: Any, episodes: list) -> Any:
    """The vector text env whose ``VectorPreferenceReward`` scores every episode that ends in a
    vector step in one batched call (whitened with the rm stage's statistics, clipped to
    ``reward_clip``), with the :class:`~prefenv.app.text_monitor.EpisodeLog` above it. The
    native :class:`~envs.text.vector_env.TextVectorEnv`: the same episodes as a
    ``SyncVectorEnv`` of the task, in one numpy step."""
    from envs.text import TextTask
    from envs.text.vector_env import TextVectorEnv
    from prefenv.app.text_monitor import EpisodeLog
    from prefenv.wrappers import VectorPreferenceReward

    prompts = _train_prompts(config)
    task = TextTask(config.task, tokenizer, prompts, max_new_tokens=config.max_new_tokens)
    venv = TextVectorEnv(task, config.n_envs)
    predictor = _reward_predictor(
        config, out, tokenizer, venv.single_observation_space, venv.single_action_space
    )
    return EpisodeLog(VectorPreferenceReward(venv, predictor), episodes)


def _reward_predictor(
    config: TextPipelineConfig, out: Path, tokenizer: Any, observation_space: Any, action_space: Any
) -> Any:
    """The rm stage's reward model as the RL reward (a frozen snapshot): its score whitened with
    the rm stage's statistics and clipped to ``reward_clip``; ``score_texts`` scores texts."""
    from envs.text.reward_predictor import Whitening

    rm_stats = json.loads((_require(out / "reward_model", "rm") / "stage.json").read_text())
    whitening = Whitening(rm_stats["score_mean"], rm_stats["score_std"], config.reward_clip)
    return _reward_model(out, config).predictor(
        observation_space, action_space, tokenizer, whitening
    )


def stage_ppo(config: TextPipelineConfig, out: Path) -> dict[str, Any]:
    """PPO-KL on the learned (whitened) reward with a per-token KL leash to the SFT model."""
    from prefenv.app.text_monitor import TextMonitor, plot_monitor, read_monitor

    model, tokenizer = _load(_require(out / "sft", "sft"), config)
    episodes: list[dict[str, Any]] = []
    env = _reward_env(config, out, tokenizer, episodes)
    agent = _ppo_agent(config, out, tokenizer, env, model)
    monitor = TextMonitor(episodes, out / "ppo")
    chunk = 10 * config.n_envs * config.max_new_tokens
    started = time.perf_counter()
    while agent.num_timesteps < config.ppo_steps:
        agent.learn(min(chunk, config.ppo_steps - agent.num_timesteps), callback=monitor,
                    progress_bar=True)  # fmt: skip
        agent.save_checkpoint(out / "ppo" / "checkpoint")
    env.close()
    _save(agent.policy.model, tokenizer, out / "ppo")
    rows = read_monitor(out / "ppo" / "monitor.csv")
    plot_monitor(rows, out / "ppo" / "ppo_monitor.png", title=f"PPO-KL on {config.task}")
    last = rows[-5:]
    return _finish(
        out / "ppo",
        {"timesteps": agent.num_timesteps, "seconds_this_call": time.perf_counter() - started,
         "final_kl_coef": agent.kl_controller.kl_coef,
         "last_true_score": float(np.mean([r.true_score for r in last])) if last else None,
         "last_kl_to_ref": float(np.mean([r.kl_to_ref for r in last])) if last else None,
         "hacking_alarms": sum(r.hacking_alarm for r in rows)},
    )  # fmt: skip


def _dpo_pairs(config: TextPipelineConfig, out: Path) -> tuple[list[Any], dict[str, Any]]:
    """The dpo stage's pairs (:func:`_training_comparisons`) and what was done to them: with
    ``--dpo-uncertainty``, relabelled and weighted by the rm stage's ensemble
    (:func:`agents.text.pairs.reweight_pairs`, on each member's chosen-minus-rejected score)."""
    from agents.text.pairs import pairs_from_comparisons, reweight_pairs
    from envs.text.reward_ensemble import TextRewardEnsemble

    pairs = pairs_from_comparisons(_training_comparisons(config, out))
    if not config.dpo_uncertainty:
        return pairs, {}
    reward = _reward_model(out, config)
    if not isinstance(reward, TextRewardEnsemble) or len(reward) < 2:
        raise ValueError(
            f"--dpo-uncertainty needs the rm stage's ensemble, but {out / 'reward_model'} holds a "
            f"single reward model: run `prefenv text rm --out {out} --rm-ensemble 3` first"
        )
    prompts = [p.prompt for p in pairs]
    margins = reward.member_predictions(prompts, [p.chosen for p in pairs]) - (
        reward.member_predictions(prompts, [p.rejected for p in pairs])
    )
    pairs, flipped = reweight_pairs(pairs, margins)
    weights = [p.weight for p in pairs]
    return pairs, {"relabelled": int(flipped.sum()), "min_weight": min(weights),
                   "max_weight": max(weights)}  # fmt: skip


def stage_dpo(config: TextPipelineConfig, out: Path) -> dict[str, Any]:
    """The DPO family (``--dpo-loss``) on the rm stage's comparisons, reference = SFT."""
    from agents.text.dpo import DPOConfig, train_dpo
    from agents.text.optim import DPO_OPTIM

    model, tokenizer = _load(_require(out / "sft", "sft"), config)
    model = with_lora(model, *config.lora)
    ref_model = reference_of(model) or _load(out / "sft", config)[0]  # LoRA: adapters disabled
    _require(out / "reward_model", "rm")  # it labelled the comparisons DPO trains on
    pairs, uncertainty = _dpo_pairs(config, out)
    optim = dataclasses.replace(DPO_OPTIM, learning_rate=config.dpo_learning_rate,
                                epochs=config.dpo_epochs, seed=config.seed, progress=True)  # fmt: skip
    dpo_config = DPOConfig(loss=config.dpo_loss, beta=config.dpo_beta,
                           label_smoothing=config.dpo_label_smoothing, optim=optim)  # fmt: skip
    metrics = train_dpo(model, ref_model, tokenizer, pairs, dpo_config)
    _save(model, tokenizer, out / "dpo")
    return _finish(
        out / "dpo",
        {"loss": config.dpo_loss, "pairs": len(pairs), "steps": metrics.steps,
         "first_loss": metrics.first_loss, "final_loss": metrics.final_loss,
         "pairs_per_second": metrics.pairs_per_second, **uncertainty},
    )  # fmt: skip


def _group_rl(config: TextPipelineConfig, out: Path, algo: str) -> dict[str, Any]:
    """The grpo and rloo stages: ``algo`` from the SFT model on the ppo stage's learned reward,
    KL to the SFT model (:mod:`prefenv.app.text_grpo`)."""
    from envs.text import TextTask
    from prefenv.app.text_grpo import train_group_rl

    model, tokenizer = _load(_require(out / "sft", "sft"), config)
    prompts = _train_prompts(config)
    env = TextTask(config.task, tokenizer, prompts, max_new_tokens=config.max_new_tokens)
    predictor = _reward_predictor(config, out, tokenizer, env.observation_space, env.action_space)
    reward = lambda p, c: predictor.score_texts(p, c).mean  # noqa: E731
    metrics = train_group_rl(config, algo, model, tokenizer, prompts, reward, out / algo)
    return _finish(out / algo, metrics)


def stage_eval(config: TextPipelineConfig, out: Path) -> dict[str, Any]:
    """SFT vs PPO-KL vs DPO on held-out prompts; writes summary.json, summary.md and a plot."""
    sft_model, tokenizer = _load(_require(out / "sft", "sft"), config)
    reward = _reward_model(out, config)
    prompts = _eval_prompts(config)
    results: dict[str, Any] = {}
    for name in ("sft", "ppo", "dpo", "grpo", "rloo"):
        if not _done(out / name):
            continue
        model = sft_model if name == "sft" else _load(out / name, config)[0]
        result, samples, true, _ = evaluate_text_model(
            model, tokenizer, prompts, _scorer(config), config.max_new_tokens,
            seed=config.stream_seed("eval_sampling"), ref_model=sft_model, learned_scorer=reward.predict,
        )  # fmt: skip
        results[name] = result.to_dict()
        examples = [{"prompt": p, "completion": c, "true_score": float(s)}
                    for p, c, s in zip(prompts[:8], samples.texts[:8], true[:8], strict=True)]  # fmt: skip
        results[name]["examples"] = examples
    summary = {"config": config.to_dict(), "stages": _stage_metrics(out), "eval": results}
    write_json_atomic(out / "summary.json", summary)
    (out / "summary.md").write_text(eval_markdown(config, results, summary["stages"]))
    plot_eval(results, out / "eval.png", config.task)
    return summary


def _stage_metrics(out: Path) -> dict[str, Any]:
    folders = {"base": "base", "sft": "sft", "rm": "reward_model", "ppo": "ppo", "dpo": "dpo",
               "grpo": "grpo", "rloo": "rloo"}  # fmt: skip
    return {
        stage: json.loads((out / folder / "stage.json").read_text())
        for stage, folder in folders.items()
        if _done(out / folder)
    }


_STAGE_FUNCTIONS = {
    "base": (stage_base, "base"),
    "sft": (stage_sft, "sft"),
    "rm": (stage_rm, "reward_model"),
    "ppo": (stage_ppo, "ppo"),
    "dpo": (stage_dpo, "dpo"),
    "grpo": (functools.partial(_group_rl, algo="grpo"), "grpo"),
    "rloo": (functools.partial(_group_rl, algo="rloo"), "rloo"),
    "eval": (stage_eval, None),
}


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' loading / saving bars and its info warnings (ours stay)."""
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
        hf_logging.set_verbosity(verbosity)


def _run(
    config: TextPipelineConfig, out: Path, stages: tuple[str, ...], pipeline: bool, overwrite: bool
) -> dict[str, Any]:
    """Check, (clear,) save settings, then run ``stages``; a failed start leaves ``out`` as it
    was, unless a stage finished (or outputs were moved to ``stale/``): that work is kept."""
    unknown = [stage for stage in stages if stage not in _STAGE_FUNCTIONS]
    if unknown:
        raise ValueError(f"unknown text stage {unknown[0]!r}: choose one of {list(STAGES)}")

    def finished(stage: str) -> bool:
        folder = _STAGE_FUNCTIONS[stage][1]
        return folder is not None and _done(out / folder)

    todo = [s for s in stages if overwrite or not pipeline or not finished(s)]
    check_sources(config, todo)
    if overwrite:
        clear_run(out)
    keep = lambda: any(map(finished, STAGES)) or (out / "stale").exists()  # noqa: E731
    summary: dict[str, Any] = {}
    with _quiet_transformers(), undo_failed_start(out, keep=keep):
        accept_settings(config, out, None if pipeline else stages[0])  # the pipeline moves none
        torch.set_num_threads(config.torch_threads)
        for stage in todo:
            torch.manual_seed(config.seed)
            summary = _STAGE_FUNCTIONS[stage][0](config, out)
            if summary.get("paused"):  # the rm stage waits for people: later stages need it
                break
    return summary


def run_stage(
    stage: str, config: TextPipelineConfig, out: str | os.PathLike[str], overwrite: bool = False
) -> dict[str, Any]:
    """Run one stage (again, even if it finished before; earlier stages must be done).

    Settings that differ from the folder's are accepted when only this stage or later ones read
    them (the later stages' outputs move to ``stale/``; ``pipeline`` redoes them), else refused.

    Args:
        stage: one of :data:`STAGES`.
        config: the settings.
        out: the run folder.
        overwrite: first delete everything a text run wrote in ``out`` (settings, stored
            labels, every output), then start with ``config``.

    Returns:
        The stage's metrics (the eval summary for ``eval``).
    """
    return _run(config, Path(out), (stage,), pipeline=False, overwrite=overwrite)


def run_pipeline(
    config: TextPipelineConfig,
    out: str | os.PathLike[str],
    stages: tuple[str, ...] = PIPELINE,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run ``stages`` in order, skipping finished ones (resume); returns the eval summary.

    Settings that differ from the folder's are refused (a finished stage would keep the old
    ones): run the first stage they change with :func:`run_stage`, or pass ``overwrite``.
    """
    return _run(config, Path(out), stages, pipeline=True, overwrite=overwrite)
