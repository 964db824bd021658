"""Speed: prefenv's DPO (:func:`agents.text.dpo.train_dpo`) vs TRL's ``DPOTrainer``, in one process.

Same tiny GPT-2 (the default architecture: 4 layers x 128, default tokenizer; ``--n-layer`` /
``--n-embd`` change it), same initial weights, same pairs (generated prompts + review
sentences, about 30 tokens per sequence), same batches in the same order (both sequential:
TRL's sampler is replaced by a ``SequentialSampler``), batch 32, the same AdamW settings
(constant learning rate, no warm-up, no weight decay, gradient clipping at 1.0), beta 0.1,
reference log-probs precomputed once (TRL: ``precompute_ref_log_probs=True``,
``precompute_ref_batch_size=64``; prefenv: ``precompute_ref=True``, ``ref_batch_size=64``).

TRL gets fair settings: no evaluation, no logging (``logging_strategy="no"``,
``report_to=[]``, ``disable_tqdm=True``), no checkpointing, fp32, no dataloader workers, and
the same torch thread count (checked after its run).

Checks (printed, and the exit status is 1 if one fails):

- both encode every pair to the same token ids (TRL tokenizes ``prompt + completion`` jointly,
  prefenv the two halves; the data is built so that they agree);
- the precomputed reference log-probs agree (to 1e-3 nats on sums of about -180): the same
  sequence log-prob;
- the first batch's loss agrees (to 1e-4; both log 2 since policy = reference), and so does
  every later step's loss (the same data, order and optimiser: a check of the whole update).

Reported: pairs/s end-to-end (tokenization + reference pass + training, i.e. TRL's trainer
construction plus ``train()`` vs one ``train_dpo`` call) and for the training loop alone,
wall-clock and per CPU-second, best of ``--repeats`` interleaved runs.

``--loss`` times one member of the DPO family against its TRL counterpart: ``sigmoid``, ``ipo``
and ``robust`` (``--label-smoothing`` is its flip rate) against ``DPOTrainer`` (``loss_type``),
``simpo`` against ``trl.experimental.cpo.CPOTrainer`` (``loss_type="simpo"``, ``cpo_alpha=0``,
beta 2.0, ``simpo_gamma = 2.0 * 0.5``; neither reads a reference), ``kto`` against
``KTOTrainer`` on unpaired examples (pair ``i`` gives its chosen completion, labelled desirable,
for even ``i`` and its rejected one for odd ``i``: ``--pairs`` examples, each prompt once, so
both rotate the KL completions by one within each batch). The token-id and reference log-prob
checks read ``DPOTrainer``'s dataset and run for its three losses; the loss-trajectory check runs
for all.

Usage (needs ``pip install trl==1.16.0``; not a prefenv dependency)::

    python benchmarks/bench_dpo_speed.py                 # 512 pairs, 2 epochs, 1 thread
    python benchmarks/bench_dpo_speed.py --pairs 256 --epochs 1 --repeats 3 --out benchmarks/out/dpo_speed.txt
    python benchmarks/bench_dpo_speed.py --loss kto --pairs 64 --epochs 1 --repeats 1
"""

from __future__ import annotations

import argparse
import copy
import io
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from agents.text.dpo import LOSSES, DPOConfig, reference_logps, train_dpo  # noqa: E402
from agents.text.optim import LMOptimConfig  # noqa: E402
from agents.text.pairs import PreferencePair, encode_pairs  # noqa: E402
from envs.text.corpus import generate_corpus, generate_prompts  # noqa: E402
from envs.text.default_model import default_tokenizer, tiny_gpt2_config  # noqa: E402
from prefenv.unpaired import UnpairedExample  # noqa: E402

BATCH = 32
BETA = 0.1
SIMPO_BETA = 2.0  # DPOConfig.simpo_beta; gamma / beta 0.5
DPO_TRAINER_LOSSES = ("sigmoid", "ipo", "robust")
TOL = 1e-4  # on losses
LOGP_TOL = 1e-3  # on summed sequence log-probs (about -180 nats: float32 sums differ ~1e-5)
WORDS = 24  # completion length cap in words: sequences of about 30 tokens


