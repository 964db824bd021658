"""Speed: prefenv's GRPO (:func:`agents.text.grpo.train_grpo`) vs TRL's ``GRPOTrainer``, in one process.

Same tiny GPT-2 (the default architecture: 4 layers x 128, default tokenizer; ``--n-layer`` /
``--n-embd`` change it), same initial weights (saved to a local folder, from which both load
the policy and TRL its reference), same prompt pool (generated review openings), same ``G``,
same reward function (:func:`reward_words`, one callable both libraries call), and the same
settings: ``--prompts-per-step`` prompts x ``G`` completions per step, up to ``--max-new``
new tokens, pure sampling (temperature 1, no top-k/top-p), beta 0.04 (k3 KL in the loss),
clip 0.2, one iteration per batch, loss type ``grpo`` (per-sequence token mean), group-std
advantages, constant learning rate, gradient clipping at 1.0, dropout off.

TRL gets fair settings: no evaluation, no logging (``logging_strategy="no"``, ``report_to=[]``,
``disable_tqdm=True``), no checkpointing, fp32, no dataloader workers, and the same torch
thread count (checked after its run).

Checks (printed; the exit status is 1 if one fails):

- **Fixed-batch loss.** The two libraries' sampling cannot be made to produce the same
  completions (TRL samples through its own ``generate`` call with its own seeding and prompt
  tokenization), so the equal-loss check feeds one fixed, given batch through each library's
  loss path: completions sampled by prefenv from the initial model, rewards from
  :func:`reward_words`, group advantages; the policy is the model prefenv trained (so the ratio
  is not 1 and the KL is not 0), the sampling ("old") policy and the reference are the initial
  model. prefenv: :func:`~agents.text.grpo.token_logps` + :func:`~agents.text.grpo_losses.grpo_loss`;
  TRL: ``GRPOTrainer._compute_loss`` on the same tensors. The batch's prompts share one token
  length (no padding); there the two must agree to 1e-4. The same batch with left-padded
  prompts of mixed lengths is reported too, not checked: TRL's loss forward passes no position
  ids, so GPT-2 numbers a padded row's positions from its padding, unlike ``generate`` when it
  sampled; prefenv passes ``generate``'s position ids, so the two differ there (~1e-2).
- **First-step loss** of each real run is reported: with one iteration per batch the ratio is 1
  and the KL 0 at the first step, so both equal ``-mean(advantage)`` (0 up to rounding) on
  their own (different) samples; equal, but not a check of the update.

Reported: completions/s end-to-end (model load, reference copy, sampling, scoring and
training: TRL's trainer construction plus ``train()`` vs loading the model plus one
``train_grpo`` call) and for the training loop alone, wall-clock and per CPU-second, best of
``--repeats`` interleaved runs.

Usage (needs ``pip install trl==1.16.0``; not a prefenv dependency)::

    python benchmarks/bench_grpo_speed.py                       # 4 prompts x G 8, 8 steps
    python benchmarks/bench_grpo_speed.py --steps 4 --repeats 2 --out benchmarks/out/grpo_speed.txt
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from agents.text.grpo import GRPO_OPTIM, GRPOConfig, token_logps, train_grpo  # noqa: E402
from agents.text.grpo_losses import grpo_loss  # noqa: E402
from agents.text.sampling import sample_completions  # noqa: E402
from envs.text.corpus import generate_prompts  # noqa: E402
from envs.text.default_model import default_tokenizer, tiny_gpt2_config  # noqa: E402

BETA = 0.04
EPSILON = 0.2
LR = 5e-5
TOL = 1e-4  # on the fixed-batch loss
REWARD_WORDS = frozenset({"good", "great", "excellent", "wonderful", "loved", "best", "fun"})


def reward_words(prompts: list[str], completions: list[str], **_: object) -> list[float]:
    """The reward both libraries call: how many words of the completion are in :data:`REWARD_WORDS`.

    Args:
        prompts: ``N`` prompts (unused; TRL and prefenv both pass them).
        completions: ``N`` decoded completions.
        **_: TRL's extra keyword arguments (``completion_ids``, dataset columns), ignored.

    Returns:
        ``N`` scores.
    """
    return [float(sum(w.strip(".,!?").lower() in REWARD_WORDS for w in c.split()))
            for c in completions]  # fmt: skip


@dataclass
class Run:
    """One timed training run of either library."""

    name: str
    total_s: float  # model load (+ TRL's trainer construction) + training
    train_s: float  # the training loop only
    cpu_s: float
    completions: int
    first_loss: float
    model: nn.Module | None = None  # prefenv's trained policy, for the fixed-batch check


def grpo_config(steps: int, prompts_per_step: int, group: int, max_new: int) -> GRPOConfig:
    """prefenv's settings, matched to :func:`trl_args`."""
    optim = replace(GRPO_OPTIM, learning_rate=LR, batch_size=prompts_per_step, max_steps=steps,
                    max_grad_norm=1.0)  # fmt: skip
    return GRPOConfig(num_generations=group, beta=BETA, epsilon=EPSILON,
                      max_completion_length=max_new, optim=optim)  # fmt: skip


