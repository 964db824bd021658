"""Multi-turn dialogue: GRPO, PPO-KL and DPO vs the starting policy, and over-optimisation.

The task is ``prefenv/TextDialogue-v0`` (a scripted user with a hidden tone or topic goal; the
true dialogue score is ``best closeness - 0.05 * turns``). The starting policy is the project's
default tiny GPT-2 (pretrained on the review corpus; there are no dialogue demonstrations to
fine-tune on, so it is also the reference of every KL). Per seed:

- **GRPO**: ``G`` dialogues per opening through the env, the true dialogue score as reward, k3
  KL to the start in the loss; only the policy's tokens are in the loss.
- **PPO-KL**: token-level steps in a vector of dialogue envs, per-turn true rewards, per-token KL
  penalty to the start.
- **DPO**: two dialogues per opening from the start, labelled by the oracle text teacher, sigmoid
  DPO on the pairs (user tokens masked out of the summed log-probs).

Each trained policy and the start are evaluated on every opening (4 dialogues each, fixed
seed): mean true dialogue score, goal-met rate and the KL to the start (mean over dialogues of
the summed log-ratio of the policy's tokens). Then the **over-optimisation check**: per
annotator (``oracle``, and ``verbose``, who adds 0.05 per word of the dialogue to what he
perceives), a text reward model is fit to 300 labelled dialogue pairs from the start, and GRPO
optimises its whitened score with a weak KL leash; per step the learned and the true score of the
same dialogues are recorded against the KL (k3, per policy token), as
``bench_text_overoptimisation.py`` does for single turns.

Usage::

    python benchmarks/bench_dialogue.py --seeds 0 1 2

Prints the tables (Markdown) and writes ``benchmarks/figures/dialogue_overoptimisation.png``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from agents.ppo_kl import PPOKL, PPOKLConfig
from agents.text.dialogue import (
    DialogueSampler,
    SampledDialogues,
    collate_dialogue_pairs,
    dialogue_pairs,
)
from agents.text.dpo import DPOConfig, EncodedData, train_dpo
from agents.text.grpo import GRPO_OPTIM, GRPOConfig, token_logps, train_grpo
from agents.text.lm_policy import CausalLMPolicy, frozen_reference
from agents.text.optim import DPO_OPTIM
from envs.text import build_default_lm, load_lm, make_text_teacher
from envs.text.dialogue import DialogueEnv

OUT = Path(__file__).parent / "out" / "dialogue"
FIGURES = Path(__file__).parent / "figures"
TURN = 16
EVAL_SEED = 1000


def evaluate(model, ref, sampler: DialogueSampler, openings: list[str]) -> dict[str, float]:
    """Mean true score, goal-met rate and KL to ``ref`` of 4 dialogues per opening."""
    d = sampler.sample(model, openings * 4, EVAL_SEED)
    return {"score": float(d.scores.mean()), "met": float((d.ends == "goal").mean()),
            "kl": sequence_kl(model, ref, d)}  # fmt: skip


@torch.no_grad()
def sequence_kl(model, ref, d: SampledDialogues) -> float:
    """Mean over dialogues of ``sum_t (log pi - log pi_ref)`` on the policy's tokens."""
    diff = (token_logps(model, d.samples) - token_logps(ref, d.samples)) * d.loss_mask
    return float(diff.sum(1).mean())


def dialogue_envs(tokenizer, n: int) -> list[DialogueEnv]:
    return [DialogueEnv(tokenizer=tokenizer, max_turn_tokens=TURN) for _ in range(n)]


def run_grpo(base, tokenizer, sampler, openings, seed: int, steps: int, reward_fn, beta: float):
    model = copy.deepcopy(base)
    optim = replace(GRPO_OPTIM, learning_rate=1e-4, batch_size=4, max_steps=steps, seed=seed)
    config = GRPOConfig(num_generations=8, beta=beta, max_completion_length=TURN, optim=optim)
    metrics = train_grpo(model, tokenizer, openings, reward_fn, config, ref_model=base,
                         sampler=sampler)  # fmt: skip
    return model, metrics


