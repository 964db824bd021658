"""The PPO-with-KL trainer: rollouts from a Gymnasium vector env, GAE, the clipped update.

One iteration = collect ``n_steps`` vector steps -> penalise rewards with the KL to the frozen
reference (``kl_penalized_rewards``) -> GAE -> ``n_epochs`` passes of minibatch updates.

Autoreset (Gymnasium 1.x NEXT_STEP, the default of ``make_vec``/``SyncVectorEnv``/
``AsyncVectorEnv``): the step that ends an episode returns that episode's final observation, and
the env resets on the *next* step, ignoring that step's action and returning reward 0. So the
value of the observation after a truncated step is exactly the bootstrap value GAE needs, and the
reset step is stored with ``valid=False`` and left out of advantages, losses and statistics.

With ``rollouts=`` (:class:`~agents.ppo_kl.ray_rollouts.RayRollouts`) the steps come from
rollout workers that hold copies of the env stack and the policy; the learner fills the same
buffer from their arrays and everything after collection is unchanged.

(Over 400 lines: :class:`PPOKL` is one object whose rollout, iteration and
exact save/load all read the same private state; the pieces that stand alone already live in
``buffer``, ``kl``, ``losses``, ``normalize``, ``optim``, ``update`` and ``checkpoint``.)
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from torch import nn
from tqdm.auto import tqdm

from agents.policies import MLPActorCritic, Policy
from agents.ppo_kl.buffer import RolloutBuffer, obs_to_tensor
from agents.ppo_kl.checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from agents.ppo_kl.config import PPOKLConfig
from agents.ppo_kl.kl import KLController, kl_estimate, kl_penalized_rewards
from agents.ppo_kl.logger import IterationMetrics, MetricsLogger
from agents.ppo_kl.losses import (
    compute_gae,
    explained_variance,
)
from agents.ppo_kl.normalize import ObsNormalizer, ReturnScaler
from agents.ppo_kl.optim import ClippedAdam
from agents.ppo_kl.ray_rollouts import RayRollouts
from agents.ppo_kl.rollout_workers import Rollout, env_actions, flatten_steps, obs_at
from agents.ppo_kl.update import UpdateStats, ppo_update
from prefenv.episodes import EpisodeAccountant, EpisodeStats

Callback = Callable[[IterationMetrics], bool | None]


def _check_env(env: Any) -> None:
    if not isinstance(env, gym.vector.VectorEnv):
        raise TypeError(
            f"PPOKL needs a gymnasium.vector.VectorEnv, got {type(env).__name__}; build one with "
            "gymnasium.make_vec(env_id, num_envs=8, vectorization_mode='sync') or "
            "gymnasium.vector.SyncVectorEnv([lambda: env])"
        )
    mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    if mode != AutoresetMode.NEXT_STEP:
        raise ValueError(
            f"PPOKL supports the NEXT_STEP autoreset mode (Gymnasium's default), got {mode}; create "
            "the vector env with autoreset_mode=gymnasium.vector.AutoresetMode.NEXT_STEP"
        )


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


class PPOKL:
    """PPO with a per-step KL penalty to a frozen reference policy.

    Args:
        env: a Gymnasium 1.x vector env (sync or async, NEXT_STEP autoreset).
        config: hyperparameters (defaults: SB3 PPO).
        policy: a :class:`agents.policies.Policy` ``nn.Module``; default an
            :class:`~agents.policies.MLPActorCritic` built from the config.
        ref_policy: frozen reference for the KL leash (e.g. behaviour-cloned / SFT). When
            ``kl_coef > 0`` and none is given, a frozen copy of the initial policy is used. It is
            fed the same (normalised) observations as the policy.
        log_dir: where ``progress.csv`` and TensorBoard events go; None disables logging.
        rollouts: rollout workers that step copies of ``env`` (see
            :mod:`agents.ppo_kl.rollout_workers`); the agent starts them with copies of its
            policy, and ``env`` then only supplies the spaces and ``num_envs`` (it is never
            stepped; the caller closes the workers). None: the agent steps ``env`` itself.

    Note: for speed the optimiser (:class:`~agents.ppo_kl.ClippedAdam`) re-points the policy's
    trainable parameters at slices of one flat buffer; the policy behaves as before, but do not
    move it to another device after constructing the agent.
    """

    def __init__(
        self,
        env: gym.vector.VectorEnv,
        config: PPOKLConfig | None = None,
        policy: nn.Module | None = None,
        ref_policy: nn.Module | None = None,
        log_dir: str | Path | None = None,
        rollouts: RayRollouts | None = None,
    ) -> None:
        _check_env(env)
        self.env = env
        self.config = cfg = config if config is not None else PPOKLConfig()
        if cfg.torch_threads is not None:
            torch.set_num_threads(cfg.torch_threads)
        # The agent owns its torch RNG stream (policy init, action sampling): runs are
        # reproducible and independent of other agents and code sharing the global generator.
        # Its torch and numpy (minibatch order) streams are spawned children of the seed, so
        # neither replays the stream the env seeded with the same number draws from.
        torch_seed, numpy_seed = np.random.SeedSequence(cfg.seed).spawn(2)
        self._torch_rng = (
            torch.Generator().manual_seed(int(torch_seed.generate_state(1)[0])).get_state()
        )
        self.rng = np.random.default_rng(numpy_seed)
        self._env_seed = cfg.seed if cfg.env_seed is None else cfg.env_seed
        self.device = torch.device(cfg.device)
        self.num_envs = env.num_envs
        self.observation_space = env.single_observation_space
        self.action_space = env.single_action_space
        if policy is None:
            with self._own_rng():
                policy = MLPActorCritic(
                    self.observation_space,
                    self.action_space,
                    hidden_sizes=cfg.hidden_sizes,
                    activation=cfg.activation,
                    ortho_init=cfg.ortho_init,
                    log_std_init=cfg.log_std_init,
                )
        if not isinstance(policy, Policy) or not isinstance(policy, nn.Module):
            raise TypeError("policy must be an nn.Module with act/evaluate/log_prob/value (Policy)")
        self.policy = policy.to(self.device)
        if ref_policy is self.policy:
            raise ValueError("ref_policy must be a separate frozen module, not the trained policy")
        if ref_policy is None and cfg.kl_coef > 0:
            ref_policy = copy.deepcopy(self.policy)
        self.ref_policy = self._freeze(ref_policy)
        params = [p for p in self.policy.parameters() if p.requires_grad]
        # Adam eps 1e-5 as SB3's PPO.
        self.optimizer = ClippedAdam(
            params, cfg.learning_rate, eps=1e-5, max_grad_norm=cfg.max_grad_norm
        )
        self.kl_controller = KLController(
            cfg.kl_coef, cfg.adaptive_kl, cfg.kl_target, cfg.kl_horizon
        )
        self.obs_normalizer = (
            ObsNormalizer(self.observation_space, cfg.clip_obs) if cfg.norm_obs else None
        )
        self.return_scaler = (
            ReturnScaler(self.num_envs, cfg.gamma, cfg.clip_reward) if cfg.norm_reward else None
        )
        self.buffer = RolloutBuffer(
            cfg.n_steps, self.num_envs, self.observation_space, self.action_space
        )
        self.episodes = EpisodeAccountant(self.num_envs, AutoresetMode.NEXT_STEP)
        self._finished: list[EpisodeStats] = []
        self.num_timesteps = 0
        self.iterations = 0
        self._env_restarts = 0
        self._last_obs: Any = None
        self.logger = MetricsLogger(log_dir) if log_dir is not None else None
        self.rollouts = rollouts
        if rollouts is not None:
            if rollouts.num_envs != self.num_envs:
                raise ValueError(
                    f"the rollout workers step {rollouts.num_envs} sub-envs but the env has "
                    f"{self.num_envs}: build RayRollouts with num_envs=env.num_envs"
                )
            rollouts.start(self.policy, self.obs_normalizer, self.observation_space,
                           self.action_space, cfg.torch_threads)  # fmt: skip

    @contextlib.contextmanager
    def _own_rng(self) -> Iterator[None]:
        """Run a block on the agent's torch RNG stream, leaving the global stream untouched."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self._torch_rng)
            yield
            self._torch_rng = torch.get_rng_state()

    def _freeze(self, module: nn.Module | None) -> nn.Module | None:
        if module is None:
            return None
        module = module.to(self.device)
        module.requires_grad_(False)
        module.eval()
        return module

    # ------------------------------------------------------------------ public API

    def learn(
        self,
        total_timesteps: int,
        reset_num_timesteps: bool = False,
        callback: Callback | None = None,
        progress_bar: bool = False,
    ) -> list[IterationMetrics]:
        """Train for ``total_timesteps`` more env steps (rounded up to whole iterations).

        Repeated calls continue the same run: the envs are reset only on the very first call
        (with ``config.env_seed``, else ``config.seed``), never between calls.

        Args:
            total_timesteps: env steps to add, over all envs.
            reset_num_timesteps: restart the step and iteration counters at 0 (logging only).
            callback: called with each iteration's metrics; returning ``False`` stops training.
            progress_bar: show a tqdm bar.
        """
        if total_timesteps < 0:
            raise ValueError(f"total_timesteps must be >= 0, got {total_timesteps}")
        if reset_num_timesteps:
            self.num_timesteps = self.iterations = 0
        if self._last_obs is None:
            self._reset_envs(self._env_seed)
        target = self.num_timesteps + total_timesteps
        history: list[IterationMetrics] = []
        with tqdm(total=total_timesteps, disable=not progress_bar, unit="step") as bar:
            while self.num_timesteps < target:
                with self._own_rng():
                    metrics = self._iteration()
                history.append(metrics)
                bar.update(self.config.n_steps * self.num_envs)
                bar.set_postfix(
                    reward=f"{metrics.episode_reward:.1f}", kl=f"{metrics.kl_to_ref:.3g}"
                )
                if self.logger is not None:
                    self.logger.log(metrics)
                if callback is not None and callback(metrics) is False:
                    break
        return history

    def predict(self, obs: Any, deterministic: bool = True) -> np.ndarray:
        """Actions for a batch of observations ``[N, ...]`` (as the vector env returns them).

        Observations are normalised with the current statistics (not updated); Box actions are
        clipped to the action bounds, exactly as in training.
        """
        obs_t = obs_to_tensor(
            self._policy_obs(obs, update=False), self.observation_space, self.device
        )
        with torch.inference_mode():
            with self._own_rng():
                actions, _, _ = self.policy.act(obs_t, deterministic=deterministic)
        return self._env_actions(actions.cpu().numpy())

    def close(self) -> None:
        """Close the logger (the env belongs to the caller)."""
        if self.logger is not None:
            self.logger.close()

    # ------------------------------------------------------------------ rollout

    def _policy_obs(self, obs: Any, update: bool) -> Any:
        if self.obs_normalizer is None:
            return obs
        if update:
            self.obs_normalizer.update(obs)
        return self.obs_normalizer.normalize(obs)

    def _env_actions(self, actions: np.ndarray) -> np.ndarray:
        return env_actions(actions, self.action_space)

    def _reset_envs(self, seed: int) -> None:
        if self.rollouts is not None:
            self._last_obs = self.rollouts.reset(seed)
        else:
            self._last_obs, _ = self.env.reset(seed=seed)
        self.episodes.reset()
        if self.return_scaler is not None:
            self.return_scaler.reset_returns()

    def _collect_rollout(self, use_ref: bool) -> np.ndarray:
        """Fill the buffer with ``n_steps`` vector steps; returns V(last obs) ``[N]``."""
        if self.rollouts is not None:
            self._collect_from_workers(use_ref)
        else:
            self._collect_local(use_ref)
        if not use_ref:
            self.buffer.kl[:] = 0.0
        last_obs = obs_to_tensor(
            self._policy_obs(self._last_obs, update=False), self.observation_space, self.device
        )
        with torch.inference_mode():
            return self.policy.value(last_obs).cpu().numpy()

    def _collect_local(self, use_ref: bool) -> None:
        """Fill the buffer by stepping the agent's own env."""
        cfg = self.config
        for t in range(cfg.n_steps):
            obs = self._policy_obs(self._last_obs, update=True)
            obs_t = obs_to_tensor(obs, self.observation_space, self.device)
            with torch.inference_mode():
                actions, log_probs, values = self.policy.act(obs_t)
                ref_lp = self.ref_policy.log_prob(obs_t, actions) if use_ref else None  # type: ignore[union-attr]
            actions_np = actions.cpu().numpy()
            next_obs, rewards, terminated, truncated, infos = self.env.step(
                self._env_actions(actions_np)
            )
            logp_np = log_probs.cpu().numpy()
            kl = None
            if ref_lp is not None:
                kl = kl_estimate(logp_np, ref_lp.cpu().numpy(), cfg.kl_estimator)
            step = (actions_np, logp_np, values.cpu().numpy(), rewards, terminated, truncated)
            self._record_step(t, obs, *step, infos, kl)
            self._last_obs = next_obs

    def _record_step(
        self,
        t: int,
        obs: Any,
        actions: np.ndarray,
        log_probs: np.ndarray,
        values: np.ndarray,
        rewards: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        infos: dict[str, Any],
        kl: np.ndarray | None,
    ) -> None:
        """Store vector step ``t`` (``[N, ...]`` arrays): episode accounting, the KL, return
        scaling and the reset-step mask."""
        buf = self.buffer
        dones = terminated | truncated
        rewards = np.asarray(rewards, dtype=np.float32)
        account = self.episodes.step(rewards, terminated, truncated, infos, kl)
        valid = account.valid  # False: reset step, the env ignored the action
        self._finished += account.finished
        if kl is not None:
            buf.kl[t] = np.where(valid, kl, 0.0)
        if self.return_scaler is not None:
            rewards = self.return_scaler(rewards, dones, valid)
        buf.add_obs(t, obs)
        buf.actions[t] = actions
        buf.log_probs[t] = log_probs
        buf.values[t] = values
        buf.rewards[t] = np.where(valid, rewards, 0.0)
        buf.terminated[t] = terminated & valid
        buf.truncated[t] = truncated & valid
        buf.valid[t] = valid

    def _collect_from_workers(self, use_ref: bool) -> None:
        """Fill the buffer from one rollout of the rollout workers (run inside ``_own_rng``: the
        workers draw the action noise from the agent's stream and hand it back advanced)."""
        cfg = self.config
        assert self.rollouts is not None
        rollout = self.rollouts.sample(
            cfg.n_steps, self.policy, self.obs_normalizer, torch.get_rng_state()
        )
        torch.set_rng_state(rollout.torch_rng)
        kl = self._reference_kl(rollout) if use_ref else None
        for t in range(cfg.n_steps):
            if self.obs_normalizer is not None:  # the updates a local rollout makes, in order
                self.obs_normalizer.update(obs_at(rollout.raw_obs, t))
            infos = {
                "true_reward": rollout.true_rewards[t],
                "_true_reward": rollout.true_reported[t],
            }
            step = (rollout.actions[t], rollout.log_probs[t], rollout.values[t],
                    rollout.rewards[t], rollout.terminated[t], rollout.truncated[t])  # fmt: skip
            self._record_step(
                t, obs_at(rollout.obs, t), *step, infos, None if kl is None else kl[t]
            )
        self._last_obs = rollout.last_obs

    def _reference_kl(self, rollout: Rollout) -> np.ndarray:
        """``[T, N]`` per-step KL to the reference of a workers' rollout, in one batched pass."""
        n_steps, n_envs = rollout.log_probs.shape
        obs_t = obs_to_tensor(flatten_steps(rollout.obs), self.observation_space, self.device)
        actions = rollout.actions.reshape(n_steps * n_envs, *rollout.actions.shape[2:])
        with torch.inference_mode():
            ref_lp = self.ref_policy.log_prob(obs_t, torch.as_tensor(actions, device=self.device))  # type: ignore[union-attr]
        ref_lp_np = ref_lp.cpu().numpy().reshape(n_steps, n_envs)
        return kl_estimate(rollout.log_probs, ref_lp_np, self.config.kl_estimator)

    # ------------------------------------------------------------------ iteration

    def _iteration(self) -> IterationMetrics:
        cfg, buf = self.config, self.buffer
        start = time.perf_counter()
        kl_coef = self.kl_controller.kl_coef
        use_ref = kl_coef > 0 and self.ref_policy is not None
        last_values = self._collect_rollout(use_ref)
        rewards = kl_penalized_rewards(buf.rewards, buf.kl, kl_coef)
        next_values = np.concatenate([buf.values[1:], last_values[None]], axis=0)
        advantages, returns = compute_gae(
            rewards, buf.values, next_values, buf.terminated, buf.truncated, buf.valid,
            cfg.gamma, cfg.gae_lambda,
        )  # fmt: skip
        episodes, self._finished = self._finished, []
        episode_kl = _mean([e.kl_sum for e in episodes]) if use_ref else float("nan")
        self.kl_controller.update(episode_kl, len(episodes))
        stats = ppo_update(
            self.policy, self.optimizer, buf.batch(advantages, returns, self.device), cfg, self.rng
        )
        self.num_timesteps += cfg.n_steps * self.num_envs
        self.iterations += 1
        valid = buf.valid
        return self._metrics(
            start,
            stats,
            episodes,
            kl_coef,
            use_ref,
            explained_variance(buf.values[valid], returns[valid]),
        )

    def _metrics(
        self,
        start: float,
        stats: UpdateStats,
        episodes: list[EpisodeStats],
        kl_coef: float,
        use_ref: bool,
        ev: float,
    ) -> IterationMetrics:
        buf = self.buffer
        return IterationMetrics(
            iteration=self.iterations,
            timesteps=self.num_timesteps,
            fps=self.config.n_steps * self.num_envs / (time.perf_counter() - start),
            policy_loss=stats.policy_loss,
            value_loss=stats.value_loss,
            entropy=stats.entropy,
            approx_kl=stats.approx_kl,
            clip_fraction=stats.clip_fraction,
            explained_variance=ev,
            epochs=stats.epochs,
            kl_to_ref=float(buf.kl[buf.valid].mean()) if use_ref else float("nan"),
            kl_to_ref_episode=_mean([e.kl_sum for e in episodes]) if use_ref else float("nan"),
            kl_coef=kl_coef,
            episode_reward=_mean([e.learned_return for e in episodes]),
            episode_true_return=_mean([e.true_return for e in episodes]),
            episode_length=_mean([float(e.length) for e in episodes]),
            episodes=len(episodes),
        )

    # ------------------------------------------------------------------ checkpoints

    def save(self, directory: str | Path) -> Path:
        """Write an exactly-resumable checkpoint ``directory/ppo_kl.pt`` (atomic; returns its path).

        Env state cannot be saved, so saving *restarts the envs* with the restart count's child
        of the env seed (``SeedSequence(env_seed).spawn``) and stores that seed; :meth:`load`
        restarts fresh envs with the same seed. The live run and a run resumed from this checkpoint therefore continue from the
        same state and produce identical parameters. Cost: episodes in flight are cut (not counted
        in the episode statistics; their last rollout step was already bootstrapped from V).
        """
        child = np.random.SeedSequence(self._env_seed, spawn_key=(self._env_restarts,))
        seed = int(child.generate_state(1)[0])
        self._env_restarts += 1
        self._reset_envs(seed)
        state = {
            "config": self.config.to_dict(),
            "policy": self.policy.state_dict(),
            "ref_policy": self.ref_policy.state_dict() if self.ref_policy is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "obs_normalizer": self.obs_normalizer.state_dict() if self.obs_normalizer else None,
            "return_scaler": self.return_scaler.state_dict() if self.return_scaler else None,
            "kl_controller": self.kl_controller.state_dict(),
            "torch_rng": self._torch_rng,
            "numpy_rng": self.rng.bit_generator.state,
            "num_timesteps": self.num_timesteps,
            "iterations": self.iterations,
            "env_restarts": self._env_restarts,
            "env_seed": seed,
        }
        return write_checkpoint(directory, state)

    @classmethod
    def load(
        cls,
        directory: str | Path,
        env: gym.vector.VectorEnv,
        policy: nn.Module | None = None,
        ref_policy: nn.Module | None = None,
        log_dir: str | Path | None = None,
        rollouts: RayRollouts | None = None,
    ) -> PPOKL:
        """Rebuild an agent from :meth:`save` and restart ``env`` with the saved seed.

        Pass ``policy``/``ref_policy`` modules when the run used custom ones (same architecture);
        the default MLPs are rebuilt from the stored config. With ``rollouts``, new workers are
        started (workers are never saved) and restarted with the saved seed instead of ``env``.
        """
        state = read_checkpoint(directory)
        config = PPOKLConfig.from_dict(state["config"])
        agent = cls(env, config, policy, ref_policy, log_dir, rollouts)
        if state.get("ref_policy") is not None and agent.ref_policy is None:
            agent.ref_policy = agent._freeze(copy.deepcopy(agent.policy))
        try:
            agent.policy.load_state_dict(state["policy"])
            if agent.ref_policy is not None and state.get("ref_policy") is not None:
                agent.ref_policy.load_state_dict(state["ref_policy"])
            agent.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"checkpoint in {directory} does not fit this env/policy ({exc}); load it with the "
                "env it was trained on and pass policy=/ref_policy= modules of the same architecture"
            ) from exc
        if agent.obs_normalizer is not None:
            agent.obs_normalizer.load_state_dict(state["obs_normalizer"])
        if agent.return_scaler is not None:
            agent.return_scaler.load_state_dict(state["return_scaler"])
        agent.kl_controller.load_state_dict(state["kl_controller"])
        agent._torch_rng = state["torch_rng"]
        agent.rng.bit_generator.state = state["numpy_rng"]
        agent.num_timesteps = int(state["num_timesteps"])
        agent.iterations = int(state["iterations"])
        agent._env_restarts = int(state["env_restarts"])
        agent._reset_envs(int(state["env_seed"]))
        return agent

    # the text pipeline (prefenv.app.text_runs) still calls the old names
    save_checkpoint = save
    load_checkpoint = load
