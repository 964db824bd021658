"""What a run folder reports: no-episode warnings in the summary and plot, round TensorBoard events."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import pytest

from prefenv.app.reports import (
    RoundEventWriter,
    learning_curve_figure,
    plot_learning_curve,
    write_summary,
)
from prefenv.app.spec import TrainSpec
from prefenv.loop import RoundMetrics
from prefenv.reward_training import RewardTrainMetrics

SPEC = TrainSpec(
    env="prefenv/Hopper-v0", n_envs=4, initial_steps=1000, steps=20_000, rounds=3, queries=40
)


def _round(
    index: int,
    timesteps: int,
    episodes: int,
    true_return: float = 10.0,
    correlation: float = 0.5,
    val_accuracy: float = 0.8,
) -> RoundMetrics:
    nan = math.nan
    return RoundMetrics(
        round=index,
        timesteps=timesteps,
        labels_used=10 * (index + 1),
        labels_this_round=10,
        skipped_this_round=index,
        reward_model=RewardTrainMetrics(
            train_loss=0.4,
            val_loss=0.5,
            train_accuracy=0.9,
            val_accuracy=val_accuracy,
            epochs=5,
            n_train=8,
            n_val=2,
            members=(),
            seconds=0.1,
        ),
        true_return=true_return if episodes else nan,
        learned_return=2.0 * true_return if episodes else nan,
        return_correlation=correlation if episodes else nan,
        episodes=episodes,
        hacking_alarm=index == 1,
        seconds=1.5,
    )


def _strict_json(path: Path) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_summary_without_any_episode_says_so_and_gives_the_fix(tmp_path: Path) -> None:
    history = [_round(0, 3000, 0), _round(1, 5000, 0)]
    summary = write_summary(tmp_path, SPEC, history, elapsed=12.0, on_policy=True)

    saved = _strict_json(tmp_path / "summary.json")
    assert saved == summary
    assert saved["episodes_finished"] == 0
    assert saved["final_true_return"] is None and saved["final_return_round"] is None
    # rounds 0-1 ran 5000 - 1000 initial steps on 4 sub-envs: 500 steps per sub-env and round
    warning = saved["warning"]
    assert warning.startswith("no episode finished in rounds 0 to 1")
    assert "about 500 env steps per round" in warning and "prefenv/Hopper-v0" in warning
    assert "--steps" in warning and "--n-envs" in warning

    markdown = (tmp_path / "summary.md").read_text()
    assert markdown.index(f"**Warning: {warning}**") < markdown.index("| field | value |")
    assert "| final_true_return | no episode finished |" in markdown
    assert "None" not in markdown and "nan" not in markdown.lower()


def test_summary_names_the_round_its_returns_come_from_when_the_last_rounds_had_none(
    tmp_path: Path,
) -> None:
    history = [
        _round(0, 3000, 4, true_return=7.0),
        _round(1, 5000, 2, true_return=9.0),
        _round(2, 7000, 0),
        _round(3, 9000, 0),
    ]
    summary = write_summary(tmp_path, SPEC, history, elapsed=1.0, on_policy=True)

    assert summary["episodes_finished"] == 6
    assert summary["final_true_return"] == 9.0 and summary["final_learned_return"] == 18.0
    assert summary["final_return_round"] == 1 and summary["best_true_return"] == 9.0
    assert summary["return_correlation"] is None  # NaN of the last round, not NaN in the JSON
    assert summary["warning"].startswith("no episode finished in rounds 2 to 3")
    assert "the final returns are those of round 1" in summary["warning"]
    assert "about 500 env steps per round" in summary["warning"]
    assert "Warning: no episode finished in rounds 2 to 3" in (tmp_path / "summary.md").read_text()


def test_summary_has_no_warning_when_the_last_round_finished_episodes(tmp_path: Path) -> None:
    history = [_round(0, 3000, 3), _round(1, 5000, 0), _round(2, 7000, 1, true_return=4.0)]
    summary = write_summary(tmp_path, SPEC, history, elapsed=1.0, on_policy=True)

    assert summary["warning"] is None and summary["episodes_finished"] == 4
    assert summary["final_true_return"] == 4.0 and summary["final_return_round"] == 2
    assert "Warning" not in (tmp_path / "summary.md").read_text()


def _texts(history: list[RoundMetrics]) -> tuple[list[str], list[list[float]]]:
    """The return panel's texts and the x data of its (true return) lines."""
    import matplotlib.pyplot as plt

    fig = learning_curve_figure(history, SPEC)
    try:
        ax = fig.axes[0]
        return [t.get_text() for t in ax.texts], [list(line.get_xdata()) for line in ax.lines]
    finally:
        plt.close(fig)


