"""Rollout workers for PPO-KL: copies of the env stack and the policy that sample in parallel.

A :class:`RolloutWorker` holds its own vector env stack (base env -> learned-reward wrapper with
its own reward-model snapshot -> :class:`~prefenv.recording.TrajectoryRecorder`) and copies of
the policy and the observation normaliser. :class:`~agents.ppo_kl.ray_rollouts.RayRollouts` puts
``W`` of them on Ray actors (or runs them in this process), gives worker ``w`` the learner's sub-envs
``[w * N / W, (w + 1) * N / W)``, and for each PPO iteration:

1. broadcasts the policy weights, the normaliser's statistics and the learner's torch RNG state,
   plus the reward model's snapshot when the preference loop refit it since the last broadcast
   (the learner-side wrapper then holds a new predictor object);
2. lets every worker step its sub-envs ``n_steps`` times and gathers what the learner's
   :class:`~agents.ppo_kl.buffer.RolloutBuffer` needs, merged along the env axis;
3. hands the finished episodes and their returns to the learner-side recorder that the
   preference loop reads, in the order a local recorder would have recorded them.

:class:`~agents.ppo_kl.PPOKL` then does what it does after a local rollout: the KL to the
reference (batched over the whole rollout), return scaling, GAE and the update.

What is synchronous, and why: a rollout is a barrier. All workers sample, then one update runs,
and the new weights go out before the next sample. PPO is on-policy: its clipped ratio and GAE
assume the samples come from the policy that is being updated, whose log-probs the workers
recorded. Workers that kept sampling during the update would return off-policy data, which needs
importance corrections such as IMPALA's V-trace: another algorithm. What runs concurrently: the
workers' envs (and reward-model inference) within a rollout. Reward refits happen on the learner
between rollouts, as in a local run.

Equivalence with a local run (CPU policy): global sub-env ``j`` is reset with ``seed + j``, as a
Gymnasium vector env seeds it, and the learner replays the normaliser's updates over all ``N``
sub-envs' raw observations and orders the episodes by (step, sub-env). Two modes:

- **default** (``exact=False``): each worker runs the policy and the reward snapshot on its own
  ``N / W`` rows, so its cost does not grow with ``W``, and draws its action noise from its own
  stream (seeded from one draw of the learner's stream plus its first sub-env's index). One
  worker reproduces the local run bit for bit; several take another sample path of the same
  distribution.
- ``exact=True``: every worker runs the policy and the reward snapshot on all ``N`` rows, its own
  in their global place and copies of its first row elsewhere, and keeps its rows: so it draws
  the whole batch's action noise from the learner's torch stream (handed back advanced as a local
  rollout leaves it), and BLAS rounds each row as in the learner's batch. Several workers then
  reproduce the local run bit for bit when observation normalisation is off (with it on, a
  worker normalises during a rollout with statistics updated from its own sub-envs only, merged
  exactly afterwards). The price: each worker's forward passes cover ``N`` rows, not ``N / W``;
  it is for checking equivalence, not for scale.

Either way a worker's parameters sit in one flat buffer, as the learner's optimiser lays them
out, so the kernels see the same memory alignment; a shaping schedule's ``k_t`` counts ``N``
steps per vector step, as the learner's wrapper does (see docs/pages/rollout-workers.md).

(Over 400 lines: the worker, the records it sends and the merge that reassembles them share one
contract, the learner's buffer layout; the Ray side already lives in ``ray_rollouts``.)
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from torch import Tensor, nn

from agents.ppo_kl.buffer import ObsArray, obs_to_tensor
from agents.ppo_kl.normalize import ObsNormalizer
from agents.ppo_kl.optim import ClippedAdam
from prefenv.episodes import EpisodeStats, step_true_rewards
from prefenv.predictors import Prediction, RewardPredictor
from prefenv.recording import TrajectoryRecorder
from prefenv.records import Trajectory
from prefenv.wrappers import VectorPreferenceReward

__all__ = [
    "EnvFactory",
    "FinishedEpisode",
    "Rollout",
    "RolloutWorker",
    "SampleRequest",
    "WorkerEnv",
    "concat_obs",
    "env_actions",
    "flatten_steps",
    "merge_rollouts",
    "obs_at",
]


class WorkerEnv(NamedTuple):
    """One rollout worker's env stack, as its factory builds it.

    Attributes:
        env: the top of the stack, the vector env the worker steps (NEXT_STEP autoreset).
        recorder: the stack's trajectory recorder; its finished episodes go to the learner.
            None: the worker records none.
        reward_env: the stack's learned-reward wrapper, which receives the learner's reward
            snapshots. None: the env's own reward is used.
    """

    env: VectorEnv
    recorder: TrajectoryRecorder | None = None
    reward_env: VectorPreferenceReward | None = None


EnvFactory = Callable[[int], WorkerEnv]
"""``num_envs -> WorkerEnv``. It reaches the Ray actors pickled: a module-level function or a
``functools.partial`` of one."""


class FinishedEpisode(NamedTuple):
    """An episode that ended during a rollout, keyed as a local recorder would order it."""

    step: int
    """The rollout step that ended it."""
    trajectory: Trajectory
    stats: EpisodeStats
    """Its returns; ``env_index`` is the global sub-env it ran in."""


class SampleRequest(NamedTuple):
    """What the learner sends every worker before a rollout."""

    n_steps: int
    policy_state: dict[str, Tensor]
    """The policy's ``state_dict`` (CPU copies)."""
    obs_normalizer: dict[str, Any] | None
    """The observation normaliser's ``state_dict``; None when the agent has none."""
    torch_rng: Tensor
    """The learner's torch RNG state: the action noise is drawn from it."""
    predictor: RewardPredictor | None
    """A new reward snapshot for the workers' wrappers; None keeps the one they hold."""
    shaping_steps: int | None
    """The learner-side wrapper's ``shaping_steps`` (``k_t`` of a shaping schedule)."""


