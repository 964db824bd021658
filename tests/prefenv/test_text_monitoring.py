"""Text sampling/scoring (prefenv.app.text_eval) and PPO-on-text monitoring (prefenv.app.text_monitor)."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents.text import sampling
from agents.text.sampling import completion_logps, sample_completions
from envs.text import TextTask, VaderSentiment, default_tokenizer, tiny_gpt2_config
from envs.text.corpus import generate_demonstrations, generate_prompts
from prefenv.app.text_eval import evaluate_text_model
from prefenv.app.text_monitor import EpisodeLog, TextMonitor, plot_monitor


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


def _model(tok, seed: int = 0):
    from transformers import GPT2LMHeadModel

    config = tiny_gpt2_config(
        len(tok), n_layer=1, n_embd=32, n_head=2, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config).eval()


@pytest.mark.parametrize("grouped", [False, True])
def test_completion_logps_equal_the_sampling_distribution(tok, monkeypatch, grouped) -> None:
    """Distinct prompts, and groups of 3 repeats of each (prefilled once, keys and values shared)."""
    model = _model(tok)
    prompts = generate_prompts(2) * 3 if grouped else generate_prompts(6)
    drawn: list[torch.Tensor] = []  # each step's distribution, as the cached sampler saw it

    def spy(probs: torch.Tensor) -> torch.Tensor:
        drawn.append(probs.log())
        return real(probs)

    real = sampling.sample_probs
    monkeypatch.setattr(sampling, "sample_probs", spy)
    samples = sample_completions(model, tok, prompts, max_new_tokens=8, seed=3)
    steps = torch.stack(drawn, 1)  # [N, T, V]
    picked = steps.gather(-1, samples.completion_ids[:, : steps.shape[1], None])[..., 0]
    expected = (picked * samples.completion_mask[:, : steps.shape[1]]).sum(1).numpy()
    # One uncached forward scores exactly the distributions the samples were drawn from...
    np.testing.assert_allclose(completion_logps(model, samples), expected, rtol=0, atol=1e-4)
    # ...which are Hugging Face generate's (its first step's scores: the prompts alone).
    out = model.generate(
        input_ids=samples.prompt_ids, attention_mask=samples.prompt_mask, do_sample=True,
        top_k=0, top_p=1.0, max_new_tokens=1, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, output_scores=True, return_dict_in_generate=True,
    )  # fmt: skip
    torch.testing.assert_close(steps[:, 0], out.scores[0].log_softmax(-1), atol=1e-5, rtol=0)
    # Same seed, same samples; EOS accounting is consistent with the mask.
    again = sample_completions(model, tok, prompts, max_new_tokens=8, seed=3)
    assert again.texts == samples.texts
    assert np.array_equal(samples.lengths <= 8, np.ones(6, bool))


def test_kl_to_itself_is_zero_and_to_another_model_positive(tok) -> None:
    model, other = _model(tok, 0), _model(tok, 1)
    with torch.no_grad():  # a peaked reference: random tiny inits are both near-uniform
        other.transformer.wte.weight.mul_(30.0)
    prompts = generate_prompts(16)
    same, *_ = evaluate_text_model(model, tok, prompts, VaderSentiment(), 6, 0, ref_model=model)
    assert same.kl_to_ref == pytest.approx(0.0, abs=1e-5)
    diff, _, true, learned = evaluate_text_model(
        model, tok, prompts, VaderSentiment(), 6, 0, ref_model=other,
        learned_scorer=lambda p, c: np.array([float(len(x)) for x in c]),
    )  # fmt: skip
    assert diff.kl_to_ref > 1.0
    assert learned.shape == true.shape == (16,)
    assert diff.true_score == pytest.approx(true.mean())


def test_episode_log_and_monitor_write_rows_samples_and_a_plot(tok, tmp_path) -> None:
    episodes: list[dict] = []
    prompts = [p for p, _ in generate_demonstrations(20)][:5]
    env = EpisodeLog(
        gym.vector.SyncVectorEnv(
            [lambda: TextTask("sentiment", tok, prompts, max_new_tokens=3)] * 2
        ),
        episodes,
    )
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(8):
        env.step(rng.integers(5, 50, size=2))
    assert len(episodes) >= 4 and all(e["tokens"] == 3 and not e["eos"] for e in episodes)
    # Without a learned-reward wrapper the reward the agent saw is the true score.
    assert all(e["prompt"] in prompts and e["reward"] == e["true_score"] for e in episodes)
    assert all(len(e["completion"].split()) >= 1 for e in episodes)
    monitor = TextMonitor(episodes, tmp_path, samples_per_iteration=2, alarm_window=3)
    # Learned score up, true score down for three iterations: the alarm fires on the third.
    for i, (learned, true) in enumerate([(0.1, 0.5), (0.2, 0.4), (0.3, 0.3)]):
        episodes[:] = [
            {"prompt": "p", "completion": "c", "reward": learned + d, "true_score": true - d,
             "tokens": 4, "eos": d > 0} for d in (0.0, 0.01, 0.02)
        ]  # fmt: skip
        metrics = SimpleNamespace(
            iteration=i + 1, timesteps=100 * (i + 1), kl_to_ref_episode=0.5, kl_coef=0.1,
            entropy=2.0, policy_loss=0.0, value_loss=1.0,
        )  # fmt: skip
        monitor(metrics)
    assert episodes == []
    assert [r.hacking_alarm for r in monitor.rows] == [False, False, True]
    assert monitor.rows[0].eos_rate == pytest.approx(2 / 3)
    assert monitor.rows[0].correlation == pytest.approx(-1.0)
    with open(tmp_path / "monitor.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
    lines = (tmp_path / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[0])["iteration"] == 1
    assert plot_monitor(monitor.rows, tmp_path / "ppo.png").stat().st_size > 0
