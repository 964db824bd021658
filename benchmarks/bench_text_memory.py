"""Memory (issue 15): peak RSS of text PPO-KL with a full reference copy vs LoRA, adapters off.

Each mode runs in its own fresh process (peak RSS, ``ru_maxrss``, only grows) on the same
GPT-2-architecture model built from a config (random init: memory does not depend on the weights'
values), the project's tokenizer, ``prefenv/TextSentiment``'s env and PPO-KL's text settings:

- ``full``: the policy trains every parameter; the KL reference is a frozen deep copy
  (:func:`agents.text.lm_policy.frozen_reference`), as ``prefenv text ppo`` without ``--lora-r``;
- ``lora``: the policy trains rank-``--lora-r`` adapters; the reference is the same modules with
  the adapters disabled (:class:`agents.text.lora.AdapterDisabledPolicy`), as ``--lora-r 8``.

Each process reports its RSS after building the model (the baseline every mode pays), after
building the agent, and its peak over ``--iterations`` PPO-KL iterations. Results go to
``benchmarks/results/text_memory_<layers>x<width>.json``.

Usage::

    python benchmarks/bench_text_memory.py                        # GPT-2 small's shape, 12 x 768
    python benchmarks/bench_text_memory.py --layers 24 --width 1024 --heads 16   # GPT-2 medium
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def run_mode(args: argparse.Namespace) -> dict:
    """One mode in this process: build, train ``args.iterations`` iterations, measure."""
    import gymnasium as gym
    import torch
    from transformers import GPT2LMHeadModel

    from agents.ppo_kl import PPOKL, PPOKLConfig
    from agents.text.lm_policy import CausalLMPolicy
    from agents.text.lora import add_lora, reference_policy_of
    from envs.text import TextTask, default_tokenizer, tiny_gpt2_config

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = default_tokenizer()
    config = tiny_gpt2_config(len(tokenizer), n_layer=args.layers, n_embd=args.width,
                              n_head=args.heads)  # fmt: skip
    model = GPT2LMHeadModel(config).eval()
    params = sum(p.numel() for p in model.parameters())
    after_model = _rss_mb()
    if args.mode == "lora":
        model = add_lora(model, r=args.lora_r, alpha=2.0 * args.lora_r)
    policy = CausalLMPolicy(model, action_dim=len(tokenizer))
    ref = reference_policy_of(policy)
    prompts = ["The pasta was", "To be honest, the soundtrack was", "This movie", "The hotel"]
    env = gym.vector.SyncVectorEnv(
        [lambda: TextTask("sentiment", tokenizer, prompts, max_new_tokens=args.new_tokens)]
        * args.envs
    )
    ppo = PPOKLConfig(n_steps=args.new_tokens, batch_size=args.envs * args.new_tokens // 2,
                      n_epochs=2, kl_coef=0.05, learning_rate=1e-5, seed=0)  # fmt: skip
    agent = PPOKL(env, ppo, policy=policy, ref_policy=ref)
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    after_agent = _rss_mb()
    started = time.perf_counter()
    agent.learn(args.iterations * args.envs * args.new_tokens)
    return {
        "mode": args.mode, "parameters": params, "trainable": trainable,
        "rss_after_model_mb": round(after_model, 1), "rss_after_agent_mb": round(after_agent, 1),
        "peak_rss_mb": round(_peak_mb(), 1), "train_seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--envs", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mode", choices=("full", "lora"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode is not None:  # a child: one mode, its figures on stdout
        print(json.dumps(run_mode(args)))
        return
    rows = []
    for mode in ("full", "lora"):
        child = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--mode", mode],
            capture_output=True, text=True, check=True, env={**os.environ},
        )  # fmt: skip
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
    result = RESULTS / f"text_memory_{args.layers}x{args.width}.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    print("| mode | parameters | trainable | RSS after model MB | RSS after agent MB | "
          "peak RSS MB | train s |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['parameters']:,} | {r['trainable']:,} | "
              f"{r['rss_after_model_mb']:,.0f} | {r['rss_after_agent_mb']:,.0f} | "
              f"{r['peak_rss_mb']:,.0f} | {r['train_seconds']} |")  # fmt: skip


if __name__ == "__main__":
    main()