class Rollout(NamedTuple):
    """``T = n_steps`` vector steps of ``n`` sub-envs: one worker's, or all ``N`` merged.

    Attributes:
        obs: ``[T, n, ...]`` observations as the policy saw them (normalised when the agent
            normalises; dict of arrays for Dict spaces).
        raw_obs: ``[T, n, ...]`` the env's observations, for the learner's normaliser; None
            without one.
        actions: ``[T, n, *action_shape]`` sampled actions (unclipped).
        log_probs: ``[T, n]`` float32 behaviour log-probs.
        values: ``[T, n]`` float32 values.
        rewards: ``[T, n]`` float32 rewards the agent saw (the learned reward).
        terminated: ``[T, n]`` bool.
        truncated: ``[T, n]`` bool.
        true_rewards: ``[T, n]`` float64 ``info["true_reward"]`` (0 where unreported).
        true_reported: ``[T, n]`` bool, where it was reported.
        last_obs: ``[n, ...]`` the env's observations after the last step.
        torch_rng: the torch RNG state after the rollout.
        episodes: the episodes that ended, ordered by (step, global sub-env); None when the
            workers record none.
        recorded_steps: the steps their recorders counted (reset steps excluded).
    """

    obs: ObsArray
    raw_obs: ObsArray | None
    actions: np.ndarray
    log_probs: np.ndarray
    values: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    true_rewards: np.ndarray
    true_reported: np.ndarray
    last_obs: ObsArray
    torch_rng: Tensor
    episodes: list[FinishedEpisode] | None
    recorded_steps: int


def env_actions(actions: np.ndarray, space: spaces.Space) -> np.ndarray:
    """Sampled actions as the env takes them: Box actions clipped to the bounds."""
    if isinstance(space, spaces.Box):
        return np.clip(actions, space.low, space.high).astype(space.dtype, copy=False)
    return actions


def obs_at(obs: ObsArray, index: Any) -> ObsArray:
    """``obs[index]`` of an array or of every entry of a dict of arrays."""
    if isinstance(obs, dict):
        return {k: v[index] for k, v in obs.items()}
    return obs[index]