def make_pairs(n: int, seed: int) -> list[PreferencePair]:
    """``n`` pairs: a prompt and two review sentences (chosen/rejected arbitrary for speed).

    Completions start with a space and prompts end on a word, so that tokenizing the prompt
    and the completion separately gives the same ids as tokenizing them joined (as TRL does).
    """
    prompts = generate_prompts(n, seed=seed)
    reviews = generate_corpus(4 * n, seed=seed + 1)
    pairs = []
    for i, prompt in enumerate(prompts):
        first, second = (
            " " + " ".join(f"{reviews[k]} {reviews[k + 1]}".split()[:WORDS])
            for k in (4 * i, 4 * i + 2)
        )
        pairs.append(PreferencePair(prompt, first, second))
    return pairs


def kto_examples(pairs: list[PreferencePair]) -> list[UnpairedExample]:
    """One unpaired example per pair: the chosen completion for even pairs, else the rejected."""
    return [
        UnpairedExample(p.prompt, p.chosen, True)
        if i % 2 == 0
        else UnpairedExample(p.prompt, p.rejected, False)
        for i, p in enumerate(pairs)
    ]


@dataclass
class Run:
    name: str
    total_s: float  # tokenization + reference pass + training
    train_s: float  # training loop only
    cpu_s: float
    pairs_seen: int
    losses: list[float]


def run_prefenv(model, tokenizer, pairs, epochs: int, lr: float, loss: str, eps: float) -> Run:
    optim = LMOptimConfig(learning_rate=lr, batch_size=BATCH, epochs=epochs, max_length=128,
                          shuffle=False, max_grad_norm=1.0)  # fmt: skip
    config = DPOConfig(loss=loss, beta=BETA, label_smoothing=eps, simpo_beta=SIMPO_BETA,
                       precompute_ref=True, ref_batch_size=64, optim=optim)  # fmt: skip
    data = kto_examples(pairs) if loss == "kto" else pairs
    cpu = time.process_time()
    metrics = train_dpo(model, None, tokenizer, data, config)
    cpu = time.process_time() - cpu
    return Run("prefenv", metrics.seconds, metrics.seconds - metrics.ref_seconds, cpu,
               metrics.n_pairs_seen, metrics.losses)  # fmt: skip


def _sequential(trainer_class):
    from torch.utils.data import SequentialSampler

    class SequentialTrainer(trainer_class):
        """TRL's trainer with batches in dataset order and each step's loss kept (no logging)."""

        recorded: list[torch.Tensor]

        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset or self.train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            self.recorded.append((loss[0] if return_outputs else loss).detach())
            return loss

    return SequentialTrainer


