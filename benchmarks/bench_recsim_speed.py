"""Recommendation simulator speed: vectorised numpy users vs a naive per-user Python loop.

All rows simulate the same user model (``envs.recommendation.simulator``) over one 10,000-item
catalog, with random slates of 3 out of 10 candidates, in one process:

- ``vector env``: :class:`RecommendationVectorEnv` with ``--users`` users (one numpy call per step,
  including action checks, autoresets and infos);
- ``simulator core``: :class:`UserBatchSimulator` ``step`` + ``observe`` alone, same batch;
- ``SyncVectorEnv``: Gymnasium's ``SyncVectorEnv`` of single-user :class:`RecommendationEnv`;
- ``naive loop``: the user model written the straightforward way, a Python loop over users
  with per-user numpy operations (written here, for comparison only).
- ``sardine``: ``sardine/SlateTopK-Bored-v0`` (one env), only if ``sardine-rec`` is installed.

Each figure is the best of ``--repeats`` interleaved measurements (a shared machine is noisy).
Goal (issue 5): >= 100,000 user-steps/s for the vector env and >= 20x the naive loop.

Usage:
    python benchmarks/bench_recsim_speed.py [--users 1024] [--items 10000] [--steps 200]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np

from envs.recommendation import (
    Catalog,
    RecommendationEnv,
    RecommendationVectorEnv,
    SimConfig,
    UserBatchSimulator,
)

SLATE = 3


class NaiveUser:
    """One user of the same model, stepped with per-user numpy operations (no batching)."""

    def __init__(self, cfg: SimConfig, catalog: Catalog, rng: np.random.Generator) -> None:
        self.cfg, self.cat, self.rng = cfg, catalog, rng
        self.reset()

    def reset(self) -> None:
        cfg = self.cfg
        self.interest = self.rng.uniform(-1.0, 1.0, size=cfg.n_topics)
        self.profile = np.zeros(cfg.n_topics)
        self.budget, self.t = cfg.time_budget, 0
        self.last_clicked, self.last_watch = 0.0, 0.0
        self.candidates = self.rng.choice(cfg.n_items, size=cfg.n_candidates, replace=False)

    def observe(self) -> np.ndarray:
        cfg, cat = self.cfg, self.cat
        user = np.concatenate(
            [
                (1 - cfg.profile_decay) * self.profile,
                [self.t / cfg.horizon, self.last_clicked, self.last_watch / cfg.length_range[1]],
            ]
        )
        items = [
            np.concatenate(
                [cat.topics[j], [cat.length[j] / cfg.length_range[1], cat.popularity[j]]]
            )
            for j in self.candidates
        ]
        return np.concatenate([user, *items]).astype(np.float32)

    def step(self, slate: np.ndarray) -> tuple[float, bool]:
        cfg, cat = self.cfg, self.cat
        effective = self.interest - cfg.boredom_weight * self.profile
        items = [self.candidates[k] for k in slate]
        weights = []
        for pos, j in enumerate(items):
            logit = cfg.affinity_scale * float(effective @ cat.topics[j]) + cat.appeal[j]
            weights.append(math.exp(logit) * cfg.position_bias**pos)
        weights.append(math.exp(cfg.no_click_logit))
        probs = np.array(weights) / sum(weights)
        choice = self.rng.choice(len(probs), p=probs)
        self.profile = cfg.profile_decay * self.profile
        watch = 0.0
        if choice < len(items):
            j = items[choice]
            affinity = float(effective @ cat.topics[j])
            watch = cat.length[j] / (1 + math.exp(-(cfg.affinity_scale * affinity + cat.appeal[j])))
            self.interest = self.interest + cfg.drift_rate * (cat.topics[j] - self.interest)
            self.profile = self.profile + cat.topics[j]
            self.budget -= watch * (1 - cfg.refund_rate * cat.quality[j])
        else:
            self.budget -= cfg.no_click_cost
        self.t += 1
        self.last_clicked, self.last_watch = float(choice < len(items)), watch
        done = self.budget <= 0 or self.t >= cfg.horizon
        if done:
            self.reset()
        else:
            self.candidates = self.rng.choice(cfg.n_items, size=cfg.n_candidates, replace=False)
        return watch, done


def _best_rate(step_fn: Callable[[], None], users: int, steps: int) -> float:
    for _ in range(min(10, steps)):  # warm-up
        step_fn()
    start = time.perf_counter()
    for _ in range(steps):
        step_fn()
    return users * steps / (time.perf_counter() - start)


def _slates(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    return np.argsort(rng.random((n, c)), axis=1)[:, :SLATE]


def make_runners(args: argparse.Namespace) -> dict[str, tuple[Callable[[], None], int, int]]:
    """name -> (one step of the batch, users per step, timed steps)."""
    cfg = SimConfig(n_items=args.items)
    catalog = Catalog.generate(cfg, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    c, n = cfg.n_candidates, args.users
    actions = [_slates(rng, n, c) for _ in range(16)]
    runners: dict[str, tuple[Callable[[], None], int, int]] = {}

    venv = RecommendationVectorEnv(n, n_items=args.items, catalog=catalog)
    venv.reset(seed=0)
    it = iter(range(1 << 62))
    runners["vector env (RecommendationVectorEnv)"] = (
        lambda: venv.step(actions[next(it) % 16]),
        n,
        args.steps,
    )

    sim = UserBatchSimulator(n, cfg, catalog)
    sim.rngs = [np.random.default_rng(u) for u in range(n)]
    sim.reset_users(np.arange(n))

    def core_step() -> None:
        out = sim.step(actions[int(sim.t[0]) % 16])
        done = np.flatnonzero(out.terminated | out.truncated)
        if done.size:
            sim.reset_users(done)
        sim.observe()

    runners["simulator core (UserBatchSimulator)"] = (core_step, n, args.steps)

    n_sync = min(n, 64)
    sync = gym.vector.SyncVectorEnv(
        [lambda: RecommendationEnv(n_items=args.items, catalog=catalog) for _ in range(n_sync)]
    )
    sync.reset(seed=0)
    runners[f"SyncVectorEnv of {n_sync} RecommendationEnv"] = (
        lambda: sync.step(actions[next(it) % 16][:n_sync]),
        n_sync,
        max(10, args.steps // 10),
    )

    naive = [NaiveUser(cfg, catalog, np.random.default_rng(u)) for u in range(n)]

    def naive_step() -> None:
        slates = actions[next(it) % 16]
        for u, user in enumerate(naive):
            user.step(slates[u])
            user.observe()

    runners["naive per-user Python loop"] = (naive_step, n, max(3, args.steps // 40))
    sardine = _sardine_runner(rng)
    if sardine is not None:
        runners["sardine/SlateTopK-Bored-v0 (1 env, 1,000 items)"] = (sardine, 1, args.steps * 5)
    return runners


def _sardine_runner(rng: np.random.Generator) -> Callable[[], None] | None:
    try:
        import sardine  # noqa: F401
    except ImportError:
        return None
    env = gym.make("sardine/SlateTopK-Bored-v0")
    env.reset(seed=0)

    def step() -> None:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=1024, help="batched users")
    parser.add_argument("--items", type=int, default=10_000, help="catalog size")
    parser.add_argument("--steps", type=int, default=200, help="timed vector steps")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (best kept)")
    args = parser.parse_args()
    runners = make_runners(args)
    best = dict.fromkeys(runners, 0.0)
    for _ in range(args.repeats):
        for name, (fn, users, steps) in runners.items():
            best[name] = max(best[name], _best_rate(fn, users, steps))
    naive = best["naive per-user Python loop"]
    print(f"\n{args.items:,}-item catalog, {args.users:,} batched users, slate {SLATE} of 10\n")
    print("| simulator | user-steps/s | x naive loop |")
    print("|---|---:|---:|")
    for name, rate in best.items():
        print(f"| {name} | {rate:,.0f} | {rate / naive:.1f}x |")
    if "sardine" not in " ".join(best):
        print("\n(sardine-rec is not installed here: its row is skipped)")


if __name__ == "__main__":
    main()