def flatten_steps(obs: ObsArray) -> ObsArray:
    """``[T, N, ...]`` observations (or dict entries) as ``[T * N, ...]``, step-major."""
    if isinstance(obs, dict):
        return {k: flatten_steps(v) for k, v in obs.items()}  # type: ignore[misc]
    return obs.reshape(-1, *obs.shape[2:])


def _stack(rows: Sequence[ObsArray]) -> ObsArray:
    if isinstance(rows[0], dict):
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}  # type: ignore[index]
    return np.stack(rows)  # type: ignore[arg-type]


def concat_obs(parts: Sequence[ObsArray], axis: int) -> ObsArray:
    """Arrays (or dicts of arrays) joined along ``axis``."""
    if isinstance(parts[0], dict):
        return {k: np.concatenate([p[k] for p in parts], axis) for k in parts[0]}  # type: ignore[index]
    return np.concatenate(parts, axis)  # type: ignore[arg-type]


def _pad_rows(obs: ObsArray, rows: slice, total: int) -> ObsArray:
    """``[total, ...]`` with ``obs`` ``[n, ...]`` at ``rows`` and copies of its first row elsewhere."""
    if isinstance(obs, dict):
        return {k: _pad_rows(v, rows, total) for k, v in obs.items()}  # type: ignore[misc]
    if len(obs) == total:
        return obs
    padded = np.repeat(obs[:1], total, axis=0)
    padded[rows] = obs
    return padded


class _PaddedPredictor:
    """A reward snapshot that scores a worker's ``n`` rows inside a batch of all ``N``, as the
    learner's wrapper would: BLAS rounds a row differently in batches of other sizes."""

    def __init__(self, predictor: RewardPredictor, rows: slice, total: int) -> None:
        self.predictor, self.rows, self.total = predictor, rows, total
        self.obs_dim, self.act_dim = predictor.obs_dim, predictor.act_dim
        self.episode_level, self.ensemble = predictor.episode_level, predictor.ensemble

    def predict(
        self,
        obs: np.ndarray,
        acts: np.ndarray,
        next_obs: np.ndarray,
        done: np.ndarray | None = None,
    ) -> Prediction:
        """``predictor.predict`` of ``[n, D]`` rows, run on ``[N, D]`` (see the class)."""
        if len(obs) == self.total:
            return self.predictor.predict(obs, acts, next_obs, done)
        pad = functools.partial(_pad_rows, rows=self.rows, total=self.total)
        mean, std = self.predictor.predict(
            pad(obs), pad(acts), pad(next_obs), None if done is None else pad(done)
        )
        return Prediction(mean[self.rows], None if std is None else std[self.rows])


