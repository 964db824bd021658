"""`prefenv train --reference`: PPO-KL leashed to a production recommender, end to end, tiny."""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from envs.recommendation.policies import ProductionPolicy
from prefenv.app.cli import main
from prefenv.app.runs import TrainingRun, TrainSpec, load_spec, save_spec

TINY = [
    "--env", "prefenv/RecSlate-v0", "--steps", "1600", "--initial-steps", "400",
    "--queries", "24", "--rounds", "3", "--n-envs", "2", "--n-steps", "100",
    "--segment-length", "25", "--reward-epochs", "3", "--ensemble", "2",
]  # fmt: skip


def _spec(**overrides) -> TrainSpec:
    fields = dict(
        env="prefenv/RecSlate-v0", steps=1600, initial_steps=400, queries=24, rounds=3,
        n_envs=2, n_steps=100, segment_length=25, reward_epochs=3, ensemble=2,
    )  # fmt: skip
    fields.update(overrides)
    return TrainSpec(**fields)


def test_train_with_a_production_reference_feeds_it_raw_observations(tmp_path, capsys, monkeypatch):
    seen: list[torch.Tensor] = []
    original = ProductionPolicy.log_prob

    def spy(self, obs, actions):
        seen.append(obs.clone())
        return original(self, obs, actions)

    monkeypatch.setattr(ProductionPolicy, "log_prob", spy)
    out = tmp_path / "run"
    argv = ["train", *TINY, "--reference", "greedy-click", "--kl-coef", "0.05", "--out", str(out)]
    assert main(argv) == 0
    assert "summary.md" in capsys.readouterr().out
    spec = load_spec(out)
    assert (spec.reference, spec.kl_coef, spec.ref_temperature) == ("greedy-click", 0.05, 1.0)
    # the reference was asked at every rollout step, on observations as the env emits them:
    # raw entries lie in [0, 1] (normalised ones would be centred, with negative entries)
    obs = torch.cat(seen)
    assert obs.shape[0] >= 1600 and obs.min() >= 0.0 and obs.max() <= 1.0
    with (out / "agent_logs" / "progress.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    kl = [float(r["kl_to_ref"]) for r in rows]
    assert all(math.isfinite(k) and k > 0 for k in kl)  # the leash is active every iteration
    summary = json.loads((out / "summary.json").read_text())
    assert summary["labels_used"] == 24


def test_the_reference_agent_runs_without_obs_normalisation_and_kl_matches_raw_scores(tmp_path):
    spec = _spec(reference="popularity", kl_coef=0.1, ref_temperature=0.5)
    run = TrainingRun(spec, tmp_path)
    agent = run.agent
    ref = agent.ref_policy
    assert isinstance(ref, ProductionPolicy)
    assert (ref.kind, ref.temperature) == ("popularity", 0.5)
    assert agent.config.norm_obs is False and agent.obs_normalizer is None
    assert not any(p.requires_grad for p in ref.parameters())
    # the log-prob the reference gives equals the popularity softmax on the raw observation
    obs, _ = run.recorder.reset(seed=0)
    obs_t = torch.as_tensor(obs)
    actions = torch.zeros((obs.shape[0], 3), dtype=torch.long)
    popularity = obs[:, ref.layout.user_dim + ref.layout.n_topics + 1 :: ref.layout.item_dim]
    logits = np.log(popularity / (1 - popularity)) / 0.5
    expected = 3 * (logits[:, 0] - np.log(np.exp(logits).sum(axis=1)))
    np.testing.assert_allclose(ref.log_prob(obs_t, actions).numpy(), expected, rtol=1e-4)
    run.store.close()


def test_without_a_reference_the_run_is_unchanged(tmp_path):
    run = TrainingRun(_spec(kl_coef=0.1), tmp_path)
    assert run.agent.config.norm_obs is True
    assert not isinstance(run.agent.ref_policy, ProductionPolicy)  # frozen initial policy
    run.store.close()


def test_resume_and_eval_keep_the_production_reference(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--reference", "popularity", "--kl-coef", "0.05",
                 "--out", str(out)]) == 0  # fmt: skip
    state = json.loads((out / "loop_state.json").read_text())
    state["loop"]["round"] = 1  # simulate a kill after round 0
    state["loop"]["labels_used"] = state["history"][0]["labels_used"]
    state["history"] = state["history"][:1]
    (out / "loop_state.json").write_text(json.dumps(state))
    run = TrainingRun(load_spec(out), out, resume=True)
    assert isinstance(run.agent.ref_policy, ProductionPolicy)
    assert run.agent.obs_normalizer is None
    run.store.close()
    assert main(["resume", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", "--out", str(out), "--episodes", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["episodes"] == 2


def test_old_run_json_without_reference_fields_still_loads(tmp_path):
    spec = _spec()
    save_spec(spec, tmp_path)
    payload = json.loads((tmp_path / "run.json").read_text())
    for key in ("reference", "ref_temperature"):
        del payload["spec"][key]
    (tmp_path / "run.json").write_text(json.dumps(payload))
    assert load_spec(tmp_path) == dataclasses.replace(spec, reference="", ref_temperature=1.0)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--reference", "popularity"], "needs --kl-coef > 0"),
        (["--reference", "populr", "--kl-coef", "0.1"], "unknown --reference 'populr'"),
        (["--reference", "popularity", "--kl-coef", "0.1", "--agent", "sb3-ppo"],
         "use --agent ppo-kl"),
        (["--reference", "popularity", "--kl-coef", "0.1", "--env", "prefenv/Reacher-v0"],
         "production recommender for the recommendation envs"),
    ],
)  # fmt: skip
def test_reference_misuse_is_a_clear_error(tmp_path, capsys, extra, message):
    assert main(["train", *TINY, *extra, "--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
