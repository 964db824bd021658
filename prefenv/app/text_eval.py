"""Evaluating a causal LM on a text task: the numbers every text stage reports.

:func:`evaluate_text_model` samples a completion per held-out prompt
(:func:`agents.text.sampling.sample_completions`) and reports the task's true score, a learned
scorer's score, the per-sequence KL to a reference (:func:`agents.text.sampling.completion_logps`),
lengths and the EOS rate. :func:`eval_markdown` and :func:`plot_eval` render the eval stage's
``summary.md`` and ``eval.png``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.text.sampling import SampledCompletions, completion_logps, sample_completions
from prefenv.app.text_config import TextPipelineConfig

__all__ = ["TextEvalResult", "eval_markdown", "evaluate_text_model", "plot_eval"]

Scorer = Callable[[str, str], float]
BatchScorer = Callable[[Sequence[str], Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class TextEvalResult:
    """What a model's samples score: true and learned score, KL to the reference, lengths.

    ``kl_to_ref`` is the mean over samples of ``logp_model - logp_ref`` summed over each
    completion (nats per sequence, the quantity the adaptive KL controller targets); nan when no
    reference is given. ``correlation`` is Pearson's r of learned vs true score (nan without a
    learned scorer or without spread).
    """

    n: int
    true_score: float
    true_score_sem: float
    learned_score: float
    correlation: float
    kl_to_ref: float
    mean_length: float
    eos_rate: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def evaluate_text_model(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    true_scorer: Scorer,
    max_new_tokens: int,
    seed: int,
    ref_model: Any | None = None,
    learned_scorer: BatchScorer | None = None,
) -> tuple[TextEvalResult, SampledCompletions, np.ndarray, np.ndarray]:
    """Sample a completion per prompt and score it.

    Returns:
        ``(result, samples, true_scores [N], learned_scores [N] or empty)``.
    """
    samples = sample_completions(model, tokenizer, prompts, max_new_tokens, seed)
    true = np.array([true_scorer(p, c) for p, c in zip(prompts, samples.texts, strict=True)])
    learned = (
        np.asarray(learned_scorer(list(prompts), samples.texts), dtype=np.float64)
        if learned_scorer is not None
        else np.array([])
    )
    kl = float("nan")
    if ref_model is not None:
        kl = float(np.mean(completion_logps(model, samples) - completion_logps(ref_model, samples)))
    result = TextEvalResult(
        n=len(prompts),
        true_score=float(true.mean()),
        true_score_sem=float(true.std(ddof=1) / np.sqrt(len(true))) if len(true) > 1 else 0.0,
        learned_score=float(learned.mean()) if learned.size else float("nan"),
        correlation=_pearson(learned, true) if learned.size else float("nan"),
        kl_to_ref=kl,
        mean_length=float(samples.lengths.mean()),
        eos_rate=float(samples.eos.mean()),
    )
    return result, samples, true, learned


def eval_markdown(
    config: TextPipelineConfig, results: dict[str, Any], stages: dict[str, Any]
) -> str:
    """``summary.md``: the eval table of every finished model and the reward model's accuracy."""
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


def plot_eval(results: dict[str, Any], path: Path, task: str) -> None:
    """``eval.png``: true score and KL to SFT per model (skipped without matplotlib)."""
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