class RolloutWorker:
    """Steps ``num_envs`` of the learner's ``total_envs`` sub-envs, from ``offset``, with copies
    of the policy and the observation normaliser. A plain class: ``RayRollouts`` makes Ray
    actors of it, and it runs in-process as it is.

    Args:
        env_factory: builds the worker's :class:`WorkerEnv` for ``num_envs`` sub-envs.
        num_envs: ``n``, this worker's sub-envs.
        offset: global index of its first sub-env.
        total_envs: ``N``, the learner's sub-envs.
        policy: the learner's policy (copied to the CPU; weights arrive with every sample).
        obs_normalizer: the learner's normaliser (copied; statistics arrive with every sample),
            None when the agent has none.
        observation_space: the learner's single observation space (checked against the env's).
        action_space: the learner's single action space (checked against the env's).
        torch_threads: ``torch.set_num_threads`` in the worker (None leaves it).
    """

    def __init__(
        self,
        env_factory: EnvFactory,
        num_envs: int,
        offset: int,
        total_envs: int,
        policy: nn.Module,
        obs_normalizer: ObsNormalizer | None,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        torch_threads: int | None = 1,
        exact: bool = False,
    ) -> None:
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        self.stack = stack = env_factory(num_envs)
        env = stack.env
        mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        if env.num_envs != num_envs or mode != AutoresetMode.NEXT_STEP:
            raise ValueError(
                f"the rollout worker's env factory built {env.num_envs} sub-envs in autoreset mode "
                f"{mode}; PPO-KL's workers need {num_envs} in NEXT_STEP mode: build the vector env "
                "with the num_envs the factory is given and Gymnasium's default autoreset mode"
            )
        for name, got, want in (
            ("observation", env.single_observation_space, observation_space),
            ("action", env.single_action_space, action_space),
        ):
            if got != want:
                raise ValueError(
                    f"the rollout worker's env has {name} space {got}, the learner's is {want}: "
                    "the env factory must build the learner's env"
                )
        policy = copy.deepcopy(policy).cpu()
        # the learner's optimiser keeps its trainable parameters in one flat buffer; the same
        # layout gives the CPU kernels the same memory alignment, so the same sums bit for bit
        ClippedAdam._flatten([p for p in policy.parameters() if p.requires_grad])
        self.policy = policy.requires_grad_(False).eval()
        self.obs_normalizer = copy.deepcopy(obs_normalizer)
        self.observation_space, self.action_space = observation_space, action_space
        self.rows = slice(offset, offset + num_envs)
        self.total_envs = total_envs
        # padding to all N rows changes nothing when this worker holds them all
        self.exact = exact and num_envs < total_envs
        # several default workers: each draws its own noise (one holds the learner's stream)
        self.own_noise = not exact and num_envs < total_envs
        self._last_obs: ObsArray | None = None

    def reset(self, seed: int) -> ObsArray:
        """Reset the sub-envs (global sub-env ``j`` with ``seed + j``); returns ``[n, ...]`` obs."""
        self._last_obs, _ = self.stack.env.reset(seed=seed + self.rows.start)
        return self._last_obs

    def policy_state(self) -> dict[str, Tensor]:
        """The weights the worker last sampled with (its policy's ``state_dict``)."""
        return self.policy.state_dict()

    def sample(self, request: SampleRequest) -> Rollout:
        """Step the sub-envs ``request.n_steps`` times with the learner's weights and noise.

        Raises:
            RuntimeError: :meth:`reset` was never called.
        """
        if self._last_obs is None:
            raise RuntimeError("reset the rollout worker (reset(seed)) before sampling")
        self._receive(request)
        recorded_before = self._total_recorded()
        steps, ends = [], []
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(request.torch_rng)
            if self.own_noise:
                # one draw of the learner's stream (the same in every worker) seeds this worker's
                # own noise; the learner's stream goes on from after that draw
                base = int(torch.randint(0, 2**62, ()).item())
                torch_rng = torch.get_rng_state()
                torch.manual_seed(base + self.rows.start)
            for t in range(request.n_steps):
                if request.shaping_steps is not None:  # k_t as the learner's wrapper counts t
                    shaping_steps = request.shaping_steps + t * self.total_envs
                    self.stack.reward_env.shaping_steps = shaping_steps  # type: ignore[union-attr]
                steps.append(self._step())
                ends += [(t, stats) for stats in self._recorder_stats()]
            if not self.own_noise:
                torch_rng = torch.get_rng_state()
        obs, raw, actions, log_probs, values, rewards, terminated, truncated, true, reported = zip(
            *steps, strict=True
        )
        return Rollout(
            obs=_stack(obs),
            raw_obs=_stack(raw) if self.obs_normalizer is not None else None,
            actions=np.stack(actions),
            log_probs=np.stack(log_probs),
            values=np.stack(values),
            rewards=np.stack(rewards).astype(np.float32, copy=False),
            terminated=np.stack(terminated),
            truncated=np.stack(truncated),
            true_rewards=np.stack(true),
            true_reported=np.stack(reported),
            last_obs=copy.deepcopy(self._last_obs),
            torch_rng=torch_rng,
            episodes=self._episodes(ends),
            recorded_steps=self._total_recorded() - recorded_before,
        )

    def _receive(self, request: SampleRequest) -> None:
        self.policy.load_state_dict(request.policy_state)
        if self.obs_normalizer is not None:
            if request.obs_normalizer is None:
                raise ValueError(
                    "the learner sent no normaliser statistics to a normalising worker"
                )
            self.obs_normalizer.load_state_dict(request.obs_normalizer)
        reward_env = self.stack.reward_env
        if (
            request.predictor is not None or request.shaping_steps is not None
        ) and reward_env is None:
            raise ValueError(
                "the learner sends reward snapshots, but this worker's stack has no learned-reward "
                "wrapper: return WorkerEnv(env, recorder, reward_env) from the env factory"
            )
        if request.predictor is not None:
            predictor = request.predictor
            if self.exact:
                predictor = _PaddedPredictor(predictor, self.rows, self.total_envs)
            reward_env.set_predictor(predictor)  # type: ignore[union-attr]

    def _step(self) -> tuple[Any, ...]:
        """One vector step: the policy's obs, raw obs, actions, log-probs, values, rewards,
        terminated, truncated, true rewards and their mask, each ``[n, ...]``."""
        raw = obs = copy.deepcopy(self._last_obs)  # a vector env may reuse its buffers
        if self.obs_normalizer is not None:
            self.obs_normalizer.update(raw)
            obs = self.obs_normalizer.normalize(raw)
        if self.exact:
            rows = obs_to_tensor(
                _pad_rows(obs, self.rows, self.total_envs), self.observation_space, "cpu"
            )
            keep: slice = self.rows
        else:
            rows, keep = obs_to_tensor(obs, self.observation_space, "cpu"), slice(None)
        with torch.inference_mode():
            actions, log_probs, values = (x[keep].numpy() for x in self.policy.act(rows))
        next_obs, rewards, terminated, truncated, infos = self.stack.env.step(
            env_actions(actions, self.action_space)
        )
        true, reported = step_true_rewards(infos, len(log_probs))
        self._last_obs = next_obs
        return (obs, raw, actions, log_probs, values, np.asarray(rewards), terminated, truncated,
                true, reported)  # fmt: skip

    def _recorder_stats(self) -> list[EpisodeStats]:
        recorder = self.stack.recorder
        return recorder.pop_episode_stats() if recorder is not None else []

    def _total_recorded(self) -> int:
        recorder = self.stack.recorder
        return recorder.total_steps if recorder is not None else 0

    def _episodes(self, ends: list[tuple[int, EpisodeStats]]) -> list[FinishedEpisode] | None:
        """The rollout's finished episodes with global sub-env indices (None: no recorder)."""
        if self.stack.recorder is None:
            return None
        trajectories = self.stack.recorder.pop_trajectories()
        if len(trajectories) != len(ends):
            raise RuntimeError(
                f"the worker's recorder finished {len(trajectories)} trajectories but reported "
                f"{len(ends)} episodes: raise its capacity_steps above one rollout's steps"
            )
        offset = self.rows.start
        return [
            FinishedEpisode(t, trajectory,
                            dataclasses.replace(stats, env_index=offset + stats.env_index))
            for (t, stats), trajectory in zip(ends, trajectories, strict=True)
        ]  # fmt: skip


