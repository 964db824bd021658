"""PEBBLE's unsupervised pre-training: a state-entropy intrinsic reward for the initial policy.

Before the first query, PEBBLE (Lee et al., ICML 2021, github.com/rll-research/BPref) trains the
agent to visit diverse states, so the first segments a teacher compares are informative. The
reward is a particle-based (k-nearest-neighbour) estimate of the state entropy (APT, Liu &
Abbeel 2021)::

    r_int(s) = log(c + ||s - s_kNN||)

where ``s_kNN`` is the k-th nearest neighbour of ``s`` among recently visited states. As in
BPref's code (``agent/sac.py: update_critic_state_ent``), the reward is divided by a running
estimate of its standard deviation (``TorchRunningMeanStd``; the mean is not subtracted).

:class:`StateEntropyEstimator` holds the FIFO buffer of the last ``capacity`` states and the
running std; :class:`StateEntropyReward` is the vector-env wrapper that, while ``enabled``,
replaces the reward the agent sees with the estimator's; disabled, it passes every step through
untouched. Nothing here draws random numbers: given the same states, the rewards are the same.

Cost: one step scores ``B`` states (``B = num_envs``) against at most ``capacity + B`` states of
``F`` features: ``O(B * capacity * F)`` time, and ``O(B * chunk_size)`` extra memory (the buffer
is compared in chunks of ``chunk_size`` rows); the buffer itself is ``capacity * F`` float32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper

from prefenv.episodes import step_true_rewards
from prefenv.spaces import FlatSpec

__all__ = ["StateEntropyEstimator", "StateEntropyReward", "kth_neighbour_distances"]

StateFeatures = Callable[[np.ndarray], np.ndarray]
"""``[N, obs_dim]`` flat observations -> ``[N, F]`` state features (e.g. positions only)."""

PEBBLE_K = 5
"""k of the k-NN estimate: BPref ``config/train_PEBBLE.yaml`` ``topK: 5``."""
APT_C = 1.0
"""c in ``log(c + distance)``: APT (Liu & Abbeel 2021, eq. 6) uses c = 1 to keep the log finite."""
DEFAULT_CAPACITY = 10_000
"""States kept: BPref keeps every state of the unsupervised phase (PPO: ``unsuper_step + 100``,
32,100 by default; SAC: the replay buffer); 10,000 bounds the per-step cost on a CPU."""


def kth_neighbour_distances(
    queries: torch.Tensor, points: torch.Tensor, k: int, chunk_size: int = 4096
) -> torch.Tensor:
    """Euclidean distance from each query to its ``k``-th nearest point, chunk by chunk.

    Args:
        queries: ``[B, F]`` float tensor.
        points: ``[M, F]`` float tensor, ``M >= 1``; a query that is also a point finds itself at
            distance 0 (that is how BPref counts: ``kthvalue(k + 1)`` over a set holding the query).
        k: which neighbour (1 = nearest); ``min(k, M)`` is used when fewer points exist.
        chunk_size: points compared at once: memory ``O(B * (chunk_size + k))``.

    Returns:
        ``[B]`` distances.
    """
    if points.shape[0] == 0:
        raise ValueError("kth_neighbour_distances needs at least one point to measure against")
    empty = torch.zeros((queries.shape[0], 0), dtype=queries.dtype)
    return _fold_nearest(empty, queries, points, k, chunk_size)[:, -1]


def _fold_nearest(
    best: torch.Tensor, queries: torch.Tensor, points: torch.Tensor, k: int, chunk_size: int
) -> torch.Tensor:
    """``[B, <=k]`` ascending smallest distances among ``best`` ``[B, j]`` and ``points``."""
    for start in range(0, points.shape[0], chunk_size):
        # the exact difference form: the matrix-product shortcut is off by ~1e-3 at distance 0
        chunk = torch.cdist(
            queries, points[start : start + chunk_size], compute_mode="donot_use_mm_for_euclid_dist"
        )
        merged = torch.cat([best, chunk], dim=1)
        best = torch.topk(merged, min(k, merged.shape[1]), dim=1, largest=False).values
    return best


class StateEntropyEstimator:
    """k-NN state-entropy rewards over a FIFO buffer of recent states, scaled by a running std.

    Args:
        k: the neighbour whose distance is used (PEBBLE: 5).
        capacity: M, the most states kept (oldest dropped first).
        c: the constant in ``log(c + distance)`` (APT: 1).
        log_scale: ``log(c + distance)`` as in the PEBBLE/APT papers; False uses the distance
            itself, as BPref's ``compute_state_entropy`` returns it.
        normalize: divide by the running std of the (unscaled) rewards (BPref's default
            ``normalize_state_entropy=True``).
        chunk_size: buffer rows compared at once (bounds the temporary distance matrix).

    State: the buffer (``[size, F]`` float32, ``size <= capacity``) and the running
    mean/var/count of the unscaled rewards.
    """

    def __init__(
        self,
        k: int = PEBBLE_K,
        capacity: int = DEFAULT_CAPACITY,
        c: float = APT_C,
        log_scale: bool = True,
        normalize: bool = True,
        chunk_size: int = 4096,
    ) -> None:
        if k < 1 or capacity < 1 or chunk_size < 1:
            raise ValueError(
                f"k, capacity and chunk_size must be >= 1, got k={k}, capacity={capacity}, "
                f"chunk_size={chunk_size}"
            )
        if log_scale and c <= 0:
            raise ValueError(f"c must be > 0 so log(c + distance) is finite, got c={c}")
        self.k, self.capacity, self.c = int(k), int(capacity), float(c)
        self.log_scale, self.normalize, self.chunk_size = log_scale, normalize, int(chunk_size)
        self._buffer: torch.Tensor | None = None  # [capacity, F], allocated at the first add
        self._next = 0  # ring position of the next write
        self.size = 0
        # running moments as BPref's TorchRunningMeanStd(epsilon=1e-4): var 1, count 1e-4 prior
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4

    @property
    def states(self) -> np.ndarray:
        """``[size, F]`` the buffered states (in ring order, not insertion order)."""
        if self._buffer is None:
            return np.zeros((0, 0), dtype=np.float32)
        return self._buffer[: self.size].numpy().copy()

    @property
    def scale(self) -> float:
        """What unscaled rewards are divided by: the running std (1 with ``normalize`` off)."""
        return float(np.sqrt(self.var)) if self.normalize else 1.0

    def add(self, states: np.ndarray) -> None:
        """Append ``[N, F]`` states, dropping the oldest beyond ``capacity``."""
        rows = torch.as_tensor(np.asarray(states, dtype=np.float32))
        if rows.ndim != 2:
            raise ValueError(f"states must be [N, F], got shape {tuple(rows.shape)}")
        if self._buffer is None:
            self._buffer = torch.zeros((self.capacity, rows.shape[1]), dtype=torch.float32)
        elif rows.shape[1] != self._buffer.shape[1]:
            raise ValueError(
                f"states have {rows.shape[1]} features but the buffer holds "
                f"{self._buffer.shape[1]}: did the features function change?"
            )
        rows = rows[-self.capacity :]
        index = (self._next + torch.arange(rows.shape[0])) % self.capacity
        self._buffer[index] = rows
        self._next = (self._next + rows.shape[0]) % self.capacity
        self.size = min(self.size + rows.shape[0], self.capacity)

    def distances(self, states: np.ndarray) -> np.ndarray:
        """``[N]`` k-NN distances of ``[N, F]`` states among the buffer and each other.

        Each state is measured against the buffer plus the whole batch (itself included, at
        distance 0), taking the ``(k + 1)``-th smallest: BPref's count, which adds the batch to
        the buffer first. Read-only: nothing is added.
        """
        queries = torch.as_tensor(np.asarray(states, dtype=np.float32))
        best = torch.zeros((queries.shape[0], 0), dtype=torch.float32)
        if self._buffer is not None:  # the buffer and the batch folded in turn: no copy of either
            best = _fold_nearest(
                best, queries, self._buffer[: self.size], self.k + 1, self.chunk_size
            )
        best = _fold_nearest(best, queries, queries, self.k + 1, self.chunk_size)
        return best[:, -1].numpy()

    def rewards(self, states: np.ndarray, counted: np.ndarray | None = None) -> np.ndarray:
        """Score ``[N, F]`` states, update the running std, then add them to the buffer.

        Args:
            states: the states reached.
            counted: ``[N]`` bool, the rows whose rewards update the running std (default all).

        Returns:
            ``[N]`` float32 rewards ``log(c + d_k) / std`` (or ``d_k / std``), the std including
            this batch (BPref updates the statistics before dividing).
        """
        distances = self.distances(states).astype(np.float64)
        raw = np.log(self.c + distances) if self.log_scale else distances
        values = raw if counted is None else raw[np.asarray(counted, dtype=bool)]
        if values.size:
            self._update_moments(values)
        self.add(states)
        return (raw / self.scale).astype(np.float32)

    def _update_moments(self, values: np.ndarray) -> None:
        """Chan et al.'s parallel mean/variance update (population variance of the batch).

        BPref's ``update_mean_var_count_from_moments`` has ``mean + delta + n / total`` where
        ``mean + delta * n / total`` is meant; the correct form is used here.
        """
        batch_mean, batch_var, n = float(values.mean()), float(values.var()), values.size
        delta, total = batch_mean - self.mean, self.count + n
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean, self.var, self.count = self.mean + delta * n / total, m2 / total, total

    def clear(self) -> None:
        """Forget every state and the running statistics."""
        self._buffer, self._next, self.size = None, 0, 0
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4


class StateEntropyReward(VectorWrapper):
    """While ``enabled``, the agent's reward is the k-NN state-entropy estimate (PEBBLE).

    Args:
        env: a Gymnasium vector env with flattenable single spaces (usually the
            :class:`~prefenv.recording.TrajectoryRecorder` of a preference run).
        estimator: the k-NN estimator (default: PEBBLE's k = 5, c = 1, running-std scaling,
            10,000 states).
        features: ``[N, obs_dim] -> [N, F]`` state features of flat observations (see
            :class:`~prefenv.spaces.FlatSpec`); ``None`` uses the whole flat observation.
        enabled: start enabled; set :attr:`enabled` to switch (after the initial phase: False).

    Reward: enabled, ``r_int(s')`` of the state ``s'`` each step reaches (under SAME_STEP the
    finished sub-env's ``final_obs``); a NEXT_STEP reset step keeps the reward below (0).
    ``infos["intrinsic_reward"]`` (``[N]``, mask ``_intrinsic_reward``) holds the values given.
    ``infos["true_reward"]`` is left as the env below reported it; sub-envs that reported none
    get the env's own reward there (so the hidden reward is never lost). Every observation
    returned (reset observations included) joins the buffer. Disabled: each call returns
    exactly what the env below returned, and the buffer is not touched.
    """

    def __init__(
        self,
        env: VectorEnv,
        estimator: StateEntropyEstimator | None = None,
        features: StateFeatures | None = None,
        enabled: bool = True,
    ) -> None:
        super().__init__(env)
        self.flat = FlatSpec(env.single_observation_space, env.single_action_space)
        self.estimator = estimator if estimator is not None else StateEntropyEstimator()
        self.features = features
        self.enabled = enabled
        self.autoreset_mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        self._resetting = np.zeros(self.num_envs, dtype=bool)

    def state_features(self, obs: Any, n: int) -> np.ndarray:
        """``[n, F]`` float32 state features of a batch of ``n`` observations."""
        flat = self.flat.obs(obs, n)
        if self.features is None:
            return flat
        out = np.asarray(self.features(flat), dtype=np.float32)
        if out.ndim != 2 or out.shape[0] != n:
            raise ValueError(
                f"features must map [{n}, {flat.shape[1]}] observations to [{n}, F], got shape "
                f"{out.shape}: return one feature row per observation"
            )
        return out

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        mask = None if options is None else options.get("reset_mask")  # read first: reset pops it
        obs, info = self.env.reset(seed=seed, options=options)
        if mask is None:
            self._resetting[:] = False
        else:
            self._resetting[np.asarray(mask, dtype=bool)] = False
        if self.enabled:
            states = self.state_features(obs, self.num_envs)
            self.estimator.add(states if mask is None else states[np.asarray(mask, dtype=bool)])
        return obs, info

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        result = self.env.step(actions)
        obs, rewards, terminated, truncated, infos = result
        done = np.logical_or(terminated, truncated)
        resetting = self._resetting  # NEXT_STEP: this step only reset these sub-envs
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            self._resetting = done.copy()
        if not self.enabled:
            return result
        n = self.num_envs
        states = self.state_features(obs, n)
        same_step = self.autoreset_mode == AutoresetMode.SAME_STEP
        reset_states = states[done] if same_step else None  # the reset obs of finished envs
        if same_step and done.any():
            states = states.copy()  # it may share memory with obs, which goes to the agent
            for i in np.flatnonzero(done):
                states[i] = self.state_features(infos["final_obs"][i], 1)[0]
        valid = ~resetting
        intrinsic = self.estimator.rewards(states, counted=valid)
        if reset_states is not None and len(reset_states):
            self.estimator.add(reset_states)
        out = np.where(valid, intrinsic, np.asarray(rewards, dtype=np.float32)).astype(np.float32)
        infos = dict(infos)
        reported_true, reported = step_true_rewards(infos, n)
        if not reported.all():  # keep the hidden reward: the env's own where none was reported
            infos["true_reward"] = np.where(reported, reported_true, np.asarray(rewards, float))
            infos["_true_reward"] = np.ones(n, dtype=bool)
        infos["intrinsic_reward"] = np.where(valid, intrinsic, 0.0).astype(np.float32)
        infos["_intrinsic_reward"] = np.ones(n, dtype=bool)
        return obs, out, terminated, truncated, infos
