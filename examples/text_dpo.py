"""DPO on text from a preference dataset, then iterative (online) DPO with a simulated annotator.

1. an SFT model (the default tiny GPT-2 fine-tuned on demonstrations) samples two completions per
   prompt; a simulated annotator labels them by the true score (VADER sentiment);
2. the comparisons are exported to the Hugging Face `prompt`/`chosen`/`rejected` JSONL
   convention and read back, as a dataset from elsewhere would be;
3. offline DPO (sigmoid loss, beta 0.1, reference = the SFT model);
4. iterative DPO: the DPO model samples new pairs, the annotator labels them, DPO again.

Prints the held-out true sentiment and the KL to the SFT model after each step.

    python examples/text_dpo.py [--queries 600] [--rounds 2]
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from agents.text.dpo import DPOConfig, pairs_from_comparisons, train_dpo
from agents.text.iterative_dpo import iterative_dpo
from agents.text.optim import DPO_OPTIM, SFT_OPTIM
from agents.text.sampling import sample_completions
from agents.text.sft import TextSFTConfig, train_text_sft
from envs.text import VaderSentiment, build_default_lm, load_lm
from envs.text.corpus import generate_demonstrations, generate_prompts
from envs.text.feedback import make_text_teacher
from prefenv.app.text_eval import evaluate_text_model
from prefenv.jsonl import export_jsonl, import_jsonl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-steps", type=int, default=300, help="pretraining steps")
    parser.add_argument("--sft-steps", type=int, default=150, help="SFT steps (batch 16)")
    parser.add_argument("--queries", type=int, default=600, help="offline comparisons")
    parser.add_argument("--epochs", type=int, default=3, help="DPO epochs per round")
    parser.add_argument("--rounds", type=int, default=2, help="iterative DPO rounds")
    parser.add_argument("--round-prompts", type=int, default=200, help="prompts per online round")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="completion length cap")
    parser.add_argument("--out", type=Path, default=Path("runs/example_text_dpo"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    build_default_lm(args.out / "base", train_steps=args.base_steps)
    model, tokenizer = load_lm(args.out / "base")
    train_text_sft(model, tokenizer, generate_demonstrations(1000),
                   TextSFTConfig(replace(SFT_OPTIM, max_steps=args.sft_steps)))  # fmt: skip
    sft = copy.deepcopy(model).eval()
    held_out = generate_prompts(128, seed=999)

    def report(name: str) -> None:
        result, *_ = evaluate_text_model(model, tokenizer, held_out, VaderSentiment(),
                                         args.max_new_tokens, seed=5, ref_model=sft)  # fmt: skip
        print(f"{name:>14}: true sentiment {result.true_score:+.3f} ± {result.true_score_sem:.3f}, "
              f"KL to SFT {result.kl_to_ref:.2f} nats")  # fmt: skip

    report("SFT")
    teacher = make_text_teacher("oracle", VaderSentiment(), np.random.default_rng(0))
    prompts = [generate_prompts(400)[i % 400] for i in range(args.queries)]
    first = sample_completions(model, tokenizer, prompts, args.max_new_tokens, seed=1)
    second = sample_completions(model, tokenizer, prompts, args.max_new_tokens, seed=2)
    written = export_jsonl(teacher.label_texts(prompts, first.texts, second.texts),
                           args.out / "comparisons.jsonl")  # fmt: skip
    pairs = pairs_from_comparisons(import_jsonl(args.out / "comparisons.jsonl"))
    print(f"{written} comparisons -> {args.out / 'comparisons.jsonl'} -> {len(pairs)} DPO pairs")

    config = DPOConfig(beta=0.1, optim=replace(DPO_OPTIM, epochs=args.epochs))
    metrics = train_dpo(model, sft, tokenizer, pairs, config)
    print(f"offline DPO: loss {metrics.first_loss:.3f} -> {metrics.final_loss:.3f}, "
          f"{metrics.pairs_per_second:.0f} pairs/s")  # fmt: skip
    report("offline DPO")

    def label(prompt: str, a: str, b: str) -> float | None:
        return teacher.label_texts([prompt], [a], [b])[0].label

    online = iterative_dpo(model, sft, tokenizer, generate_prompts(args.round_prompts, seed=7),
                           label, rounds=args.rounds, config=config,
                           max_new_tokens=args.max_new_tokens, initial_pairs=pairs)  # fmt: skip
    print(f"iterative DPO: pairs added per round {online.pairs_per_round}")
    report("iterative DPO")
    model.save_pretrained(args.out / "dpo")
    tokenizer.save_pretrained(args.out / "dpo")
    print(f"model: {args.out / 'dpo'}")


if __name__ == "__main__":
    main()
