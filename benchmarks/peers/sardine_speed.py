"""SARDINE's recommender env speed (and whether it passes Gymnasium's check_env), for comparison.

Runs in its own environment (`bash benchmarks/peers/setup_sardine.sh`). One env, random slates,
steps/s over ``--steps`` steps (resets included); then Gymnasium's ``check_env`` on the same id,
with and without its render check.

    benchmarks/peers/.venv-sardine/bin/python benchmarks/peers/sardine_speed.py
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import sardine  # noqa: F401  (registers the sardine/* ids)
from gymnasium.utils.env_checker import check_env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="sardine/SlateTopK-Bored-v0")
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = gym.make(args.env)
    env.action_space.seed(0)
    best = 0.0
    for _ in range(args.repeats):
        env.reset(seed=0)
        start = time.perf_counter()
        for _ in range(args.steps):
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                env.reset()
        best = max(best, args.steps / (time.perf_counter() - start))
    verdicts = []
    for skip_render in (False, True):
        try:
            check_env(gym.make(args.env).unwrapped, skip_render_check=skip_render)
            verdicts.append("passes")
        except Exception as error:  # report, do not crash: this is the finding
            verdicts.append(f"fails ({type(error).__name__}: {str(error)[:80]})")
    print(
        f"| {args.env} (sardine-rec 1.0.8, one env) | {best:,.0f} steps/s | check_env: "
        f"{verdicts[0]}; with skip_render_check: {verdicts[1]} |"
    )


if __name__ == "__main__":
    main()