def run_prefenv(model_dir: str, tokenizer, prompts: list[str], config: GRPOConfig) -> Run:
    """Load the initial model and train it with :func:`train_grpo`; the timed run."""
    from transformers import GPT2LMHeadModel

    cpu = time.process_time()
    start = time.perf_counter()
    model = GPT2LMHeadModel.from_pretrained(model_dir)
    metrics = train_grpo(model, tokenizer, prompts, reward_words, config)
    end = time.perf_counter()
    cpu = time.process_time() - cpu
    return Run("prefenv", end - start, metrics.seconds, cpu, metrics.n_completions,
               metrics.losses[0], model)  # fmt: skip


def trl_args(workdir: str, steps: int, prompts_per_step: int, group: int, max_new: int):
    """TRL's ``GRPOConfig`` with the same settings as :func:`grpo_config`."""
    from trl import GRPOConfig as TRLGRPOConfig

    n = prompts_per_step * group
    return TRLGRPOConfig(
        output_dir=workdir, per_device_train_batch_size=n, generation_batch_size=n,
        num_generations=group, max_completion_length=max_new, max_steps=steps,
        temperature=1.0, top_k=0, top_p=1.0, beta=BETA, epsilon=EPSILON, loss_type="grpo",
        scale_rewards="group", num_iterations=1, disable_dropout=True,
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, logging_strategy="no", save_strategy="no", eval_strategy="no",
        report_to=[], disable_tqdm=True, use_cpu=True, bf16=False, fp16=False,
        dataloader_num_workers=0, dataloader_pin_memory=False, seed=0, data_seed=0,
    )  # fmt: skip


def run_trl(model_dir: str, tokenizer, prompts: list[str], args) -> tuple[Run, object]:
    """Build TRL's trainer from the saved model (policy and reference) and train; the timed run."""
    from datasets import Dataset
    from trl import GRPOTrainer

    class RecordingTrainer(GRPOTrainer):
        """TRL's trainer with each step's loss kept (logging is off)."""

        recorded: list[torch.Tensor]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            self.recorded.append(loss.detach())
            return loss

    rows = [{"prompt": tokenizer.bos_token + p} for p in prompts]
    cpu = time.process_time()
    start = time.perf_counter()
    trainer = RecordingTrainer(model=model_dir, reward_funcs=reward_words, args=args,
                               train_dataset=Dataset.from_list(rows), processing_class=tokenizer)  # fmt: skip
    trainer.recorded = []
    train_start = time.perf_counter()
    trainer.train()
    end = time.perf_counter()
    cpu = time.process_time() - cpu
    n = args.max_steps * args.per_device_train_batch_size
    run = Run("trl", end - start, end - train_start, cpu, n, trainer.recorded[0].item())
    return run, trainer