_STEP_FIELDS = ("actions", "log_probs", "values", "rewards", "terminated", "truncated",
                "true_rewards", "true_reported")  # fmt: skip


def merge_rollouts(parts: Sequence[Rollout]) -> Rollout:
    """The workers' rollouts, in worker order, as one over all their sub-envs (fresh, writable
    arrays: Ray hands back read-only ones).

    Arrays are concatenated along the env axis; the episodes are ordered by (step, global
    sub-env), the order a recorder over all sub-envs records them in; the RNG state is the first
    worker's (every worker advances the learner's stream alike).
    """
    episodes = None
    if all(p.episodes is not None for p in parts):
        everything = [e for p in parts for e in p.episodes]  # type: ignore[union-attr]
        episodes = sorted(everything, key=lambda e: (e.step, e.stats.env_index))
    stepwise = {
        name: np.concatenate([p._asdict()[name] for p in parts], 1) for name in _STEP_FIELDS
    }
    return Rollout(
        obs=concat_obs([p.obs for p in parts], 1),
        raw_obs=None if parts[0].raw_obs is None else concat_obs([p.raw_obs for p in parts], 1),  # type: ignore[misc]
        last_obs=concat_obs([p.last_obs for p in parts], 0),
        torch_rng=parts[0].torch_rng,
        episodes=episodes,
        recorded_steps=sum(p.recorded_steps for p in parts),
        **stepwise,
    )
