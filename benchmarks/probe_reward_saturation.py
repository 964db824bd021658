"""Does a reward model fit to a falling task's labels tell running from standing? An offline probe.

On Walker2d and Hopper (tasks that end when the agent falls) the agents of small label budgets
stand, and their learned reward sits near 1 per step, the tanh output's ceiling (RESULTS.md).
This probe replays one finished run's labels through the loop's refits (the same comparisons in
the same order, one refit per round at the run's label counts, each continuing from the last),
under several training settings, and scores every model on held-out 50-step windows of another
run's query pool, one whose agent runs:

- ``rho``: Spearman correlation of learned and true window returns, over windows that do not end
  in a fall (so length cannot carry it: this is running against standing);
- ``acc``: share of random pairs of such windows (true returns at least 10% apart) ordered rightly;
- ``top-bottom``: learned per-step reward of the best true tenth minus the worst true tenth;
- ``sat``: share of steps whose learned reward is within 0.05 of the output's bound.

    python benchmarks/probe_reward_saturation.py \\
        --labels benchmarks/out/sweeps/walker_rounds/cells/queries-50_seed-22 \\
        --pool benchmarks/out/sweeps/walker_unsupervised/cells/queries-250_seed-24

``--score RUN ...`` scores the reward models finished runs saved (``RUN/reward_model``) on the
same windows instead, with no replay: what the agent of each run was trained on at the end.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from prefenv.app.spec import REWARD_OUTPUTS
from prefenv.reward_models import RewardEnsemble, load_reward_model
from prefenv.reward_networks import MLPRewardModel
from prefenv.reward_training import RewardTrainConfig, train_reward_model
from prefenv.store import ComparisonStore

SETTINGS: dict[str, dict] = {
    "plain (the run's)": {},
    "label smoothing 0.05": {"label_smoothing": 0.05},
    "label smoothing 0.1": {"label_smoothing": 0.1},
    "label smoothing 0.2": {"label_smoothing": 0.2},
    "noise-aware 0.1": {"label_noise": 0.1},
    "weight decay 0.1": {"weight_decay": 0.1},
}


def windows(pool: Path, length: int, count: int, seed: int) -> dict[str, np.ndarray]:
    """``count`` random ``length``-step windows that do not end in a fall, from a query pool."""
    z = np.load(pool / "query_pool.npz")
    lengths, terminated = z["lengths"], z["terminated"]
    obs_start = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
    step_start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    rng = np.random.default_rng(seed)
    # a window ends at least one step before a falling episode's last step
    room = lengths - length - terminated.astype(int)
    episodes = np.flatnonzero(room >= 0)
    picks = rng.choice(episodes, size=count, p=(room[episodes] + 1) / (room[episodes] + 1).sum())
    starts = np.array([rng.integers(0, room[e] + 1) for e in picks])
    obs_idx = obs_start[picks, None] + starts[:, None] + np.arange(length + 1)
    step_idx = step_start[picks, None] + starts[:, None] + np.arange(length)
    return {"obs": z["obs"][obs_idx], "acts": z["acts"][step_idx],
            "true": z["true_rewards"][step_idx]}  # fmt: skip


def score(model: RewardEnsemble, data: dict[str, np.ndarray], rng: np.random.Generator) -> dict:
    n, length = data["true"].shape
    obs, nxt = (
        data["obs"][:, :-1].reshape(n * length, -1),
        data["obs"][:, 1:].reshape(n * length, -1),
    )
    acts = data["acts"].reshape(n * length, -1)
    with torch.no_grad():
        r = model(*(torch.as_tensor(x) for x in (obs, acts, nxt))).numpy().reshape(n, length)
    learned, true = r.sum(1), data["true"].sum(1)
    i, j = rng.integers(0, n, size=(2, 20_000))
    apart = np.abs(true[i] - true[j]) > 0.1 * np.maximum(np.abs(true[i]), np.abs(true[j]))
    right = np.sign(learned[i] - learned[j]) == np.sign(true[i] - true[j])
    order = np.argsort(true)
    tenth = max(1, n // 10)
    return {
        "rho": float(spearmanr(learned, true).statistic),
        "acc": float(right[apart].mean()),
        "top-bottom": float(r[order[-tenth:]].mean() - r[order[:tenth]].mean()),
        "sat": float((np.abs(r) > 0.95).mean()),
        "mean": float(r.mean()),
    }


def load_run(run: Path) -> tuple[dict, list, list[int]]:
    """A finished run's spec, its labelled comparisons in append order, and labels per round."""
    spec = json.loads((run / "run.json").read_text())["spec"]
    with ComparisonStore(run / "comparisons.sqlite") as store:
        comparisons = store.load()
    with open(run / "rounds.csv") as rounds:
        counts = [int(r["labels_used"]) for r in csv.DictReader(rounds)]
    return spec, comparisons, counts