def run_ppo(base, tokenizer, seed: int, steps: int):
    model = copy.deepcopy(base)
    policy = CausalLMPolicy(model, action_dim=len(tokenizer))
    env = gym.vector.SyncVectorEnv([lambda: DialogueEnv(tokenizer=tokenizer, max_turn_tokens=TURN)
                                    for _ in range(8)])  # fmt: skip
    config = PPOKLConfig(learning_rate=1e-4, n_steps=64, batch_size=128, n_epochs=4, gamma=1.0,
                         kl_coef=0.05, seed=seed, torch_threads=None)  # fmt: skip
    agent = PPOKL(env, config, policy=policy, ref_policy=frozen_reference(policy))
    agent.learn(steps)
    return model


def run_dpo(base, tokenizer, sampler, openings, seed: int, rounds: int):
    teacher = make_text_teacher("oracle", sampler.envs[0].dialogue_scorer(),
                                np.random.default_rng(seed))  # fmt: skip
    items = []
    for r in range(rounds):
        first = sampler.sample(base, openings, seed * 1000 + 2 * r)
        second = sampler.sample(base, openings, seed * 1000 + 2 * r + 1)
        labels = teacher.label_texts(openings, first.samples.texts, second.samples.texts)
        items += list(dialogue_pairs(first, second, labels).items)
    model = copy.deepcopy(base)
    optim = replace(DPO_OPTIM, learning_rate=1e-4, batch_size=8, epochs=3, seed=seed)
    data = EncodedData(items, collate_dialogue_pairs)
    train_dpo(model, base, tokenizer, data, DPOConfig(beta=0.1, optim=optim))
    return model, len(items)