def _trl_trainer(model, tokenizer, pairs, loss: str, eps: float, common: dict):
    """The TRL trainer of ``loss`` (built inside the timed region: it tokenizes and precomputes)."""
    from datasets import Dataset

    bos = tokenizer.bos_token
    if loss == "kto":
        from trl import KTOConfig, KTOTrainer

        rows = [{"prompt": bos + e.prompt, "completion": e.completion, "label": e.label}
                for e in kto_examples(pairs)]  # fmt: skip
        args = KTOConfig(**common, beta=BETA, precompute_ref_log_probs=True,
                         precompute_ref_batch_size=64)  # fmt: skip
        return _sequential(KTOTrainer)(model=model, ref_model=None, args=args,
                                       train_dataset=Dataset.from_list(rows), processing_class=tokenizer)  # fmt: skip
    rows = [{"prompt": bos + p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs]
    if loss == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        args = CPOConfig(**common, loss_type="simpo", cpo_alpha=0.0, beta=SIMPO_BETA,
                         simpo_gamma=SIMPO_BETA * 0.5, label_smoothing=eps)  # fmt: skip
        return _sequential(CPOTrainer)(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                       processing_class=tokenizer)  # fmt: skip
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    args = TRLDPOConfig(**common, beta=BETA, loss_type=[loss], label_smoothing=eps,
                        precompute_ref_log_probs=True, precompute_ref_batch_size=64)  # fmt: skip
    return _sequential(DPOTrainer)(model=model, ref_model=None, args=args,
                                   train_dataset=Dataset.from_list(rows), processing_class=tokenizer)  # fmt: skip


def run_trl(
    model, tokenizer, pairs, epochs: int, lr: float, workdir: str, loss: str, eps: float
) -> tuple[Run, object]:
    common = dict(
        output_dir=workdir, per_device_train_batch_size=BATCH, num_train_epochs=epochs,
        learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, max_length=128,
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to=[],
        disable_tqdm=True, use_cpu=True, bf16=False, fp16=False, dataloader_num_workers=0,
        seed=0, data_seed=0, dataloader_pin_memory=False,
    )  # fmt: skip
    cpu = time.process_time()
    start = time.perf_counter()
    trainer = _trl_trainer(model, tokenizer, pairs, loss, eps, common)
    trainer.recorded = []
    train_start = time.perf_counter()
    trainer.train()
    end = time.perf_counter()
    cpu = time.process_time() - cpu
    losses = [x.item() for x in trainer.recorded]
    run = Run("trl", end - start, end - train_start, cpu, len(losses) * BATCH, losses)
    # the last batch may be short: count the pairs actually seen
    run.pairs_seen = epochs * len(pairs)
    return run, trainer


def check_equivalence(tokenizer, pairs, trainer, init_state, config, lines: list[str]) -> bool:
    """Same token ids and reference log-probs in both; returns whether all agree."""
    from transformers import GPT2LMHeadModel

    ok = True
    data = trainer.train_dataset
    encoded = encode_pairs(tokenizer, pairs, 128)
    same_ids = all(
        list(data[i]["prompt_ids"]) == e.prompt
        and list(data[i]["chosen_ids"]) == e.chosen
        and list(data[i]["rejected_ids"]) == e.rejected
        for i, e in enumerate(encoded)
    )
    lines.append(f"token ids identical in TRL and prefenv for all {len(pairs)} pairs: {same_ids}")
    ok &= same_ids
    model = GPT2LMHeadModel(config)
    model.load_state_dict(init_state)
    chosen, rejected = reference_logps(model, encoded, tokenizer.pad_token_id, 64)
    trl_chosen = torch.tensor(data["ref_chosen_logps"])
    trl_rejected = torch.tensor(data["ref_rejected_logps"])
    diff = max(
        (chosen - trl_chosen).abs().max().item(), (rejected - trl_rejected).abs().max().item()
    )
    lines.append(
        f"reference log-probs: max |prefenv - TRL| = {diff:.2e} over {2 * len(pairs)} sequences "
        f"(mean chosen logp {chosen.mean():.4f} vs {trl_chosen.mean():.4f})"
    )
    ok &= diff < LOGP_TOL
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=512, help="preference pairs")
    parser.add_argument("--epochs", type=int, default=2, help="passes over the pairs")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of each")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate (both)")
    parser.add_argument("--loss", choices=LOSSES, default="sigmoid", help="DPO-family loss")
    parser.add_argument("--label-smoothing", type=float, default=0.0,
                        help="label smoothing (robust: its flip rate), both")  # fmt: skip
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--out", type=Path, default=None,
                        help="default benchmarks/out/dpo_speed.txt (dpo_speed_<loss>.txt)")  # fmt: skip
    args = parser.parse_args()
    suffix = "" if args.loss == "sigmoid" else f"_{args.loss}"
    args.out = args.out or Path(f"benchmarks/out/dpo_speed{suffix}.txt")

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("datasets").setLevel(logging.ERROR)
    import transformers
    import trl
    from transformers import GPT2LMHeadModel

    tokenizer = default_tokenizer()
    config = tiny_gpt2_config(len(tokenizer), n_layer=args.n_layer, n_embd=args.n_embd)
    torch.manual_seed(0)
    init_state = copy.deepcopy(GPT2LMHeadModel(config).state_dict())
    n_params = sum(t.numel() for k, t in init_state.items() if k != "lm_head.weight")  # tied
    pairs = make_pairs(args.pairs, seed=0)
    lengths = [len(p.prompt) + len(c) for p in encode_pairs(tokenizer, pairs, 128)
               for c in (p.chosen, p.rejected)]  # fmt: skip

    def fresh_model():
        model = GPT2LMHeadModel(config)
        model.load_state_dict(init_state)
        return model

    runs: dict[str, list[Run]] = {"prefenv": [], "trl": []}
    trainer = None
    with tempfile.TemporaryDirectory() as workdir:
        for repeat in range(args.repeats):
            order = ("trl", "prefenv") if repeat % 2 == 0 else ("prefenv", "trl")
            for name in order:
                if name == "prefenv":
                    runs[name].append(run_prefenv(fresh_model(), tokenizer, pairs, args.epochs,
                                                  args.lr, args.loss, args.label_smoothing))  # fmt: skip
                else:
                    with redirect_stderr(io.StringIO()), redirect_stdout(io.StringIO()):
                        run, trainer = run_trl(
                            fresh_model(), tokenizer, pairs, args.epochs, args.lr,
                            os.path.join(workdir, f"trl{repeat}"), args.loss,
                            args.label_smoothing,
                        )  # fmt: skip
                    runs[name].append(run)
        threads_after = torch.get_num_threads()
        lines = [
            f"# bench_dpo_speed: {n_params / 1e6:.2f}M-param GPT-2 ({args.n_layer} x {args.n_embd}, "
            f"vocab {len(tokenizer)}), {args.pairs} pairs x {args.epochs} epochs, batch {BATCH}, "
            f"loss {args.loss} (label smoothing {args.label_smoothing}), beta "
            f"{SIMPO_BETA if args.loss == 'simpo' else BETA}, lr {args.lr}, {args.threads} "
            f"thread(s) (after TRL: {threads_after})",
            f"# sequence length (prompt + completion, BOS/EOS incl.): mean {np.mean(lengths):.1f}, "
            f"max {max(lengths)} tokens",
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
        ]
        if args.loss in DPO_TRAINER_LOSSES:
            ok = check_equivalence(tokenizer, pairs, trainer, init_state, config, lines)
        else:
            ok = True
            lines.append(f"token ids / reference log-probs: not compared for {args.loss} (read "
                         "from DPOTrainer's dataset); the loss trajectory below checks it")  # fmt: skip

    best = {name: max(rs, key=lambda r: r.pairs_seen / r.total_s) for name, rs in runs.items()}
    p, t = best["prefenv"], best["trl"]
    first = abs(p.losses[0] - t.losses[0])
    steps = min(len(p.losses), len(t.losses))
    trajectory = max(abs(a - b) for a, b in zip(p.losses[:steps], t.losses[:steps], strict=True))
    lines += [
        f"first-batch loss: prefenv {p.losses[0]:.6f}, TRL {t.losses[0]:.6f}, |diff| {first:.1e}",
        f"loss after step 1 (same update?): prefenv {p.losses[1]:.6f}, TRL {t.losses[1]:.6f}; "
        f"max |diff| over all {steps} steps {trajectory:.1e}; final prefenv {p.losses[-1]:.5f}, "
        f"TRL {t.losses[-1]:.5f}",
        "",
        "| method | pairs/s end-to-end | pairs/s train loop | pairs per CPU-s | runs (end-to-end pairs/s) |",
        "|---|---|---|---|---|",
    ]
    for name in ("prefenv", "trl"):
        r = best[name]
        all_runs = ", ".join(f"{x.pairs_seen / x.total_s:.0f}" for x in runs[name])
        lines.append(
            f"| {name} | {r.pairs_seen / r.total_s:.0f} | {r.pairs_seen / r.train_s:.0f} | "
            f"{r.pairs_seen / r.cpu_s:.0f} | {all_runs} |"
        )
    ratio = (p.pairs_seen / p.total_s) / (t.pairs_seen / t.total_s)
    ratio_train = (p.pairs_seen / p.train_s) / (t.pairs_seen / t.train_s)
    ratio_cpu = (p.pairs_seen / p.cpu_s) / (t.pairs_seen / t.cpu_s)
    ok &= first < TOL and trajectory < 1e-3
    lines += [
        "",
        f"ratio prefenv / TRL: end-to-end {ratio:.2f}x, train loop {ratio_train:.2f}x, "
        f"per CPU-second {ratio_cpu:.2f}x (goal >= 1.5x)",
        f"checks: {'all passed' if ok else 'FAILED'}",
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
