"""Bring your own local Hugging Face model: the text pipeline on any causal LM directory.

prefenv never downloads. Point it at a directory written by `model.save_pretrained(dir)` and
`tokenizer.save_pretrained(dir)` (any architecture `AutoModelForCausalLM` loads: GPT-2, Llama,
Qwen, ...). Without `--model-dir`, this script first writes a small Llama-architecture model with
the project's tokenizer to `<out>/my_model`, standing in for yours.

Then the whole pipeline runs on it: SFT -> reward model -> PPO-KL and DPO -> evaluation, exactly
what `prefenv text pipeline --base-model DIR --out OUT` does.

    python examples/text_own_model.py --model-dir path/to/your/model [--task keyword]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from envs.text import default_tokenizer
from prefenv.app.text_runs import TextPipelineConfig, run_pipeline


def write_stand_in_model(directory: Path) -> Path:
    """A randomly initialised small Llama + the default tokenizer, saved the Hugging Face way."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = default_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None, help="your local model directory")
    parser.add_argument("--task", default="sentiment", help="sentiment, keyword or concise")
    parser.add_argument("--sft-steps", type=int, default=300, help="SFT steps (batch 16)")
    parser.add_argument("--queries", type=int, default=600, help="comparisons to label")
    parser.add_argument("--ppo-steps", type=int, default=12_000, help="PPO-KL tokens")
    parser.add_argument("--n-envs", type=int, default=16, help="parallel text envs")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="completion length cap")
    parser.add_argument("--eval-prompts", type=int, default=128, help="held-out prompts")
    parser.add_argument("--out", type=Path, default=Path("runs/example_own_model"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    model_dir = args.model_dir or write_stand_in_model(args.out / "my_model")
    config = TextPipelineConfig(
        task=args.task, base_model=str(model_dir), sft_steps=args.sft_steps, queries=args.queries,
        ppo_steps=args.ppo_steps, n_envs=args.n_envs, max_new_tokens=args.max_new_tokens,
        eval_prompts=args.eval_prompts, dpo_epochs=1,
    )  # fmt: skip
    summary = run_pipeline(config, args.out / "run")
    print(f"base model: {model_dir}")
    for name, result in summary["eval"].items():
        print(f"{name:>4}: true {args.task} score {result['true_score']:+.3f}, "
              f"KL to SFT {result['kl_to_ref']:.2f} nats, length {result['mean_length']:.1f}")  # fmt: skip
    print(f"summary: {args.out / 'run' / 'summary.md'}")


if __name__ == "__main__":
    main()