def overoptimisation(base, tokenizer, sampler, openings, teacher_name: str, steps: int,
                     beta: float):  # fmt: skip
    """GRPO on a dialogue reward model fit to ``teacher_name``'s labels: per step (KL, learned,
    true)."""
    from envs.text.reward_config import TextRewardModelConfig, text_reward_config
    from envs.text.reward_model import TextRewardModel
    from envs.text.reward_predictor import Whitening
    from prefenv.reward_training import train_reward_model

    scorer = sampler.envs[0].dialogue_scorer()
    teacher = make_text_teacher(teacher_name, scorer, np.random.default_rng(7))
    comparisons = []
    for r in range(10):
        first, second = (sampler.sample(base, openings, 500 + 2 * r + k) for k in (0, 1))
        comparisons += teacher.label_texts(openings, first.samples.texts, second.samples.texts)
    reward = TextRewardModel.build(TextRewardModelConfig(max_length=192), tokenizer, seed=0)
    fit = train_reward_model(reward, comparisons, text_reward_config(max_epochs=10, seed=0))
    fresh = sampler.sample(base, openings * 4, 900)
    whitening = Whitening.fit(reward.predict(fresh.samples.prompts, fresh.samples.texts))
    true_means: list[float] = []

    def learned(prompts: list[str], texts: list[str]) -> np.ndarray:
        true_means.append(float(np.mean(list(map(scorer, prompts, texts)))))
        return (reward.predict(prompts, texts) - whitening.mean) / whitening.std

    _, metrics = run_grpo(base, tokenizer, sampler, openings, 0, steps, learned, beta)
    rows = list(zip(metrics.kls, metrics.reward_means, true_means, strict=True))
    return rows, fit.val_accuracy, len(comparisons)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--grpo-steps", type=int, default=30)
    parser.add_argument("--ppo-steps", type=int, default=8192, help="env steps (tokens)")
    parser.add_argument("--dpo-rounds", type=int, default=4, help="pairs = rounds x 30 openings")
    parser.add_argument("--overopt-steps", type=int, default=40)
    parser.add_argument("--teachers", nargs="*", default=["oracle", "verbose"])
    parser.add_argument("--overopt-beta", type=float, default=0.01)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    if not (OUT / "base" / "config.json").exists():
        build_default_lm(OUT / "base", seed=0)
    base, tokenizer = load_lm(OUT / "base")
    sampler = DialogueSampler(dialogue_envs(tokenizer, 32), tokenizer, TURN)
    openings = [s.opening for s in sampler.envs[0].scenarios]
    scorer = sampler.envs[0].dialogue_scorer()
    true_reward = lambda p, c: list(map(scorer, p, c))  # noqa: E731
    results: dict[str, list[dict[str, float]]] = {
        "start": [evaluate(base, base, sampler, openings)]
    }
    for seed in args.seeds:
        grpo, _ = run_grpo(base, tokenizer, sampler, openings, seed, args.grpo_steps, true_reward,
                           beta=0.04)  # fmt: skip
        results.setdefault("GRPO", []).append(evaluate(grpo, base, sampler, openings))
        ppo = run_ppo(base, tokenizer, seed, args.ppo_steps)
        results.setdefault("PPO-KL", []).append(evaluate(ppo, base, sampler, openings))
        dpo, n_pairs = run_dpo(base, tokenizer, sampler, openings, seed, args.dpo_rounds)
        results.setdefault("DPO", []).append(evaluate(dpo, base, sampler, openings))
        print(f"seed {seed} done at {time.perf_counter() - start:.0f} s", file=sys.stderr)
    print(f"# dialogue task, cmd: {' '.join(sys.argv)}")
    if args.seeds:
        print(f"seeds {args.seeds}; GRPO {args.grpo_steps} steps x 32 dialogues; PPO-KL "
              f"{args.ppo_steps} tokens; DPO {n_pairs} oracle pairs x 3 epochs; eval 120 "
              "dialogues\n")  # fmt: skip
    print("| policy | true dialogue score | goal met | KL to start (nats/dialogue) |")
    print("|---|---|---|---|")
    for name, rows in results.items():
        cells = [f"{np.mean([r[k] for r in rows]):+.3f} ± {np.std([r[k] for r in rows]):.3f}"
                 for k in ("score", "met", "kl")]  # fmt: skip
        print(f"| {name} | " + " | ".join(cells) + " |")
    curves = {}
    print(f"\nover-optimisation: GRPO beta {args.overopt_beta} on each annotator's reward model, "
          "windows of 10 steps\n")  # fmt: skip
    print("| annotator | steps | KL (k3, per policy token) | learned (whitened) | true score |")
    print("|---|---|---|---|---|")
    for teacher in args.teachers:
        rows, accuracy, n = overoptimisation(base, tokenizer, sampler, openings, teacher,
                                             args.overopt_steps, args.overopt_beta)  # fmt: skip
        curves[f"{teacher} (RM val acc {accuracy:.2f}, {n} pairs)"] = rows
        for i in range(0, len(rows), 10):
            kl, learned, true = np.mean(rows[i : i + 10], axis=0)
            print(f"| {teacher} | {i}-{i + 9} | {kl:.3f} | {learned:+.2f} | {true:+.3f} |")
    if curves:
        _plot(curves, FIGURES / "dialogue_overoptimisation.png")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


def _plot(curves: dict[str, list[tuple[float, float, float]]], figure: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 3.8), squeeze=False)
    for ax, (name, rows) in zip(axes[0], curves.items(), strict=True):
        kl, learned, true = (np.array(col) for col in zip(*rows, strict=True))
        ax.plot(kl, learned, "o", color="tab:orange", alpha=0.6)
        ax.set_xlabel("KL to start (k3, nats per policy token)")
        ax.set_ylabel("learned score (std units)", color="tab:orange")
        twin = ax.twinx()
        twin.plot(kl, true, "s", color="tab:blue", alpha=0.6)
        twin.set_ylabel("true dialogue score", color="tab:blue")
        ax.set_title(f"GRPO on the {name} reward", fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
