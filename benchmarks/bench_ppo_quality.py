"""Quality and time-to-return: agents.ppo_kl vs Stable-Baselines3 PPO on HalfCheetah-v5.

Both agents train on the *true* reward with identical hyperparameters: 8 envs x 256 steps = 2048
per batch, minibatch 64, 10 epochs, [64, 64] tanh actor and critic, lr 3e-4, running observation
normalisation and return-based reward scaling (ours: ``norm_obs``/``norm_reward``; SB3: its
``VecNormalize``). For every seed the two run one after the other in this process.

Reported per seed and agent:

- final return: mean true return of 10 deterministic episodes after ``--steps`` env steps
  (benchmark 2, "quality on true reward");
- a learning curve (env steps, wall-clock and CPU seconds, mean return of the last 10 finished
  training episodes) saved as CSV under ``benchmarks/out/ppo_quality/``;
- time-to-return (benchmark 1b): the wall-clock and CPU seconds ppo_kl needs until its training
  curve first reaches the value SB3's training curve ends at (same statistic for both), divided by
  SB3's total time; for ppo_kl with identical settings and with its own best settings (``TUNED``).

Usage::

    python benchmarks/bench_ppo_quality.py --seeds 0 1 2 --steps 1000000
    python benchmarks/bench_ppo_quality.py --seeds 0 --steps 50000      # quick check
    python benchmarks/bench_ppo_quality.py --seeds 0 --arms tuned       # against an earlier SB3 run
    python benchmarks/bench_ppo_quality.py --seeds 0 1 2 --plot benchmarks/figures/ppo_quality.png
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from collections import deque
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from agents.ppo_kl import PPOKL, PPOKLConfig

ENV_ID = "HalfCheetah-v5"
NUM_ENVS = 8
N_STEPS = 256
BATCH_SIZE = 64
N_EPOCHS = 10
EVAL_EPISODES = 10
OUT = Path(__file__).parent / "out" / "ppo_quality"

Curve = list[tuple[int, float, float, float]]  # (timesteps, wall s, cpu s, recent mean return)


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


# ppo_kl's own best settings for 1b: 4x larger minibatches (a quarter of the optimiser steps) and
# a smaller initial action noise (log-std -2, as RL Zoo's tuned HalfCheetah PPO uses); everything
# else as above. Chosen from two 600k-step trials on seed 0 (log-std -1 and -2, both minibatch 256).
TUNED = {"batch_size": 256, "log_std_init": -2.0}


def run_ours(steps: int, seed: int, tuned: bool = False) -> tuple[Curve, float, float, float]:
    """(curve, final deterministic return, wall s, cpu s) of ppo_kl (identical or tuned settings)."""
    env = gym.make_vec(ENV_ID, num_envs=NUM_ENVS, vectorization_mode="sync")
    settings = {"batch_size": BATCH_SIZE, **(TUNED if tuned else {})}
    cfg = PPOKLConfig(
        n_steps=N_STEPS, n_epochs=N_EPOCHS, seed=seed, norm_obs=True, norm_reward=True,
        **settings,
    )  # fmt: skip
    agent = PPOKL(env, cfg)
    curve: Curve = []
    recent: deque[float] = deque(maxlen=10)
    wall0, cpu0 = _clock()

    def record(metrics) -> None:  # noqa: ANN001 - IterationMetrics
        if metrics.episodes > 0:
            recent.extend([metrics.episode_reward] * min(metrics.episodes, 10))
        if recent:
            wall, cpu = _clock()
            curve.append((metrics.timesteps, wall - wall0, cpu - cpu0, float(np.mean(recent))))

    agent.learn(steps, callback=record)
    wall, cpu = _clock()
    env.close()
    eval_env = gym.make_vec(ENV_ID, num_envs=1, vectorization_mode="sync")
    final = _evaluate(eval_env, agent.predict, seed)
    eval_env.close()
    return curve, final, wall - wall0, cpu - cpu0


def run_sb3(steps: int, seed: int, tuned: bool = False) -> tuple[Curve, float, float, float]:
    """(curve, final deterministic return, wall s, cpu s) of SB3 PPO + VecNormalize.

    ``tuned``: SB3 with ppo_kl's ``TUNED`` settings (minibatch 256, log-std -2), so that the
    "own best" comparison is not only a comparison of settings.
    """
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    venv = VecNormalize(make_vec_env(ENV_ID, n_envs=NUM_ENVS, seed=seed), gamma=0.99)
    extra = (
        {"batch_size": TUNED["batch_size"], "policy_kwargs": {"log_std_init": TUNED["log_std_init"]}}
        if tuned else {"batch_size": BATCH_SIZE}
    )  # fmt: skip
    model = PPO(
        "MlpPolicy", venv, n_steps=N_STEPS, n_epochs=N_EPOCHS, seed=seed, device="cpu", verbose=0,
        **extra,
    )  # fmt: skip
    curve: Curve = []
    wall0, cpu0 = _clock()

    class Record(BaseCallback):
        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            buffer = list(self.model.ep_info_buffer)[-10:]
            if buffer:
                wall, cpu = _clock()
                mean = float(np.mean([e["r"] for e in buffer]))
                curve.append((self.num_timesteps, wall - wall0, cpu - cpu0, mean))

    model.learn(steps, callback=Record())
    wall, cpu = _clock()
    eval_venv = VecNormalize(make_vec_env(ENV_ID, n_envs=1, seed=seed + 1000), training=False,
                             norm_reward=False)  # fmt: skip
    eval_venv.obs_rms = venv.obs_rms

    def predict(obs: np.ndarray) -> np.ndarray:
        return model.predict(eval_venv.normalize_obs(obs), deterministic=True)[0]

    final = _evaluate(gym.make_vec(ENV_ID, num_envs=1, vectorization_mode="sync"), predict, seed)
    venv.close()
    return curve, final, wall - wall0, cpu - cpu0


def _evaluate(venv: gym.vector.VectorEnv, predict, seed: int) -> float:  # noqa: ANN001
    """Mean true return of EVAL_EPISODES deterministic episodes on sub-env 0 (raw observations)."""
    returns, total = [], 0.0
    obs, _ = venv.reset(seed=seed + 12345)
    while len(returns) < EVAL_EPISODES:
        obs, reward, terminated, truncated, _ = venv.step(predict(obs))
        total += float(reward[0])
        if terminated[0] or truncated[0]:
            returns.append(total)
            total = 0.0
            obs, _ = venv.reset()
    return float(np.mean(returns))


def time_to_reach(curve: Curve, target: float) -> tuple[float, float, int] | None:
    """(wall s, cpu s, steps) at which ``curve`` first reaches ``target``; None if never."""
    for steps, wall, cpu, value in curve:
        if value >= target:
            return wall, cpu, steps
    return None


def _save_curve(name: str, curve: Curve) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / f"{name}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["timesteps", "wall_s", "cpu_s", "recent_return"])
        writer.writerows(curve)


def _load_curve(name: str) -> Curve:
    with open(OUT / f"{name}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [
        (int(r["timesteps"]), float(r["wall_s"]), float(r["cpu_s"]), float(r["recent_return"]))
        for r in rows
    ]


def _reach_text(curve: Curve, target: float, sb3_wall: float, sb3_cpu: float) -> str:
    reach = time_to_reach(curve, target)
    if reach is None:
        return "not reached"
    return (
        f"{reach[0]:.0f} ({reach[1]:.0f}) at {reach[2]:,} steps = "
        f"{reach[0] / sb3_wall:.2f}x ({reach[1] / sb3_cpu:.2f}x)"
    )


def plot(seeds: list[int], path: Path) -> Path:
    """Training curves (return vs CPU seconds) of every arm and seed saved under ``OUT``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(seeds), figsize=(4.5 * len(seeds), 3.6), squeeze=False)
    styles = {"sb3": ("SB3 PPO", "tab:gray"), "ppo_kl": ("ppo_kl, identical", "tab:blue"),
              "ppo_kl_tuned": ("ppo_kl, own best", "tab:orange"),
              "sb3_tuned": ("SB3 PPO, ppo_kl's best", "tab:green")}  # fmt: skip
    for ax, seed in zip(axes[0], seeds, strict=True):
        for name, (label, color) in styles.items():
            if (OUT / f"{name}_seed{seed}.csv").exists():
                curve = _load_curve(f"{name}_seed{seed}")
                ax.plot([c[2] for c in curve], [c[3] for c in curve], label=label, color=color)
        if (OUT / f"sb3_seed{seed}.csv").exists():
            ax.axhline(_load_curve(f"sb3_seed{seed}")[-1][3], color="tab:gray", ls=":", lw=1)
        ax.set_title(f"{ENV_ID}, seed {seed}, 1M steps each")
        ax.set_xlabel("CPU seconds")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("training return (last 10 episodes)")
    axes[0][0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for both")
    parser.add_argument(
        "--arms", nargs="+", choices=["identical", "tuned", "sb3", "sb3_tuned"],
        default=["identical", "tuned", "sb3"],
        help="which runs to make; without sb3, SB3's curve and times are read from an earlier "
        "run's files in benchmarks/out/ppo_quality/ (said in the output)",
    )  # fmt: skip
    parser.add_argument(
        "--plot", type=Path, default=None,
        help="only draw the saved curves of --seeds into this PNG (no training)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.plot is not None:
        print(plot(args.seeds, args.plot))
        return 0
    torch.set_num_threads(args.threads)
    print(
        f"# {ENV_ID}, {NUM_ENVS} envs x {N_STEPS}, minibatch {BATCH_SIZE}, {N_EPOCHS} epochs, "
        f"norm obs+reward, tuned = {TUNED}, {args.steps} steps, torch {torch.__version__}, "
        f"python {platform.python_version()}, cmd: {' '.join(sys.argv)}",
        flush=True,
    )
    for seed in args.seeds:
        row: dict = {"seed": seed, "arms": args.arms}
        curves: dict[str, Curve] = {}
        for arm in ("identical", "tuned"):
            if arm in args.arms:
                curve, final, wall, cpu = run_ours(args.steps, seed, tuned=arm == "tuned")
                name = "ppo_kl" if arm == "identical" else "ppo_kl_tuned"
                _save_curve(f"{name}_seed{seed}", curve)
                curves[arm] = curve
                row[arm] = {"return": final, "wall": wall, "cpu": cpu}
                print(f"seed {seed} {name}: return {final:.0f}, {wall:.0f} s ({cpu:.0f} CPU-s)",
                      flush=True)  # fmt: skip
        if "sb3" in args.arms:
            curve, final, wall, cpu = run_sb3(args.steps, seed)
            _save_curve(f"sb3_seed{seed}", curve)
            row["sb3"] = {"return": final, "wall": wall, "cpu": cpu, "this_run": True}
            print(
                f"seed {seed} sb3: return {final:.0f}, {wall:.0f} s ({cpu:.0f} CPU-s)", flush=True
            )
        else:
            curve = _load_curve(f"sb3_seed{seed}")
            earlier = json.loads((OUT / f"seed{seed}.json").read_text())
            sb3_old = earlier.get("sb3") or {
                "return": earlier["sb3_return"], "wall": earlier["sb3_wall"],
                "cpu": earlier["sb3_cpu"],
            }  # fmt: skip
            row["sb3"] = {**sb3_old, "this_run": False}
            print(f"seed {seed} sb3: read from an earlier run", flush=True)
        target = curve[-1][3] if curve else float("nan")
        row["target"] = target
        sb3 = row["sb3"]
        for arm, ours_curve in curves.items():
            row[arm]["reach"] = time_to_reach(ours_curve, target)
            print(
                f"| {seed} | {arm} | {row[arm]['return']:.0f} | {sb3['return']:.0f} | "
                f"{row[arm]['wall']:.0f} ({row[arm]['cpu']:.0f}) | "
                f"{sb3['wall']:.0f} ({sb3['cpu']:.0f}) | {target:.0f} | "
                f"{_reach_text(ours_curve, target, sb3['wall'], sb3['cpu'])} |",
                flush=True,
            )
        if "sb3_tuned" in args.arms:
            # SB3 with ppo_kl's own best settings: the time-to-return against *its* 1M return
            sb3t_curve, final, wall, cpu = run_sb3(args.steps, seed, tuned=True)
            _save_curve(f"sb3_tuned_seed{seed}", sb3t_curve)
            ours_curve = curves.get("tuned") or _load_curve(f"ppo_kl_tuned_seed{seed}")
            target_t = sb3t_curve[-1][3] if sb3t_curve else float("nan")
            row["sb3_tuned"] = {"return": final, "wall": wall, "cpu": cpu, "target": target_t,
                                "ppo_kl_tuned_reach": time_to_reach(ours_curve, target_t)}  # fmt: skip
            print(
                f"| {seed} | tuned vs SB3 tuned | {final:.0f} (SB3 tuned) | {wall:.0f} ({cpu:.0f}) | "
                f"{target_t:.0f} | {_reach_text(ours_curve, target_t, wall, cpu)} |",
                flush=True,
            )
        suffix = "" if "sb3" in args.arms else "_" + "_".join(args.arms)
        (OUT / f"seed{seed}{suffix}.json").write_text(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
