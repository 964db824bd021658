"""The text RLHF pipeline as resumable stages writing one run folder.

Stages (each a function of ``(config, out)``; :func:`run_pipeline` runs them in order and skips
the ones whose output is complete, so a killed pipeline resumes where it stopped):

=========  ===============================================================  =====================
stage      does                                                             writes under ``out``
=========  ===============================================================  =====================
base       the starting LM: ``--base-model DIR`` or the default tiny GPT-2   ``base/``
sft        supervised fine-tuning on (prompt, completion) demonstrations     ``sft/``
rm         SFT samples two completions per prompt -> teacher labels ->       ``comparisons.sqlite``,
           comparison store -> text reward model (Bradley-Terry)            ``comparisons.jsonl``,
                                                                            ``reward_model/``
ppo        PPO-KL on the env whose reward is the reward model, per-token      ``ppo/`` (+ monitor)
           KL leash to the SFT model (adaptive beta)
dpo        DPO on the same comparisons, reference = SFT                      ``dpo/``
eval       SFT vs PPO vs DPO on held-out prompts: true score, learned        ``summary.json``,
           score, KL to SFT, length, EOS rate                                 ``summary.md``, PNG
=========  ===============================================================  =====================

Every model directory is a Hugging Face ``save_pretrained`` folder (model + tokenizer) and holds
``stage.json`` (the stage's metrics) once complete. ``prefenv`` imports ``envs`` and ``agents``
only inside these functions (the CLI calls them).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prefenv.app.runs import write_json_atomic
from prefenv.app.text_config import TextPipelineConfig
from prefenv.app.text_eval import evaluate_text_model, sample_completions

__all__ = ["STAGES", "TextPipelineConfig", "run_pipeline", "run_stage"]

STAGES = ("base", "sft", "rm", "ppo", "dpo", "eval")


# ----------------------------------------------------------------------------- helpers


def _done(directory: Path) -> bool:
    return (directory / "stage.json").is_file()


def _finish(directory: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    write_json_atomic(directory / "stage.json", metrics)
    return metrics


def _require(directory: Path, stage: str) -> Path:
    if not _done(directory):
        raise FileNotFoundError(
            f"{directory} is not a finished '{stage}' stage output: run `prefenv text {stage} "
            f"--out {directory.parent}` first (or `prefenv text pipeline`)"
        )
    return directory


def _load(directory: Path) -> tuple[Any, Any]:
    from envs.text import load_lm

    return load_lm(directory)


def _save(model: Any, tokenizer: Any, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def _scorer(config: TextPipelineConfig) -> Any:
    from envs.text.tasks import TASKS

    return TASKS[config.task]()


def _train_prompts(config: TextPipelineConfig) -> list[str]:
    from envs.text.corpus import generate_prompts

    return generate_prompts(400, seed=1 + config.seed)


def _eval_prompts(config: TextPipelineConfig) -> list[str]:
    from envs.text.corpus import generate_prompts

    return generate_prompts(config.eval_prompts, seed=10_000 + config.seed)


def _reward_model(out: Path) -> Any:
    from envs.text.reward_model import load_text_reward_model

    return load_text_reward_model(_require(out / "reward_model", "rm"))


# ----------------------------------------------------------------------------- stages


def stage_base(config: TextPipelineConfig, out: Path) -> dict[str, Any]:
    """The starting LM: a copy of ``base_model`` or the default tiny GPT-2 pretrained here."""
    from envs.text import build_default_lm

    target = out / "base"
    if config.base_model is not None:
        model, tokenizer = _load(Path(config.base_model))
        _save(model, tokenizer, target)
        n_params = sum(p.numel() for p in model.parameters())
        return _finish(target, {"source": str(config.base_model), "n_params": n_params})
    report = build_default_lm(target, seed=config.seed, train_steps=config.base_train_steps)
    return _finish(target, {"source": "default tiny GPT-2", **dataclasses.asdict(report)})


def stage_sft(config: TextPipelineConfig, out: Path) -> dict[str, Any]:
    """Supervised fine-tuning on generated (prompt, completion) demonstrations (the reference)."""
    from agents.text.sft import TextSFTConfig, train_text_sft
    from envs.text.corpus import generate_demonstrations

    model, tokenizer = _load(_require(out / "base", "base"))
    demos = generate_demonstrations(config.sft_demos, seed=2 + config.seed)
    sft_config = TextSFTConfig(max_steps=config.sft_steps, seed=config.seed, progress=True)
    metrics = train_text_sft(model, tokenizer, demos, sft_config, out_dir=out / "sft")
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
    first = sample_completions(model, tokenizer, chosen, max_new_tokens, seed=seed)
    second = sample_completions(model, tokenizer, chosen, max_new_tokens, seed=seed + 1)
    return chosen, first.texts, second.texts


def stage_rm(config: TextPipelineConfig, out: Path) -> dict[str, Any]:
    """Teacher-labelled SFT samples -> comparison store + JSONL -> text reward model."""
    from envs.text.feedback import make_text_teacher
    from envs.text.reward_model import TextRewardEnsemble, TextRewardModel
    from envs.text.reward_training import (
        evaluate_text_reward_model,
        text_reward_config,
        train_text_reward_model,
    )
    from prefenv.jsonl import export_jsonl, import_jsonl
    from prefenv.store import ComparisonStore

    model, tokenizer = _load(_require(out / "sft", "sft"))
    rng = np.random.default_rng(config.seed)
    with ComparisonStore(out / "comparisons.sqlite") as store:
        missing = config.queries - store.count()
        if config.comparisons_file is not None:
            if store.count() == 0:
                store.append(import_jsonl(config.comparisons_file, default_teacher="imported"))
        elif missing > 0:  # resumable: only the queries not yet stored are asked
            teacher = make_text_teacher(config.teacher, _scorer(config), rng)
            texts = _sample_pairs(model, tokenizer, _train_prompts(config), missing,
                                  config.max_new_tokens, seed=config.seed + store.count())  # fmt: skip
            store.append(teacher.label_texts(*texts))
        comparisons = store.load(labelled_only=False)
    export_jsonl(comparisons, out / "comparisons.jsonl")
    reward = (
        TextRewardModel.build(tokenizer=tokenizer, seed=config.seed)
        if config.rm_ensemble == 1
        else TextRewardEnsemble.build(config.rm_ensemble, tokenizer=tokenizer, seed=config.seed)
    )
    train_config = text_reward_config(max_epochs=config.rm_epochs, seed=config.seed, progress=True)
    metrics = train_text_reward_model(reward, comparisons, train_config)
    # Held-out accuracy against the *true* score on fresh SFT samples (oracle labels).
    oracle = make_text_teacher("oracle", _scorer(config), np.random.default_rng(config.seed + 7))
    fresh = oracle.label_texts(*_sample_pairs(model, tokenizer, _eval_prompts(config), 500,
                                              config.max_new_tokens, seed=99_000 + config.seed))  # fmt: skip
    _, true_accuracy = evaluate_text_reward_model(reward, fresh)
    # Whitening statistics on the SFT policy's own samples: PPO sees (score - mean) / std.
    scores = reward.predict([c.segment0.context["prompt"] for c in fresh],
                            [c.segment0.context["completion"] for c in fresh])  # fmt: skip
    reward.save_pretrained(out / "reward_model")
    return _finish(
        out / "reward_model",
        {"comparisons": len(comparisons), "labelled": sum(c.label is not None for c in comparisons),
         "teacher": config.teacher, "train_accuracy": metrics.train_accuracy,
         "val_accuracy": metrics.val_accuracy, "true_order_accuracy": true_accuracy,
         "score_mean": float(scores.mean()), "score_std": float(scores.std() + 1e-8)},
    )  # fmt: skip


class WhitenedScorer:
    """``clip((reward(prompt, completion) - mean) / std, -clip, clip)``: the PPO reward."""

    def __init__(self, reward: Any, mean: float, std: float, clip: float) -> None:
        self.reward, self.mean, self.std, self.clip = reward, mean, std, clip

    def __call__(self, prompt: str, completion: str) -> float:
        value = (float(self.reward(prompt, completion)) - self.mean) / self.std
        return float(np.clip(value, -self.clip, self.clip))


def _ppo_agent(config: TextPipelineConfig, out: Path, tokenizer: Any, env: Any, model: Any) -> Any:
    from agents.ppo_kl import PPOKL, PPOKLConfig
    from agents.text.lm_policy import CausalLMPolicy, frozen_reference

    policy = CausalLMPolicy(model, action_dim=len(tokenizer))
    ref_policy = frozen_reference(policy)
    checkpoint = out / "ppo" / "checkpoint"
    if checkpoint.is_dir():  # a killed run resumes exactly where its last checkpoint left it
        return PPOKL.load_checkpoint(checkpoint, env, policy=policy, ref_policy=ref_policy,
                                     log_dir=out / "ppo" / "logs")  # fmt: skip
    ppo_config = PPOKLConfig(
        n_steps=config.max_new_tokens, batch_size=config.n_envs * config.max_new_tokens // 4,
        n_epochs=4, gamma=1.0, gae_lambda=0.95, learning_rate=config.learning_rate,
        kl_coef=config.kl_coef, adaptive_kl=config.adaptive_kl, kl_target=config.kl_target,
        kl_horizon=config.kl_horizon, kl_estimator=config.kl_estimator, seed=config.seed,
        torch_threads=None,
    )  # fmt: skip
    return PPOKL(
        env, ppo_config, policy=policy, ref_policy=ref_policy, log_dir=out / "ppo" / "logs"
    )


def stage_ppo(config: TextPipelineConfig, out: Path) -> dict[str, Any]:
    """PPO-KL on the learned (whitened) reward with a per-token KL leash to the SFT model."""
    import gymnasium as gym

    from envs.text import TextTask
    from prefenv.app.text_monitor import EpisodeLog, TextMonitor, plot_monitor, read_monitor

    model, tokenizer = _load(_require(out / "sft", "sft"))
    rm_stats = json.loads((_require(out / "reward_model", "rm") / "stage.json").read_text())
    reward = WhitenedScorer(_reward_model(out), rm_stats["score_mean"], rm_stats["score_std"],
                            clip=config.reward_clip)  # fmt: skip
    episodes: list[dict[str, Any]] = []
    prompts = _train_prompts(config)

    def make() -> gym.Env:
        task = TextTask(config.task, tokenizer, prompts, reward_fn=reward,
                        max_new_tokens=config.max_new_tokens)  # fmt: skip
        return EpisodeLog(task, episodes)

    env = gym.vector.SyncVectorEnv([make] * config.n_envs)
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


def stage_dpo(config: TextPipelineConfig, out: Path) -> dict[str, Any]:
    """DPO on the stored comparisons, reference = the SFT model."""
    from agents.text.dpo import DPOConfig, pairs_from_comparisons, train_dpo
    from prefenv.store import ComparisonStore

    model, tokenizer = _load(_require(out / "sft", "sft"))
    ref_model, _ = _load(out / "sft")
    with ComparisonStore(out / "comparisons.sqlite") as store:
        pairs = pairs_from_comparisons(store.load())
    dpo_config = DPOConfig(beta=config.dpo_beta, learning_rate=config.dpo_learning_rate,
                           epochs=config.dpo_epochs, seed=config.seed, progress=True)  # fmt: skip
    metrics = train_dpo(model, ref_model, tokenizer, pairs, dpo_config)
    _save(model, tokenizer, out / "dpo")
    return _finish(
        out / "dpo",
        {"pairs": metrics.n_pairs, "steps": metrics.steps, "first_loss": metrics.first_loss,
         "final_loss": metrics.final_loss, "pairs_per_second": metrics.pairs_per_second},
    )  # fmt: skip


def stage_eval(config: TextPipelineConfig, out: Path) -> dict[str, Any]:
    """SFT vs PPO-KL vs DPO on held-out prompts; writes summary.json, summary.md and a plot."""
    sft_model, tokenizer = _load(_require(out / "sft", "sft"))
    reward = _reward_model(out)
    prompts = _eval_prompts(config)
    results: dict[str, Any] = {}
    for name in ("sft", "ppo", "dpo"):
        if not _done(out / name):
            continue
        model = sft_model if name == "sft" else _load(out / name)[0]
        result, samples, true, _ = evaluate_text_model(
            model, tokenizer, prompts, _scorer(config), config.max_new_tokens,
            seed=20_000 + config.seed, ref_model=sft_model, learned_scorer=reward.predict,
        )  # fmt: skip
        results[name] = result.to_dict()
        examples = [{"prompt": p, "completion": c, "true_score": float(s)}
                    for p, c, s in zip(prompts[:8], samples.texts[:8], true[:8], strict=True)]  # fmt: skip
        results[name]["examples"] = examples
    summary = {"config": config.to_dict(), "stages": _stage_metrics(out), "eval": results}
    write_json_atomic(out / "summary.json", summary)
    (out / "summary.md").write_text(_markdown(config, results, summary["stages"]))
    _plot_eval(results, out / "eval.png", config.task)
    return summary


def _stage_metrics(out: Path) -> dict[str, Any]:
    folders = {"base": "base", "sft": "sft", "rm": "reward_model", "ppo": "ppo", "dpo": "dpo"}
    return {
        stage: json.loads((out / folder / "stage.json").read_text())
        for stage, folder in folders.items()
        if _done(out / folder)
    }


def _markdown(config: TextPipelineConfig, results: dict[str, Any], stages: dict[str, Any]) -> str:
    lines = [
        f"# Text RLHF pipeline: {config.task}, seed {config.seed}",
        "",
        f"Teacher `{config.teacher}`, {config.queries} queries, PPO-KL {config.ppo_steps} tokens, "
        f"DPO beta {config.dpo_beta}; {config.eval_prompts} held-out prompts, one sample each.",
        "",
        "| model | true score | learned score | KL to SFT (nats/seq) | length | EOS rate |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['true_score']:.3f} ± {r['true_score_sem']:.3f} | "
            f"{r['learned_score']:.3f} | {r['kl_to_ref']:.2f} | {r['mean_length']:.1f} | "
            f"{r['eos_rate']:.2f} |"
        )
    rm = stages.get("rm")
    if rm:
        lines += ["", f"Reward model: held-out accuracy against the true score "
                      f"{rm['true_order_accuracy']:.3f} (fresh SFT pairs), validation accuracy "
                      f"{rm['val_accuracy']:.3f} on the teacher's labels."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _plot_eval(results: dict[str, Any], path: Path, task: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    names = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    axes[0].bar(names, [results[n]["true_score"] for n in names],
                yerr=[results[n]["true_score_sem"] for n in names], color="tab:blue")  # fmt: skip
    axes[0].set_ylabel(f"true score ({task})")
    axes[1].bar(names, [results[n]["kl_to_ref"] for n in names], color="tab:red")
    axes[1].set_ylabel("KL to SFT (nats / sequence)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


_STAGE_FUNCTIONS = {
    "base": (stage_base, "base"),
    "sft": (stage_sft, "sft"),
    "rm": (stage_rm, "reward_model"),
    "ppo": (stage_ppo, "ppo"),
    "dpo": (stage_dpo, "dpo"),
    "eval": (stage_eval, None),
}


def _check_config(config: TextPipelineConfig, out: Path) -> None:
    """A run folder keeps the config it started with: resuming with other settings is an error."""
    path = out / "text_config.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        defaults = TextPipelineConfig().to_dict()  # fields added since the run began: defaults
        changed = {
            k: (saved.get(k, defaults[k]), v)
            for k, v in config.to_dict().items()
            if saved.get(k, defaults[k]) != v
        }
        if changed:
            raise ValueError(
                f"{out} was started with other settings {changed} (saved, given): use a new --out "
                "folder, or repeat the original settings to resume"
            )
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, config.to_dict())


def run_stage(
    stage: str, config: TextPipelineConfig, out: str | os.PathLike[str]
) -> dict[str, Any]:
    """Run one stage (again, even if it finished before; earlier stages must be done)."""
    if stage not in _STAGE_FUNCTIONS:
        raise ValueError(f"unknown text stage {stage!r}: choose one of {list(STAGES)}")
    out = Path(out)
    _check_config(config, out)
    torch.set_num_threads(config.torch_threads)
    torch.manual_seed(config.seed)
    function, _ = _STAGE_FUNCTIONS[stage]
    return function(config, out)


def run_pipeline(
    config: TextPipelineConfig, out: str | os.PathLike[str], stages: tuple[str, ...] = STAGES
) -> dict[str, Any]:
    """Run ``stages`` in order, skipping finished ones (resume); returns the eval summary."""
    out = Path(out)
    _check_config(config, out)
    torch.set_num_threads(config.torch_threads)
    summary: dict[str, Any] = {}
    for stage in stages:
        function, folder = _STAGE_FUNCTIONS[stage]
        if folder is not None and _done(out / folder):
            continue
        torch.manual_seed(config.seed)
        summary = function(config, out)
    return summary
