"""The classic RLHF pipeline on text, spelled out from the library's parts: SFT -> reward model ->
PPO with a per-token KL leash to the SFT model. Offline, on CPU, with the default tiny GPT-2.

1. pretrain the default tiny GPT-2 (or load yours with envs.text.load_lm) and fine-tune it on
   (prompt, completion) demonstrations: the SFT model, which is also the frozen reference;
2. sample two completions per prompt from it; a simulated annotator labels them (the true score
   is the VADER sentiment of the completion); the comparisons go to a durable store;
3. fit a text reward model to them (the one Bradley-Terry trainer every prefenv reward model uses);
4. PPO-KL on `prefenv/TextSentiment-v0` whose reward is the reward model's score, given by the
   same learned-reward wrapper as every other task family (one batched scoring call per vector
   step, whitened), with reward - beta * KL(pi || pi_sft) per token and beta adapted toward a
   per-sequence KL target.

`prefenv text pipeline --out runs/sentiment` runs the same stages (plus DPO and an evaluation)
with run folders, resume and plots.

    python examples/text_rlhf_pipeline.py [--queries 600] [--ppo-steps 20000]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from agents.ppo_kl import PPOKL, PPOKLConfig
from agents.text.lm_policy import CausalLMPolicy, frozen_reference
from agents.text.optim import SFT_OPTIM
from agents.text.sampling import sample_completions
from agents.text.sft import TextSFTConfig, train_text_sft
from envs.text import TextTask, VaderSentiment, build_default_lm, load_lm
from envs.text.corpus import generate_demonstrations, generate_prompts
from envs.text.feedback import make_text_teacher
from envs.text.reward_config import text_reward_config
from envs.text.reward_model import TextRewardModel
from envs.text.reward_predictor import Whitening
from envs.text.vector_env import TextVectorEnv
from prefenv.app.text_eval import evaluate_text_model
from prefenv.app.text_monitor import EpisodeLog, TextMonitor
from prefenv.reward_training import train_reward_model
from prefenv.store import ComparisonStore
from prefenv.wrappers import VectorPreferenceReward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-steps", type=int, default=300, help="pretraining steps")
    parser.add_argument("--sft-steps", type=int, default=150, help="SFT steps (batch 16)")
    parser.add_argument("--queries", type=int, default=600, help="comparisons to label")
    parser.add_argument("--ppo-steps", type=int, default=20_000, help="PPO-KL tokens")
    parser.add_argument("--n-envs", type=int, default=16, help="parallel text envs")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="completion length cap")
    parser.add_argument("--teacher", default="noisy", help="text teacher preset")
    parser.add_argument("--out", type=Path, default=Path("runs/example_text_rlhf"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models: more intra-op threads only add overhead
    rng = np.random.default_rng(0)

    # 1. Base LM + SFT (the reference policy).
    build_default_lm(args.out / "base", train_steps=args.base_steps)
    model, tokenizer = load_lm(args.out / "base")
    sft = train_text_sft(model, tokenizer, generate_demonstrations(1000),
                         TextSFTConfig(replace(SFT_OPTIM, max_steps=args.sft_steps)),
                         out_dir=args.out / "sft")  # fmt: skip
    print(f"SFT: loss {sft.first_loss:.2f} -> {sft.final_loss:.2f}")

    # 2. Two SFT samples per prompt, labelled by a simulated annotator, stored durably.
    prompts = [generate_prompts(400)[i % 400] for i in range(args.queries)]
    first = sample_completions(model, tokenizer, prompts, args.max_new_tokens, seed=1)
    second = sample_completions(model, tokenizer, prompts, args.max_new_tokens, seed=2)
    teacher = make_text_teacher(args.teacher, VaderSentiment(), rng)
    with ComparisonStore(args.out / "comparisons.sqlite") as store:
        store.append(teacher.label_texts(prompts, first.texts, second.texts))
        comparisons = store.load()
    print(f"teacher {args.teacher!r}: {len(comparisons)} labelled comparisons")

    # 3. The text reward model.
    reward = TextRewardModel.build(tokenizer=tokenizer, seed=0)
    fit = train_reward_model(reward, comparisons, text_reward_config(max_epochs=8))
    print(f"reward model: validation accuracy {fit.val_accuracy:.3f} on the teacher's labels")

    # 4. PPO-KL on the learned reward, KL leash to the SFT model. The wrapper scores the episodes
    # that end at each vector step in one batch, whitened by the scores of the SFT samples.
    task = TextTask(
        "sentiment", tokenizer, generate_prompts(400), max_new_tokens=args.max_new_tokens
    )
    venv = TextVectorEnv(task, args.n_envs)  # all rows in one numpy step
    whitening = Whitening.fit(reward.predict(prompts, first.texts), clip=5.0)
    predictor = reward.predictor(venv.single_observation_space, venv.single_action_space,
                                 tokenizer, whitening)  # fmt: skip
    episodes: list[dict] = []
    env = EpisodeLog(VectorPreferenceReward(venv, predictor), episodes)
    policy = CausalLMPolicy(model, action_dim=len(tokenizer))
    config = PPOKLConfig(
        n_steps=args.max_new_tokens, batch_size=args.n_envs * args.max_new_tokens // 4, n_epochs=4,
        gamma=1.0, learning_rate=3e-5, kl_coef=0.1, adaptive_kl=True, kl_target=6.0,
        torch_threads=None,
    )  # fmt: skip
    agent = PPOKL(env, config, policy=policy, ref_policy=frozen_reference(policy))
    monitor = TextMonitor(episodes, args.out / "ppo")
    agent.learn(args.ppo_steps, callback=monitor, progress_bar=True)
    for row in monitor.rows[:: max(1, len(monitor.rows) // 5)]:
        print(f"tokens {row.timesteps:6d}  learned {row.learned_score:+.3f}  true "
              f"{row.true_score:+.3f}  KL {row.kl_to_ref:5.2f}  length {row.mean_length:4.1f}")  # fmt: skip

    # Held-out prompts: true sentiment of SFT vs PPO-KL samples.
    sft_model, _ = load_lm(args.out / "sft")
    held_out = generate_prompts(128, seed=999)
    for name, m in (("SFT", sft_model), ("PPO-KL", policy.model)):
        result, *_ = evaluate_text_model(m, tokenizer, held_out, VaderSentiment(),
                                         args.max_new_tokens, seed=3, ref_model=sft_model)  # fmt: skip
        print(
            f"{name:>6}: true sentiment {result.true_score:+.3f}, KL to SFT {result.kl_to_ref:.2f}"
        )
    print(
        f"monitor: {args.out / 'ppo' / 'monitor.csv'}, samples: {args.out / 'ppo' / 'samples.jsonl'}"
    )


if __name__ == "__main__":
    main()
