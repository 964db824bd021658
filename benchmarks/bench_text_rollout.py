"""Speed: env-stepping text rollouts through CausalLMPolicy vs ``model.generate``, in one process.

Same model (the default ~0.9M-parameter GPT-2 architecture, 4 layers x 128, random init or a
``--model`` directory; its GPT-2 activations fused, :mod:`agents.text.activations`, for every
method), same prompts, batch 32, 48 new tokens, sampling at temperature 1:

- ``generate``: ``model.generate(do_sample=True, max_new_tokens=48, min_new_tokens=48)`` with the
  KV cache (the Hugging Face reference path);
- ``generate_nocache``: the same with ``use_cache=False`` (recomputes the prefix every token);
- ``generate_eos``: rows may stop at EOS; counts tokens up to each row's EOS
  (the batch still runs until its longest row ends: the rollout-shaped use of ``generate``);
- ``env``: 32 rows of ``prefenv/TextSentiment-v0`` in its native vector env
  (:class:`envs.text.vector_env.TextVectorEnv`, what ``prefenv.make_vec`` and the text pipeline's
  PPO-KL stage step) stepped with ``CausalLMPolicy.act`` (KV cache across steps; the prompts of
  rows that autoreset are packed into the step's forward beside the other rows' newest tokens,
  the policy's default, :mod:`agents.text.kv_cache`); the count is generated tokens (valid env
  steps, EOS included), time includes env stepping and scoring;
- ``env_sync``: ``env`` through a ``SyncVectorEnv`` of 32 single envs (the same episodes);
- ``env_separate`` / ``env_padded``: ``env`` with the other prefill modes (a forward of their
  own for the new prompts; the new prompts padded into the step's forward);
- ``sampler``: :func:`agents.text.sampling.sample_completions` (its own KV-cache loop, rows
  stop at EOS: compare with ``generate_eos``), what the rm, eval and GRPO stages sample with;
- ``env+ref``: as ``env`` plus the frozen reference's ``log_prob`` each step, what the PPO-KL
  trainer does during a rollout.

Usage::

    python benchmarks/bench_text_rollout.py                 # 3 repeats, best of each
    python benchmarks/bench_text_rollout.py --threads 1 --repeats 5
    python benchmarks/bench_text_rollout.py --model runs/default_lm
    python benchmarks/bench_text_rollout.py --model runs/default_lm --device cuda

Methods alternate within each repeat so background load hits all alike; the best run of each is
the headline and every run is listed. Tokens per CPU-second (``time.process_time``) are printed
too: on a shared machine they are less sensitive to other processes than wall-clock.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import gymnasium as gym
import numpy as np
import torch

from agents.text.activations import fuse_activations
from agents.text.lm_policy import CausalLMPolicy, frozen_reference
from agents.text.sampling import sample_completions
from envs.text import TextTask, default_tokenizer, load_lm, tiny_gpt2_config
from envs.text.corpus import generate_prompts
from envs.text.vector_env import TextVectorEnv

BATCH = 32
NEW_TOKENS = 48


def build(model_dir: str | None, device: str) -> tuple[torch.nn.Module, object]:
    """The model every method runs, its activations fused up front (CausalLMPolicy fuses the
    model it is given, in place), so ``generate`` and the env path compute the same modules."""
    if model_dir is not None:
        model, tok = load_lm(model_dir)
    else:
        from transformers import GPT2LMHeadModel

        tok = default_tokenizer()
        torch.manual_seed(0)
        model = GPT2LMHeadModel(tiny_gpt2_config(len(tok))).eval()
    fuse_activations(model)
    return model.to(device), tok


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_generate(
    model, tok, prompts: list[str], use_cache: bool, stop_at_eos: bool = False
) -> tuple[float, float]:
    """Generated tokens per (wall, CPU) second of one batched ``generate`` call.

    ``stop_at_eos``: rows may end at EOS (the batch runs until every row ended) and only tokens
    up to each row's EOS count: the useful work, comparable with env rollouts of a trained LM.
    """
    texts = [tok.bos_token + p for p in prompts[:BATCH]]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    enc = enc.to(_device(model))
    _sync(_device(model))
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        out = model.generate(
            **enc,
            do_sample=True,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=1 if stop_at_eos else NEW_TOKENS,
            use_cache=use_cache,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            top_k=0,
        )
    _sync(out.device)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    new = out[:, enc["input_ids"].shape[1] :].cpu()
    if stop_at_eos:
        is_eos = new == tok.eos_token_id
        ended = is_eos.any(1)
        lengths = torch.where(ended, is_eos.long().argmax(1) + 1, new.shape[1])
        tokens = int(lengths.sum())
    else:
        tokens = new.numel()
    return tokens / elapsed, tokens / cpu


def run_sampler(model, tok, prompts: list[str]) -> tuple[float, float]:
    """Tokens per (wall, CPU) second of :func:`agents.text.sampling.sample_completions` (the rm,
    eval and GRPO sampler: rows stop at EOS, so compare it with ``generate_eos``)."""
    _sync(_device(model))
    start, cpu = time.perf_counter(), time.process_time()
    samples = sample_completions(model, tok, prompts[:BATCH], NEW_TOKENS, seed=0, batch_size=BATCH)
    _sync(_device(model))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    tokens = int(samples.completion_mask.sum())
    return tokens / elapsed, tokens / cpu


def run_env(
    model,
    tok,
    prompts: list[str],
    with_ref: bool,
    prefill: str | None = None,
    sync: bool = False,
) -> tuple[float, float]:
    """Generated tokens per (wall, CPU) second of ``NEW_TOKENS`` vector steps of ``policy.act``
    (``sync``: through a ``SyncVectorEnv`` of single envs instead of the native vector env)."""
    task = lambda: TextTask("sentiment", tok, prompts, max_new_tokens=NEW_TOKENS)  # noqa: E731
    env = gym.vector.SyncVectorEnv([task] * BATCH) if sync else TextVectorEnv(task(), BATCH)
    device = _device(model)
    policy = CausalLMPolicy(model, action_dim=len(tok), prefill=prefill).to(device)
    ref = frozen_reference(policy) if with_ref else None
    obs, _ = env.reset(seed=0)
    done = np.zeros(BATCH, dtype=bool)
    tokens = 0
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for _ in range(NEW_TOKENS):
            obs_t = {k: torch.as_tensor(v).to(device) for k, v in obs.items()}
            actions, _, _ = policy.act(obs_t)
            if ref is not None:
                ref.log_prob(obs_t, actions)
            obs, _, terminated, truncated, _ = env.step(actions.cpu().numpy())
            tokens += int((~done).sum())  # NEXT_STEP autoreset: a reset step generates nothing
            done = terminated | truncated
    _sync(device)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    env.close()
    return tokens / elapsed, tokens / cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--model", default=None, help="local HF causal LM dir (default: random)")
    parser.add_argument("--skip-nocache", action="store_true", help="skip generate_nocache")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model, tok = build(args.model, args.device)
    prompts = generate_prompts(BATCH, seed=1)
    n_params = sum(p.numel() for p in model.parameters())
    methods = {
        "generate": lambda: run_generate(model, tok, prompts, use_cache=True),
        "env": lambda: run_env(model, tok, prompts, with_ref=False),
        "env+ref": lambda: run_env(model, tok, prompts, with_ref=True),
        "env_sync": lambda: run_env(model, tok, prompts, with_ref=False, sync=True),
    }
    methods["generate_eos"] = lambda: run_generate(model, tok, prompts, True, True)
    methods["sampler"] = lambda: run_sampler(model, tok, prompts)
    for mode in ("separate", "padded"):  # a trained LM ends episodes early: prefills matter
        methods[f"env_{mode}"] = lambda mode=mode: run_env(model, tok, prompts, False, mode)
    if not args.skip_nocache:
        methods["generate_nocache"] = lambda: run_generate(model, tok, prompts, use_cache=False)
    for fn in methods.values():  # warm-up
        fn()
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            runs[name].append(fn())
    print(
        f"# bench_text_rollout: {n_params / 1e6:.2f}M-param GPT-2, batch {BATCH}, "
        f"{NEW_TOKENS} new tokens, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"python {sys.version.split()[0]}, {platform.machine()}, device {args.device}"
    )
    best_wall = max(w for w, _ in runs["generate"])
    best_cpu = max(c for _, c in runs["generate"])
    print(f"{'method':<18}{'tok/s':>9}{'x gen':>7}{'tok/CPU-s':>11}{'x gen':>7}   all runs (wall)")
    for name, values in runs.items():
        wall, cpu = max(w for w, _ in values), max(c for _, c in values)
        all_runs = ", ".join(f"{w:,.0f}" for w, _ in values)
        print(
            f"{name:<18}{wall:>9,.0f}{wall / best_wall:>6.2f}x{cpu:>11,.0f}{cpu / best_cpu:>6.2f}x"
            f"   {all_runs}"
        )


if __name__ == "__main__":
    main()