def test_plot_without_episodes_says_so_on_the_axes(tmp_path: Path) -> None:
    history = [_round(0, 3000, 0), _round(1, 5000, 0)]
    texts, _ = _texts(history)
    assert len(texts) == 1 and texts[0].startswith("no episode finished\nin 5,000 env steps")

    plot_learning_curve(history, tmp_path / "learning_curve.png", SPEC)
    assert (tmp_path / "learning_curve.png").read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in tmp_path.iterdir()] == ["learning_curve.png"]  # no temp file left


def test_plot_draws_the_rounds_with_episodes_and_names_the_others() -> None:
    history = [_round(0, 3000, 4), _round(1, 5000, 0), _round(2, 7000, 2), _round(3, 9000, 0)]
    texts, lines = _texts(history)
    assert texts == ["no episode finished in rounds 1, 3"]
    true_line = lines[0]
    assert true_line == [3000, 7000]

    texts, lines = _texts([_round(0, 3000, 4), _round(1, 5000, 2)])
    assert texts == [] and lines[0] == [3000, 5000]


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def test_round_events_are_readable_with_the_right_tags_and_steps(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    history = [_round(0, 3000, 4), _round(1, 5000, 0), _round(2, 7000, 1, val_accuracy=math.nan)]
    with RoundEventWriter(tmp_path / "rounds") as writer:
        for metrics in history:
            writer.write(metrics)

    scalars = _scalars(tmp_path / "rounds")
    names = (
        "true_return learned_return return_correlation labels_used labels_this_round "
        "skipped_this_round episodes hacking_alarm seconds rm_val_accuracy rm_val_loss "
        "rm_train_accuracy"
    ).split()
    assert set(scalars) == {f"rounds/{name}" for name in names}
    assert scalars["rounds/labels_used"] == [(3000, 10.0), (5000, 20.0), (7000, 30.0)]
    assert scalars["rounds/hacking_alarm"] == [(3000, 0.0), (5000, 1.0), (7000, 0.0)]
    assert scalars["rounds/episodes"] == [(3000, 4.0), (5000, 0.0), (7000, 1.0)]
    # NaN values are left out, not written as NaN
    assert scalars["rounds/true_return"] == [(3000, 10.0), (7000, 10.0)]
    assert [step for step, _ in scalars["rounds/return_correlation"]] == [3000, 7000]
    assert [step for step, _ in scalars["rounds/rm_val_accuracy"]] == [3000, 5000]
    assert all(math.isfinite(v) for values in scalars.values() for _, v in values)


def test_a_resumed_writer_adds_only_new_rounds_and_drops_an_unsaved_one(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    log_dir = tmp_path / "rounds"
    # the first process wrote round 2 but was killed before checkpointing it (last saved: round 1)
    with RoundEventWriter(log_dir) as writer:
        for metrics in [_round(0, 3000, 4), _round(1, 5000, 4), _round(2, 7000, 4)]:
            writer.write(metrics)
    # the resumed run redoes round 2 (here with another result) and goes on to round 3
    with RoundEventWriter(log_dir, resumed_at_step=5000) as writer:
        writer.write(_round(2, 7100, 4, true_return=20.0))
        writer.write(_round(3, 9000, 4, true_return=30.0))

    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 2
    assert _scalars(log_dir)["rounds/true_return"] == [
        (3000, 10.0),
        (5000, 10.0),
        (7100, 20.0),
        (9000, 30.0),
    ]


def test_round_events_without_tensorboard_warn_once_and_write_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises ImportError
    with caplog.at_level(logging.WARNING, logger="prefenv.app.reports"):
        writer = RoundEventWriter(tmp_path / "rounds")
        writer.write(_round(0, 3000, 4))
        writer.write(_round(1, 5000, 4))
        writer.close()

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "prefenv[logging]" in warnings[0].getMessage()
    assert not (tmp_path / "rounds").exists()