def replay(run: tuple[dict, list, list[int]], config: RewardTrainConfig, obs_dim: int,
           act_dim: int) -> RewardEnsemble:  # fmt: skip
    """The run's reward model (its architecture and output) refit as the loop refit it."""
    spec, comparisons, counts = run
    torch.manual_seed(spec["seed"])
    hidden = (spec["reward_width"],) * spec["reward_depth"]
    output = REWARD_OUTPUTS[spec["reward_output"]]
    model = RewardEnsemble([
        MLPRewardModel(obs_dim, act_dim, hidden_sizes=hidden, output_activation=output)
        for _ in range(spec["ensemble"])
    ])  # fmt: skip
    done = 0
    for k, count in enumerate(counts):
        if count == done:
            continue
        done = count
        train_reward_model(model, comparisons[:count], dataclasses.replace(config, seed=k))
    return model


RUN_FILES = ("run.json", "comparisons.sqlite", "rounds.csv")
"""What ``--labels`` reads of a finished ``prefenv train`` run."""


def missing_inputs(pool: Path, labels: Path | None, score: list[Path]) -> str | None:
    """One line naming the first missing input and what to pass instead, or None."""
    hint = "a finished `prefenv train` run folder (a sweep cell: <sweep>/cells/<cell>)"
    if not (pool / "query_pool.npz").is_file():
        return f"--pool {pool}: no query_pool.npz there; pass {hint} whose agent runs"
    for name in RUN_FILES if labels is not None else ():
        if not (labels / name).is_file():
            return f"--labels {labels}: no {name} there; pass {hint}"
    for run in score:
        if not (run / "reward_model" / "config.json").is_file():
            return f"--score {run}: no reward_model/ there; pass {hint} that saved its model"
    return None


def _row(name: str, s: dict) -> None:
    print(f"| {name} | {s['rho']:.2f} | {s['acc']:.2f} | {s['top-bottom']:.3f} | {s['sat']:.2f} | "
          f"{s['mean']:.3f} |", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, help="a finished run's folder to replay")
    parser.add_argument("--score", type=Path, nargs="+", help="finished runs whose models to score")
    parser.add_argument("--pool", type=Path, required=True, help="a run folder with query_pool.npz")
    parser.add_argument("--windows", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if (args.labels is None) == (args.score is None):
        parser.error("give --labels RUN (replay its labels) or --score RUN ... (saved models)")
    problem = missing_inputs(args.pool, args.labels, args.score or [])
    if problem:
        parser.error(problem)
    data = windows(args.pool, 50, args.windows, args.seed)
    if args.score:
        print(f"pool: {args.pool}  windows: {args.windows}")
        print("| run | rho | acc | top-bottom | sat | mean per step |")
        print("|---|---:|---:|---:|---:|---:|")
        for run in args.score:
            s = score(
                load_reward_model(run / "reward_model"), data, np.random.default_rng(args.seed)
            )
            _row(f"{run.parent.parent.name}/{run.name}", s)
        return
    run = load_run(args.labels)
    epochs = run[0]["reward_epochs"]
    print(f"labels: {args.labels}  pool: {args.pool}  windows: {args.windows}")
    print("| setting | rho | acc | top-bottom | sat | mean per step |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, fields in SETTINGS.items():
        config = RewardTrainConfig(max_epochs=epochs, **fields)
        model = replay(run, config, data["obs"].shape[-1], data["acts"].shape[-1])
        s = score(model, data, np.random.default_rng(args.seed))
        _row(name, s)


if __name__ == "__main__":
    main()