def equal_length_prompts(tokenizer, prompts: list[str], n: int) -> list[str]:
    """``n`` prompts of the pool's most common token length (so the batch has no padding)."""
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    common = Counter(lengths).most_common(1)[0][0]
    return [p for p, n_tokens in zip(prompts, lengths, strict=True) if n_tokens == common][:n]


def fixed_batch_losses(
    init: nn.Module, policy: nn.Module, trainer, tokenizer, prompts: list[str], config: GRPOConfig
) -> tuple[float, float, float]:
    """``(prefenv loss, TRL loss, mean |log-ratio| policy vs init)`` on one given batch.

    The batch: ``G`` completions of each prompt sampled from ``init`` (seed 0), rewards from
    :func:`reward_words`, group advantages; old and reference log-probs under ``init``, the
    loss's log-probs under ``policy`` (loaded into TRL's model for TRL's path).
    """
    group = config.num_generations
    repeated = [p for p in prompts for _ in range(group)]
    samples = sample_completions(init, tokenizer, repeated, config.max_completion_length, seed=0)
    rewards = torch.tensor(reward_words(repeated, samples.texts))
    advantages = config.advantages(rewards.view(-1, group)).flatten()
    mask = samples.completion_mask.float()
    with torch.no_grad():
        old, logps = token_logps(init, samples), token_logps(policy, samples)
        ours = grpo_loss(logps, old, old, advantages, mask, EPSILON, BETA, "sequence").loss
        trainer.model.load_state_dict(policy.state_dict())
        trainer.model.eval()  # eval mode: no gradient-accumulation scaling in TRL's loss
        inputs = {"prompt_ids": samples.prompt_ids, "prompt_mask": samples.prompt_mask,
                  "completion_ids": samples.completion_ids, "completion_mask": samples.completion_mask,
                  "advantages": advantages, "old_per_token_logps": old, "ref_per_token_logps": old}  # fmt: skip
        theirs = trainer._compute_loss(trainer.model, inputs)
    drift = ((logps - old).abs() * mask).sum() / mask.sum()
    return ours.item(), theirs.item(), drift.item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="GRPO steps (sampling + update)")
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--group", type=int, default=8, help="G: completions per prompt")
    parser.add_argument("--max-new", type=int, default=24, help="max new tokens per completion")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of each")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/grpo_speed.txt"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for name in ("transformers", "datasets", "trl"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import transformers
    import trl
    from transformers import GPT2LMHeadModel

    tokenizer = default_tokenizer()
    config = tiny_gpt2_config(len(tokenizer), n_layer=args.n_layer, n_embd=args.n_embd)
    torch.manual_seed(0)
    init = GPT2LMHeadModel(config).eval()
    n_params = sum(t.numel() for k, t in init.state_dict().items() if k != "lm_head.weight")
    prompts = generate_prompts(args.steps * args.prompts_per_step, seed=0)
    ours = grpo_config(args.steps, args.prompts_per_step, args.group, args.max_new)

    runs: dict[str, list[Run]] = {"prefenv": [], "trl": []}
    with tempfile.TemporaryDirectory() as workdir:
        model_dir = os.path.join(workdir, "init")
        init.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        for repeat in range(args.repeats):
            for name in ("trl", "prefenv") if repeat % 2 == 0 else ("prefenv", "trl"):
                if name == "prefenv":
                    runs[name].append(run_prefenv(model_dir, tokenizer, prompts, ours))
                    continue
                targs = trl_args(os.path.join(workdir, f"trl{repeat}"), args.steps,
                                 args.prompts_per_step, args.group, args.max_new)  # fmt: skip
                with redirect_stderr(io.StringIO()), redirect_stdout(io.StringIO()):
                    run, trainer = run_trl(model_dir, tokenizer, prompts, targs)
                runs[name].append(run)
        threads_after = torch.get_num_threads()
        trained = runs["prefenv"][-1].model
        same = equal_length_prompts(tokenizer, generate_prompts(64, seed=1), args.prompts_per_step)
        loss_ours, loss_trl, drift = fixed_batch_losses(
            init, trained, trainer, tokenizer, same, ours
        )
        padded = fixed_batch_losses(init, trained, trainer, tokenizer,
                                    prompts[: args.prompts_per_step], ours)  # fmt: skip

    best = {name: max(rs, key=lambda r: r.completions / r.total_s) for name, rs in runs.items()}
    p, t = best["prefenv"], best["trl"]
    ok = abs(loss_ours - loss_trl) < TOL
    lines = [
        f"# bench_grpo_speed: {n_params / 1e6:.2f}M-param GPT-2 ({args.n_layer} x {args.n_embd}, "
        f"vocab {len(tokenizer)}), {args.steps} steps x {args.prompts_per_step} prompts x G "
        f"{args.group} = {args.prompts_per_step * args.group} completions/step, up to "
        f"{args.max_new} new tokens, beta {BETA}, clip {EPSILON}, lr {LR}, {args.threads} "
        f"thread(s) (after TRL: {threads_after})",
        f"# python {platform.python_version()}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, trl {trl.__version__}, {platform.machine()}, "
        f"load average {os.getloadavg()[0]:.1f}; prefenv's gelu_new "
        + (
            "left in Python (PREFENV_FUSED_ACTIVATIONS=0)"
            if os.environ.get("PREFENV_FUSED_ACTIVATIONS") == "0"
            else "fused (agents.text.activations); TRL's model keeps it in Python"
        ),
        "# command: " + " ".join([Path(sys.executable).name, *sys.argv]),
        "",
        "same-batch loss (the libraries' samplers differ, so one fixed batch sampled by prefenv "
        "from the initial model goes through each loss path; policy = prefenv-trained, old = "
        f"reference = initial, mean |log-ratio| {drift:.2e}): prefenv {loss_ours:.6f}, TRL "
        f"{loss_trl:.6f}, |diff| {abs(loss_ours - loss_trl):.1e} (tolerance {TOL:.0e}); "
        f"{len(same)} prompts of one token length, so no padding",
        f"same check on left-padded prompts of mixed lengths (not a pass/fail check): prefenv "
        f"{padded[0]:.6f}, TRL {padded[1]:.6f}, |diff| {abs(padded[0] - padded[1]):.1e}: TRL's "
        "loss forward passes no position ids, so GPT-2 numbers a left-padded row's positions "
        "from the padding, not as generate did when sampling; prefenv passes generate's",
        f"first-step loss of the runs (own samples; ratio 1 and KL 0, so -mean advantage): "
        f"prefenv {p.first_loss:.2e}, TRL {t.first_loss:.2e}",
        "",
        "| method | completions/s end-to-end | completions/s train loop | completions per CPU-s "
        "| runs (end-to-end completions/s) |",
        "|---|---|---|---|---|",
    ]
    for name in ("prefenv", "trl"):
        r = best[name]
        all_runs = ", ".join(f"{x.completions / x.total_s:.1f}" for x in runs[name])
        lines.append(
            f"| {name} | {r.completions / r.total_s:.1f} | {r.completions / r.train_s:.1f} | "
            f"{r.completions / r.cpu_s:.1f} | {all_runs} |"
        )
    ratios = [(p.completions / ps) / (t.completions / ts)
              for ps, ts in ((p.total_s, t.total_s), (p.train_s, t.train_s), (p.cpu_s, t.cpu_s))]  # fmt: skip
    lines += [
        "",
        f"ratio prefenv / TRL: end-to-end {ratios[0]:.2f}x, train loop {ratios[1]:.2f}x, "
        f"per CPU-second {ratios[2]:.2f}x (goal >= 1.5x)",
        f"checks: {'all passed' if ok else 'FAILED'}",
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
