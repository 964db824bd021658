"""Can a reward network read RecSlate's true utility off what it is given? A regression probe.

The learned-reward agent on ``prefenv/RecSlate-v0`` stays at 0.85-0.9 of the true-utility agent
(RESULTS.md), with the reward model's episode-return correlation near 0.9. This probe asks
whether the inputs limit it: an MLP fit by regression straight to the true per-step utility (no
preferences), on random slates, scored on held-out sessions (every fifth): per-step R^2 and the
correlation of per-session sums. Two inputs: the flat ``(obs, one-hot action, next_obs)`` the
reward models get, and the same with the shown items' own features gathered by the action
(user part, the three shown candidates' features in slot order, the next user part).

    python benchmarks/probe_rec_reward_features.py --sessions 1500
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch

import envs  # noqa: F401  (registers the ids)

SLATE = 3


def collect(sessions: int, seed: int) -> dict[str, np.ndarray]:
    """Random slates (three distinct candidates per step) for ``sessions`` whole sessions."""
    env = gym.make("prefenv/RecSlate-v0")
    candidates = env.unwrapped.layout.n_candidates
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {"session": [], "obs": [], "act": [], "next_obs": [], "reward": []}
    for session in range(sessions):
        obs, _ = env.reset(seed=seed + session)
        done = False
        while not done:
            act = rng.choice(candidates, size=SLATE, replace=False)
            next_obs, _, terminated, truncated, info = env.step(act)
            step = (session, obs, act, next_obs, info["true_reward"])
            for key, value in zip(rows, step, strict=True):
                rows[key].append(value)
            obs, done = next_obs, terminated or truncated
    out = {k: np.asarray(v) for k, v in rows.items()}
    out["reward"] = out["reward"].astype(np.float32)
    return out | {"layout": env.unwrapped.layout}


def inputs(data: dict) -> dict[str, np.ndarray]:
    """The flat input the reward models get, and the one with the shown items gathered."""
    layout, obs, act, next_obs = data["layout"], data["obs"], data["act"], data["next_obs"]
    eye = np.eye(layout.n_candidates, dtype=np.float32)
    one_hot = np.concatenate([eye[act[:, k]] for k in range(SLATE)], axis=1)
    items = obs[:, layout.user_dim :].reshape(len(obs), layout.n_candidates, layout.item_dim)
    shown = np.concatenate([items[np.arange(len(obs)), act[:, k]] for k in range(SLATE)], axis=1)
    user = slice(0, layout.user_dim)
    return {
        "flat (obs, one-hot action, next_obs)": np.concatenate([obs, one_hot, next_obs], axis=1),
        "shown items gathered": np.concatenate([obs[:, user], shown, next_obs[:, user]], axis=1),
    }


def fit_and_score(
    x: np.ndarray, data: dict, width: int, depth: int, epochs: int
) -> tuple[float, float]:
    """Held-out (per-step R^2, per-session-sum correlation) of an MLP regressed on the utility."""
    reward, session = data["reward"], data["session"]
    test = session % 5 == 0
    layers: list[torch.nn.Module] = []
    size = x.shape[1]
    for _ in range(depth):
        layers += [torch.nn.Linear(size, width), torch.nn.LeakyReLU()]
        size = width
    net = torch.nn.Sequential(*layers, torch.nn.Linear(size, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    xs, ys = torch.tensor(x[~test], dtype=torch.float32), torch.tensor(reward[~test])
    for _ in range(epochs):
        order = torch.randperm(len(xs))
        for start in range(0, len(xs), 256):
            batch = order[start : start + 256]
            loss = ((net(xs[batch]).squeeze(1) - ys[batch]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = net(torch.tensor(x[test], dtype=torch.float32)).squeeze(1).numpy()
    truth = reward[test]
    r2 = 1.0 - float(((pred - truth) ** 2).mean() / truth.var())
    ids = session[test]
    sums = [(pred[ids == s].sum(), truth[ids == s].sum()) for s in np.unique(ids)]
    return r2, float(np.corrcoef(np.array(sums).T)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    data = collect(args.sessions, args.seed)
    reward = data["reward"]
    print(f"{len(reward)} steps in {args.sessions} sessions; utility per step mean "
          f"{reward.mean():.2f}, std {reward.std():.2f}\n")  # fmt: skip
    print("| input | network | per-step R^2 | per-session correlation | s |")
    print("|---|---|---:|---:|---:|")
    for name, x in inputs(data).items():
        for width, depth in ((64, 2), (256, 3)):
            start = time.perf_counter()
            r2, corr = fit_and_score(x.astype(np.float32), data, width, depth, args.epochs)
            print(f"| {name} | {width} x {depth} | {r2:.3f} | {corr:.3f} | "
                  f"{time.perf_counter() - start:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
