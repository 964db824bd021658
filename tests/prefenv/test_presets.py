"""Per-task tuned presets: the table is valid, a run gets and records them, --hparams overrides."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from prefenv.agent import agent_factory
from prefenv.app import presets as presets_module
from prefenv.app.api import start
from prefenv.app.cli import main
from prefenv.app.presets import Preset, parse_hparams, preset_for, presets, read_hparams_file
from prefenv.app.spec import REWARD_MODEL_PRESET, REWARD_OUTPUTS, TrainSpec, load_spec
from prefenv.sampling import QUERY_METHODS

SMALL = {"steps": 16_384, "initial_steps": 2_048, "rounds": 2, "queries": 20, "n_envs": 2,
         "n_steps": 512}  # fmt: skip


def test_every_table_entry_names_its_source_and_is_accepted_by_its_agent():
    table = presets()
    assert table["prefenv/HalfCheetah-v0"]["ppo-kl"] == {"batch_size": 256, "log_std_init": -2.0}
    for env_id, agents in table.items():
        for agent, entry in agents.items():
            assert len(entry.source) > 40, f"{entry.name} says too little about its source"
            if agent == REWARD_MODEL_PRESET:  # the reward model's settings, for every agent
                keys = {
                    "output",
                    "query_method",
                    "query_window",
                    "steps_per_round",
                    "label_smoothing",
                }
                assert set(entry) <= keys
                resolved = TrainSpec(env=env_id).with_preset()
                if "output" in entry:
                    assert entry["output"] in REWARD_OUTPUTS
                    assert resolved.reward_output == entry["output"]
                if "query_method" in entry:
                    assert entry["query_method"] in QUERY_METHODS
                    assert resolved.query_method == entry["query_method"]
                    assert resolved.loop_config().query_method == entry["query_method"]
                if "query_window" in entry:
                    assert resolved.query_window == entry["query_window"] >= 1
                    assert resolved.loop_config().query_window == entry["query_window"]
                if "label_smoothing" in entry:
                    assert resolved.label_smoothing == entry["label_smoothing"]
                    smoothing = resolved.loop_config().reward_train.label_smoothing
                    assert smoothing == entry["label_smoothing"]
                if "steps_per_round" in entry:  # 20 rounds after the initial steps
                    steps = 2_048 + 20 * entry["steps_per_round"]
                    long = TrainSpec(env=env_id, steps=steps, initial_steps=2_048).with_preset()
                    assert long.rounds == 20 and long.loop_config().n_rounds == 19
                continue
            spec = TrainSpec(env=env_id, agent=agent).with_preset()
            assert spec.preset == f"{env_id}:{agent}" and spec.hparams == dict(entry)
            agent_factory(agent).check(spec)  # every key a real setting, every value valid


def test_with_preset_resolves_once_and_user_values_win():
    spec = TrainSpec(hparams={"batch_size": 128}).with_preset()
    assert spec.hparams == {"batch_size": 128, "log_std_init": -2.0}
    assert spec.with_preset() is spec  # resolved: a resumed run keeps what it recorded
    assert TrainSpec(preset="none").with_preset().hparams == {}
    reacher = TrainSpec(env="prefenv/Reacher-v0").with_preset()  # no entry: agent defaults
    assert reacher.preset == "none" and reacher.hparams == {}
    assert reacher.reward_output == "tanh"  # no reward-model entry: B-Pref's tanh
    assert reacher.query_method == "uniform"  # and B-Pref's uniform queries
    assert reacher.loop_config().query_method == "uniform"
    assert reacher.query_window == 0 and reacher.loop_config().query_window is None
    assert reacher.rounds == 7  # no steps_per_round: 7 rounds, whatever --steps
    chosen = TrainSpec(query_method="entropy", query_window=0).with_preset()  # the user's choice
    assert chosen.query_method == "entropy" and chosen.loop_config().query_method == "entropy"
    assert chosen.query_window == 0 and chosen.loop_config().query_window is None
    assert preset_for("envs:prefenv/HalfCheetah-v0", "ppo-kl") is not None  # module:Id form
    with pytest.raises(ValueError, match="--preset takes auto or none"):
        TrainSpec(preset="tuned")


def test_a_run_gets_the_preset_records_it_and_keeps_it_when_the_table_changes(tmp_path,
                                                                              monkeypatch):  # fmt: skip
    run = start(TrainSpec(**SMALL), tmp_path / "run")
    assert run.agent.config.batch_size == 256 and run.agent.config.log_std_init == -2.0
    log_std = run.agent.policy.log_std.detach()
    assert torch.allclose(log_std, torch.full_like(log_std, -2.0))
    run.store.close()
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["spec"]
    assert recorded["reward_output"] == "linear"  # HalfCheetah's reward-model entry, resolved
    assert recorded["query_method"] == "disagreement" and recorded["query_window"] == 10
    assert run.loop.config.query_method == "disagreement" and run.loop.config.query_window == 10
    assert {m.output_activation for m in run.reward_model.members} == {None}
    assert recorded["preset"] == "prefenv/HalfCheetah-v0:ppo-kl"
    assert recorded["hparams"] == {"batch_size": 256, "log_std_init": -2.0}
    changed = {"prefenv/HalfCheetah-v0": {"ppo-kl": Preset("x", {"batch_size": 32}, "test")}}
    monkeypatch.setattr(presets_module, "presets", lambda: changed)
    assert load_spec(tmp_path / "run").hparams == {"batch_size": 256, "log_std_init": -2.0}


def test_sb3_ppo_gets_its_preset_through_the_sb3_constructor(tmp_path):
    run = start(TrainSpec(agent="sb3-ppo", **SMALL), tmp_path / "run")
    model = run.agent.model
    assert model.batch_size == 256
    assert np.allclose(model.policy.log_std.detach().numpy(), -2.0)
    run.store.close()


def test_hparams_flags_and_file_override_the_preset(tmp_path, capsys):
    assert parse_hparams(["batch_size=128", "hidden_sizes=[32,32]", "activation=relu"]) == {
        "batch_size": 128, "hidden_sizes": [32, 32], "activation": "relu",
    }  # fmt: skip
    toml = tmp_path / "h.toml"
    toml.write_text("learning_rate = 1e-4\nbatch_size = 64\n")
    (tmp_path / "h.json").write_text('{"n_epochs": 5}')
    assert read_hparams_file(tmp_path / "h.json") == {"n_epochs": 5}
    argv = ["train", *[f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()],
            "--steps", "6144", "--rounds", "1",
            "--hparams-file", str(toml), "--hparams", "batch_size=128", "hidden_sizes=[32,32]",
            "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 0
    assert "batch_size=128" in capsys.readouterr().out  # the banner shows the settings used
    spec = load_spec(tmp_path / "run")
    assert spec.hparams == {"batch_size": 128, "log_std_init": -2.0, "learning_rate": 1e-4,
                            "hidden_sizes": [32, 32]}  # fmt: skip
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (
        summary["preset"] == "prefenv/HalfCheetah-v0:ppo-kl" and summary["hparams"] == spec.hparams
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--hparams", "batch_sise=3"], "ppo-kl has no such setting; did you mean batch_size?"),
        (["--hparams", "n_steps=64"], "set it with --n-steps"),
        (["--hparams", "batch_size=0"], "batch_size must be a finite number > 0"),
        (["--hparams", "foo"], "--hparams takes KEY=VALUE items"),
        (["--agent", "sb3-ppo", "--hparams", "learning_rat=0.1"], "did you mean learning_rate?"),
        (["--hparams-file", "missing.toml"], "--hparams-file missing.toml not found"),
    ],
)
def test_bad_hparams_are_one_line_and_leave_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert main(["train", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists()


def test_a_run_json_from_before_the_preset_fields_resumes_with_what_it_ran(tmp_path):
    start(TrainSpec(**SMALL), tmp_path / "run").store.close()
    path = tmp_path / "run" / "run.json"
    payload = json.loads(path.read_text())
    assert payload["spec"]["query_window"] == 10  # today's HalfCheetah run records its window
    assert payload["spec"]["label_smoothing"] == 0.0  # resolved, like the window
    for key in ("preset", "reward_output", "query_window", "label_smoothing", "hparams"):
        payload["spec"].pop(key)  # as a run.json written before these fields existed
    path.write_text(json.dumps(payload))
    old = load_spec(tmp_path / "run")
    assert (old.preset, old.reward_output, old.query_window) == ("none", "tanh", 0)
    assert old.label_smoothing == 0.0 and old.loop_config().reward_train.label_smoothing == 0.0
    assert old.with_preset() == old  # resolving changes nothing: the run resumes as it started
    assert old.loop_config().query_window is None
