"""The Ray side of PPO-KL's rollout workers: :class:`RayRollouts` and :class:`RemoteEnvs`.

:class:`RayRollouts` places ``W`` :class:`~agents.ppo_kl.rollout_workers.RolloutWorker` s on Ray
actors (or runs them in this process), splits the learner's sub-envs over them, broadcasts the
weights before every rollout and hands the finished episodes to the learner-side recorder. What
is synchronous and why, and how exactly the result matches a local run, is told in
:mod:`agents.ppo_kl.rollout_workers`. Ray is imported when the first workers start, so this
module, and PPO-KL, import without it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from gymnasium import spaces
from gymnasium.vector import VectorEnv
from gymnasium.vector.utils import batch_space
from torch import Tensor, nn

from agents.ppo_kl.buffer import ObsArray
from agents.ppo_kl.normalize import ObsNormalizer
from agents.ppo_kl.rollout_workers import (
    EnvFactory,
    Rollout,
    RolloutWorker,
    SampleRequest,
    concat_obs,
    merge_rollouts,
)
from prefenv.predictors import RewardPredictor
from prefenv.recording import TrajectoryRecorder
from prefenv.wrappers import VectorPreferenceReward

__all__ = ["RayRollouts", "RemoteEnvs"]


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError(
            'PPO-KL rollout workers run on Ray, which is not installed: pip install "prefenv[ray]" '
            "(or train on the local vector env: rollout_workers=0)"
        ) from exc
    return ray


class RayRollouts:
    """``W`` rollout workers on Ray actors (or in this process) that sample PPO-KL's rollouts.

    Hand it to :class:`~agents.ppo_kl.PPOKL` (``rollouts=``): the agent starts the workers with
    copies of its policy and normaliser, resets them and takes every rollout from :meth:`sample`.
    Without a running Ray, the first start calls ``ray.init()`` (which joins the cluster named in
    ``RAY_ADDRESS``, else starts a local one with the machine's cores).

    Args:
        env_factory: builds one worker's stack for ``num_envs / num_workers`` sub-envs (pickled
            to the actors).
        num_workers: ``W``.
        num_envs: ``N``, the learner's sub-envs (its env's ``num_envs``); ``W`` must divide it.
        num_cpus: CPUs Ray reserves for each actor.
        reward_env: the learner-side learned-reward wrapper that the preference loop hands each
            refit's snapshot (``set_predictor``); the workers get a snapshot whenever it holds a
            new one, and its ``shaping_steps`` before every rollout (it then counts the
            rollout's steps). None: the workers keep their own reward.
        recorder: the learner-side recorder the preference loop reads; gets every rollout's
            finished episodes and their returns (:meth:`TrajectoryRecorder.add_episodes`).
        on_steps: called with each rollout's env steps (a progress bar).
        in_process: run the workers in this process, one after another, without Ray (tests,
            debugging): the same results as on Ray.
        exact: every worker computes all ``N`` rows so that several workers reproduce a local
            run bit for bit (see :mod:`agents.ppo_kl.rollout_workers`); off, each computes only
            its own rows (one worker is bit-identical either way).

    Raises:
        ValueError: ``W`` does not divide ``N``.
        ImportError: Ray is needed (``in_process=False``) and not installed.
    """

    def __init__(
        self,
        env_factory: EnvFactory,
        num_workers: int,
        num_envs: int,
        *,
        num_cpus: float = 1.0,
        reward_env: VectorPreferenceReward | None = None,
        recorder: TrajectoryRecorder | None = None,
        on_steps: Callable[[int], None] | None = None,
        in_process: bool = False,
        exact: bool = False,
    ) -> None:
        if num_workers < 1 or num_envs % num_workers:
            raise ValueError(
                f"{num_envs} sub-envs cannot be split evenly over {num_workers} rollout workers: "
                "make the number of sub-envs (--n-envs) a multiple of the workers "
                "(--rollout-workers)"
            )
        self.env_factory, self.num_workers, self.num_envs = env_factory, num_workers, num_envs
        self.num_cpus, self.exact = num_cpus, exact
        self.reward_env, self.recorder, self.on_steps = reward_env, recorder, on_steps
        self._ray: Any = None if in_process else _import_ray()
        self._workers: list[Any] = []
        self._sent: RewardPredictor | None = None

    def start(
        self,
        policy: nn.Module,
        obs_normalizer: ObsNormalizer | None,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        torch_threads: int | None = 1,
    ) -> None:
        """(Re)create the workers with CPU copies of the learner's policy and normaliser."""
        self.close()
        n = self.num_envs // self.num_workers
        shared = (copy.deepcopy(policy).cpu(), obs_normalizer, observation_space, action_space,
                  torch_threads, self.exact)  # fmt: skip
        if self._ray is None:
            self._workers = [
                RolloutWorker(self.env_factory, n, w * n, self.num_envs, *shared)
                for w in range(self.num_workers)
            ]
        else:
            ray = self._ray
            if not ray.is_initialized():
                ray.init()
            actor = ray.remote(num_cpus=self.num_cpus)(RolloutWorker)
            refs = [ray.put(x) for x in (self.env_factory, *shared)]
            self._workers = [
                actor.remote(refs[0], n, w * n, self.num_envs, *refs[1:])
                for w in range(self.num_workers)
            ]
        self._sent = None  # new workers hold a fresh reward model: send the snapshot

    def reset(self, seed: int) -> ObsArray:
        """Reset every worker's sub-envs (global sub-env ``j`` with ``seed + j``); ``[N, ...]`` obs."""
        return concat_obs(self._call(lambda w: w.reset, seed), 0)

    def sample(
        self,
        n_steps: int,
        policy: nn.Module,
        obs_normalizer: ObsNormalizer | None,
        torch_rng: Tensor,
    ) -> Rollout:
        """One rollout of ``n_steps`` on all ``N`` sub-envs with ``policy``'s current weights.

        Args:
            n_steps: vector steps per sub-env.
            policy: the learner's policy (its weights are broadcast).
            obs_normalizer: the learner's normaliser (its statistics are broadcast), or None.
            torch_rng: the learner's torch RNG state; the result carries it advanced.

        Returns:
            The merged rollout (``[n_steps, N, ...]`` arrays); its episodes are already with the
            recorder.
        """
        reward_env = self.reward_env
        predictor = shaping = None
        if reward_env is not None:
            shaping = reward_env.shaping_steps
            if reward_env.predictor is not self._sent:
                predictor = self._sent = reward_env.predictor
        request = SampleRequest(
            n_steps=n_steps,
            policy_state={
                k: v.detach().to("cpu", copy=True) for k, v in policy.state_dict().items()
            },
            obs_normalizer=obs_normalizer.state_dict() if obs_normalizer is not None else None,
            torch_rng=torch_rng,
            predictor=predictor,
            shaping_steps=shaping,
        )
        payload = request if self._ray is None else self._ray.put(request)
        rollout = merge_rollouts(self._call(lambda w: w.sample, payload))
        steps = n_steps * self.num_envs
        if reward_env is not None:
            reward_env.shaping_steps = reward_env.shaping_steps + steps
        if self.recorder is not None:
            if rollout.episodes is None:
                raise ValueError(
                    "the learner has a recorder but the rollout workers record no episodes: "
                    "return WorkerEnv(env, recorder, reward_env) from the env factory"
                )
            self.recorder.add_episodes(
                [e.trajectory for e in rollout.episodes],
                [e.stats for e in rollout.episodes],
                rollout.recorded_steps,
            )
        if self.on_steps is not None:
            self.on_steps(steps)
        return rollout

    def policy_states(self) -> list[dict[str, Tensor]]:
        """Each worker's policy weights (those of its last sample)."""
        return self._call(lambda w: w.policy_state)

    def close(self) -> None:
        """Stop the workers (Ray actors are killed); :meth:`start` makes new ones."""
        if self._ray is not None:
            for worker in self._workers:
                self._ray.kill(worker)
        self._workers = []

    def _call(self, method: Callable[[Any], Any], *args: Any) -> list[Any]:
        """``method(worker)(*args)`` on every worker, in worker order; in parallel on Ray."""
        if not self._workers:
            raise RuntimeError(
                "the rollout workers are not started: pass the RayRollouts to PPOKL(rollouts=...), "
                "which starts them"
            )
        if self._ray is None:
            return [method(worker)(*args) for worker in self._workers]
        try:
            return self._ray.get([method(worker).remote(*args) for worker in self._workers])
        except self._ray.exceptions.RayActorError as exc:
            raise RuntimeError(
                f"a rollout worker's process died ({exc}); a prefenv train run continues from its "
                "last checkpoint with prefenv resume"
            ) from exc


_REMOTE = (
    "these sub-envs run on rollout workers: the learner takes whole rollouts from "
    "RayRollouts.sample (PPOKL(rollouts=...)), never single steps"
)


class RemoteEnvs(VectorEnv):
    """The learner's stand-in for the sub-envs its rollout workers step.

    It has their spaces, ``num_envs`` and metadata, so the learner-side wrappers the preference
    loop reads (learned reward, recorder) and the agent can be built on it; it is never stepped
    or reset (the workers are), and says so if asked.

    Args:
        template: a vector env of the same id (any ``num_envs``), read for spaces and metadata.
        num_envs: ``N``, the sub-envs of all workers together.
    """

    def __init__(self, template: VectorEnv, num_envs: int) -> None:
        self.num_envs = num_envs
        self.single_observation_space = template.single_observation_space
        self.single_action_space = template.single_action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.metadata = dict(template.metadata)

    def reset(self, *, seed: Any = None, options: Any = None) -> Any:
        raise RuntimeError(_REMOTE)

    def step(self, actions: Any) -> Any:
        raise RuntimeError(_REMOTE)
