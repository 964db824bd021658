"""PPO-KL's rollout workers: the plain worker and in-process pools, then (marker ``ray``) Ray.

The tolerance under test: one worker reproduces the local run bit for bit, and so do several when
observations are not normalised (every worker draws the learner's whole-batch action noise). With
normalisation on, several workers follow another, equally distributed sample path: there the
tests check that the learner folds every sub-env's observations into its normaliser once, and
that the run is reproducible.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents.ppo_kl import PPOKL, PPOKLConfig, RayRollouts, RolloutWorker, WorkerEnv
from agents.ppo_kl.rollout_workers import SampleRequest
from prefenv.episodes import EpisodeStats
from prefenv.recording import TrajectoryRecorder
from prefenv.records import Trajectory
from prefenv.reward_models import RewardEnsemble
from prefenv.wrappers import VectorPreferenceReward

N_ENVS = 4
# hidden 64: wide enough that the CPU kernels' memory alignment matters (the workers must lay
# their parameters out as the learner's optimiser does)
TINY = {"n_steps": 32, "batch_size": 32, "n_epochs": 2, "hidden_sizes": (64,), "seed": 3}
ITERATION = TINY["n_steps"] * N_ENVS


def cartpole_stack(num_envs: int) -> WorkerEnv:
    """CartPole under a recorder (the env's own reward)."""
    recorder = TrajectoryRecorder(gym.make_vec("CartPole-v1", num_envs, vectorization_mode="sync"))
    return WorkerEnv(recorder, recorder)


def reward_stack(num_envs: int) -> WorkerEnv:
    """CartPole -> learned reward (a seeded 2-member ensemble) -> recorder."""
    venv = gym.make_vec("CartPole-v1", num_envs, vectorization_mode="sync")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = RewardEnsemble.for_spaces(
            venv.single_observation_space, venv.single_action_space, 2, hidden_sizes=(16,)
        )
    reward_env = VectorPreferenceReward(venv, model)
    recorder = TrajectoryRecorder(reward_env)
    return WorkerEnv(recorder, recorder, reward_env)


def build(
    workers: int,
    factory: Callable[[int], WorkerEnv] = cartpole_stack,
    in_process: bool = True,
    exact: bool = True,
    **config: Any,
) -> tuple[PPOKL, WorkerEnv]:
    """A PPO-KL learner on ``factory``'s stack: it steps the stack itself (``workers == 0``) or
    takes its rollouts from ``workers`` rollout workers (the stack then only records); ``exact``
    workers compute every row, so several of them reproduce the local run."""
    stack = factory(N_ENVS)
    rollouts = None
    if workers:
        rollouts = RayRollouts(factory, workers, N_ENVS, reward_env=stack.reward_env,
                               recorder=stack.recorder, in_process=in_process,
                               exact=exact)  # fmt: skip
    return PPOKL(stack.env, PPOKLConfig(**TINY, **config), rollouts=rollouts), stack


def assert_same_run(a: tuple[PPOKL, WorkerEnv], b: tuple[PPOKL, WorkerEnv]) -> None:
    """Bitwise the same parameters, recorded episodes (in order) and episode returns."""
    for p, q in zip(a[0].policy.parameters(), b[0].policy.parameters(), strict=True):
        assert torch.equal(p, q)
    ra, rb = a[1].recorder, b[1].recorder
    assert ra is not None and rb is not None and ra.total_steps == rb.total_steps
    assert len(ra.trajectories) == len(rb.trajectories) > 0
    for x, y in zip(ra.trajectories, rb.trajectories, strict=True):
        assert np.array_equal(x.obs, y.obs) and np.array_equal(x.acts, y.acts)
        assert np.array_equal(x.true_rewards, y.true_rewards)
    stats = [[dataclasses.asdict(e) for e in r.pop_episode_stats()] for r in (ra, rb)]
    np.testing.assert_equal(stats[0], stats[1])  # (NaN equals NaN here)


# ---------------------------------------------------------------- in process: exactness


@pytest.mark.parametrize(
    ("workers", "norm_obs", "kl_coef"), [(1, True, 0.1), (2, False, 0.1), (4, False, 0.0)]
)
def test_workers_reproduce_the_local_run_bit_for_bit(
    workers: int, norm_obs: bool, kl_coef: float
) -> None:
    settings = {"norm_obs": norm_obs, "norm_reward": True, "kl_coef": kl_coef}
    local, remote = build(0, **settings), build(workers, **settings)
    local_metrics = local[0].learn(3 * ITERATION)
    remote_metrics = remote[0].learn(3 * ITERATION)
    assert_same_run(local, remote)
    untimed = [{**dataclasses.asdict(m), "fps": 0} for m in (*local_metrics, *remote_metrics)]
    np.testing.assert_equal(untimed[:3], untimed[3:])  # losses, KL, returns (NaN == NaN here)


def test_default_workers_compute_only_their_rows_with_their_own_noise() -> None:
    """Without ``exact`` a worker's policy sees its N / W rows; one worker is still the local
    run bit for bit, and two are reproducible with workers that draw different noise."""
    local, one = build(0), build(1, exact=False)
    local[0].learn(3 * ITERATION)
    one[0].learn(3 * ITERATION)
    assert_same_run(local, one)
    (agent, stack), (again, _) = build(2, exact=False), build(2, exact=False)
    rows_seen: list[int] = []
    for worker in agent.rollouts._workers:
        act = worker.policy.act
        worker.policy.act = lambda obs, act=act: (rows_seen.append(len(obs)), act(obs))[1]
    agent.learn(ITERATION)
    again.learn(ITERATION)
    assert set(rows_seen) == {N_ENVS // 2}
    for p, q in zip(agent.policy.parameters(), again.policy.parameters(), strict=True):
        assert torch.equal(p, q)
    # two workers facing the same observations draw different actions: their own streams
    policy = agent.policy
    space = (stack.env.single_observation_space, stack.env.single_action_space)
    workers = [RolloutWorker(cartpole_stack, 2, offset, N_ENVS, policy, None, *space)
               for offset in (0, 2)]  # fmt: skip
    workers[0].reset(10)
    workers[1].reset(8)  # sub-env j resets with seed + j: both get seeds 10 and 11
    request = SampleRequest(32, policy.state_dict(), None, torch.get_rng_state(), None, None)
    first, second = (w.sample(request) for w in workers)
    assert np.array_equal(first.raw_obs if first.raw_obs is not None else first.obs[0],
                          second.raw_obs if second.raw_obs is not None else second.obs[0])  # fmt: skip
    assert not np.array_equal(first.actions, second.actions)
    assert torch.equal(first.torch_rng, second.torch_rng)  # the learner's stream goes on once


def test_normalising_workers_fold_every_observation_into_the_learner_once() -> None:
    runs = [build(2, norm_obs=True) for _ in range(2)] + [build(0, norm_obs=True)]
    for agent, _ in runs:
        agent.learn(2 * ITERATION)
    (first, _), (again, _), (local, _) = runs
    stats = [agent.obs_normalizer.rms[""] for agent in (first, again, local)]  # type: ignore[union-attr]
    assert stats[0].count == stats[2].count == pytest.approx(1e-4 + 2 * ITERATION)
    assert np.array_equal(stats[0].mean, stats[1].mean)  # a fixed seed reproduces the run
    for p, q in zip(first.policy.parameters(), again.policy.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_refit_reaches_the_workers_once_and_the_run_stays_the_local_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[WorkerEnv] = []

    def spied(num_envs: int) -> WorkerEnv:
        made.append(reward_stack(num_envs))
        return made[-1]

    local, remote = build(0, reward_stack), build(2, spied)
    learner_env = remote[1].reward_env
    assert learner_env is not None and made[0] is remote[1]
    worker_stacks = made[1:]
    snapshots: list[Any] = []
    set_predictor = VectorPreferenceReward.set_predictor

    def counting(self: VectorPreferenceReward, predictor: Any) -> None:
        if self is not learner_env and self is not local[1].reward_env:
            snapshots.append(predictor)
        set_predictor(self, predictor)

    monkeypatch.setattr(VectorPreferenceReward, "set_predictor", counting)
    for agent, _ in (local, remote):
        agent.learn(ITERATION)
    assert len(snapshots) == 2  # one per worker, before the first rollout
    for agent, stack in (local, remote):  # a "refit": new weights, handed to the wrapper
        model = stack.reward_env.reward_model  # type: ignore[union-attr]
        with torch.no_grad():
            for p in model.parameters():  # type: ignore[union-attr]
                p.mul_(-3.0)
        stack.reward_env.set_predictor(model.predictor())  # type: ignore[union-attr]
        agent.learn(2 * ITERATION)
    assert len(snapshots) == 4  # and one each after the refit, not one per rollout
    transitions = (
        np.ones((2, 4), np.float32),
        np.eye(2, dtype=np.float32),
        np.zeros((2, 4), np.float32),
    )
    refit = learner_env.predictor.predict(*transitions).mean
    for stack in worker_stacks:  # the workers score with the refit model
        np.testing.assert_allclose(
            stack.reward_env.predictor.predict(*transitions).mean, refit, rtol=1e-5
        )  # type: ignore[union-attr]
    assert learner_env.shaping_steps == 3 * ITERATION
    assert_same_run(local, remote)


def test_save_and_load_start_new_workers_and_resume_exactly(tmp_path: Path) -> None:
    live, _ = build(2, norm_obs=True)
    live.learn(2 * ITERATION)
    live.save(tmp_path)
    stack = cartpole_stack(N_ENVS)
    rollouts = RayRollouts(
        cartpole_stack, 2, N_ENVS, recorder=stack.recorder, in_process=True, exact=True
    )
    resumed = PPOKL.load(tmp_path, stack.env, rollouts=rollouts)
    live.learn(2 * ITERATION)
    resumed.learn(2 * ITERATION)
    for p, q in zip(live.policy.parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(p, q)


# ---------------------------------------------------------------- the worker on its own


def worker(offset: int = 0, num_envs: int = 2, factory: Any = cartpole_stack) -> RolloutWorker:
    agent, _ = build(0)
    return RolloutWorker(factory, num_envs, offset, N_ENVS, agent.policy, None,
                         agent.observation_space, agent.action_space)  # fmt: skip


def request(agent: PPOKL, n_steps: int = 8) -> SampleRequest:
    return SampleRequest(
        n_steps, agent.policy.state_dict(), None, torch.get_rng_state(), None, None
    )


def test_worker_steps_its_sub_envs_with_global_seeds_and_records_episodes() -> None:
    second = worker(offset=2)
    first_obs = second.reset(seed=10)
    reference = gym.make_vec("CartPole-v1", N_ENVS, vectorization_mode="sync")
    assert np.array_equal(first_obs, reference.reset(seed=10)[0][2:])  # sub-envs 2 and 3
    agent, _ = build(0)
    rollout = second.sample(request(agent, n_steps=60))
    assert rollout.obs.shape == (60, 2, 4) and rollout.actions.shape == (60, 2)
    assert rollout.raw_obs is None and rollout.rewards.dtype == np.float32
    assert not rollout.true_reported.any()  # plain CartPole reports no true reward
    assert rollout.episodes, "a random CartPole policy ends episodes within 60 steps"
    done = rollout.terminated | rollout.truncated
    for finished in rollout.episodes:
        assert finished.stats.env_index in (2, 3)  # global indices
        assert len(finished.trajectory) == finished.stats.length
        assert done[finished.step, finished.stats.env_index - 2]
    # each episode ended before the last step costs a reset step, which nobody records
    assert rollout.recorded_steps == 120 - sum(e.step < 59 for e in rollout.episodes)


def test_worker_receives_the_learners_weights() -> None:
    w = worker()
    w.reset(seed=0)
    agent, _ = build(0)
    with torch.no_grad():
        agent.policy.policy_head.bias.add_(1.0)  # type: ignore[union-attr, operator]
    w.sample(request(agent))
    for name, value in agent.policy.state_dict().items():
        assert torch.equal(w.policy_state()[name], value)


def test_worker_refuses_what_it_cannot_run() -> None:
    agent, _ = build(0)
    with pytest.raises(RuntimeError, match="reset"):
        worker().sample(request(agent))

    def pendulum(num_envs: int) -> WorkerEnv:
        return WorkerEnv(gym.make_vec("Pendulum-v1", num_envs, vectorization_mode="sync"))

    with pytest.raises(ValueError, match="observation space"):
        worker(factory=pendulum)
    with pytest.raises(ValueError, match="sub-envs"):
        worker(factory=lambda n: cartpole_stack(n + 1))
    plain = worker(factory=lambda n: WorkerEnv(cartpole_stack(n).env))
    plain.reset(seed=0)
    with pytest.raises(ValueError, match="no learned-reward wrapper"):
        plain.sample(request(agent)._replace(shaping_steps=0))


def test_rollouts_must_split_the_envs_evenly_and_be_started() -> None:
    with pytest.raises(ValueError, match="--n-envs"):
        RayRollouts(cartpole_stack, 3, N_ENVS, in_process=True)
    with pytest.raises(RuntimeError, match="PPOKL"):
        RayRollouts(cartpole_stack, 2, N_ENVS, in_process=True).reset(0)
    env = cartpole_stack(2).env
    with pytest.raises(ValueError, match="num_envs"):
        PPOKL(env, PPOKLConfig(**TINY), rollouts=RayRollouts(cartpole_stack, 2, 4, in_process=True))


# ---------------------------------------------------------------- the recorder's hook


def episode(length: int, value: float) -> tuple[Trajectory, EpisodeStats]:
    obs = np.full((length + 1, 2), value)
    trajectory = Trajectory(obs, np.zeros((length, 1)), np.full(length, value), False)
    return trajectory, EpisodeStats(value * length, value, length)


def test_recorder_takes_episodes_stepped_elsewhere_within_capacity() -> None:
    recorder = TrajectoryRecorder(gym.make_vec("CartPole-v1", 2), capacity_steps=10)
    (t1, s1), (t2, s2), (t3, s3) = episode(4, 1.0), episode(5, 2.0), episode(3, 3.0)
    recorder.add_episodes([t1, t2], [s1, s2], steps=9)
    recorder.add_episodes([t3], [s3], steps=3)
    assert recorder.trajectories == [t2, t3]  # 12 steps > 10: the oldest went
    assert recorder.pop_episode_stats() == [s1, s2, s3] and recorder.total_steps == 12
    with pytest.raises(ValueError, match="one EpisodeStats per trajectory"):
        recorder.add_episodes([t1], [], steps=4)
    assert recorder.pop_trajectories() == [t2, t3]
    assert recorder.trajectories == []
    recorder.add_episodes([t1, t2], [s1, s2], steps=9)  # the capacity count restarted
    assert recorder.trajectories == [t1, t2]


# ---------------------------------------------------------------- the run settings


def test_rollout_workers_setting_names_what_it_cannot_combine_with(tmp_path: Path) -> None:
    from prefenv.app.spec import TrainSpec, load_spec, save_spec

    base = {"env": "prefenv/Reacher-v0", "rollout_workers": 2}
    for extra, message in (
        ({"agent": "sb3-ppo"}, "--agent ppo-kl"),
        ({"teacher": "human"}, "--teacher human"),
        ({"unsupervised": True}, "--unsupervised"),
        ({"rollout_workers": -1}, "--rollout-workers must be 0"),
    ):
        with pytest.raises(ValueError, match=message):
            TrainSpec(**{**base, **extra})
    spec = TrainSpec(**base)
    save_spec(spec, tmp_path)
    old = tmp_path / "run.json"  # a run.json written before the field existed
    old.write_text(old.read_text().replace('"rollout_workers": 2,', ""))
    assert "rollout_workers" not in old.read_text()
    assert load_spec(tmp_path).rollout_workers == 0


# ---------------------------------------------------------------- on Ray (marker: ray)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    # the actors unpickle this module's env factories by value: it is no importable package
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


@pytest.mark.ray
def test_ray_workers_match_the_local_run_and_get_each_update(local_ray: Any) -> None:
    local = build(0, norm_obs=True, kl_coef=0.1)
    one = build(1, in_process=False, norm_obs=True, kl_coef=0.1)
    for agent, _ in (local, one):
        agent.learn(2 * ITERATION)
    assert_same_run(local, one)
    one[0].rollouts.close()  # type: ignore[union-attr]
    local, two = build(0), build(2, in_process=False)
    for agent, _ in (local, two):
        agent.learn(ITERATION)
    updated = {k: v.clone() for k, v in two[0].policy.state_dict().items()}
    for agent, _ in (local, two):
        agent.learn(ITERATION)
    assert_same_run(local, two)
    for state in two[0].rollouts.policy_states():  # type: ignore[union-attr]
        assert all(torch.equal(state[k], v) for k, v in updated.items())
    two[0].rollouts.close()  # type: ignore[union-attr]


@pytest.mark.ray
def test_ray_workers_take_a_refit_and_send_the_episodes_back(local_ray: Any) -> None:
    local, remote = build(0, reward_stack), build(2, reward_stack, in_process=False)
    for agent, stack in (local, remote):
        agent.learn(ITERATION)
        model = stack.reward_env.reward_model  # type: ignore[union-attr]
        with torch.no_grad():
            for p in model.parameters():  # type: ignore[union-attr]
                p.mul_(-3.0)
        stack.reward_env.set_predictor(model.predictor())  # type: ignore[union-attr]
        agent.learn(ITERATION)
    assert_same_run(local, remote)  # the learned returns after the refit included
    remote[0].rollouts.close()  # type: ignore[union-attr]


REACHER = {"env": "prefenv/Reacher-v0", "n_envs": 2, "n_steps": 64, "steps": 2048,
           "initial_steps": 512, "rounds": 2, "queries": 20, "reward_epochs": 5,
           "ensemble": 2, "segment_length": 25, "eval_episodes": 1}  # fmt: skip


@pytest.mark.ray
def test_train_with_two_rollout_workers_finishes(local_ray: Any, tmp_path: Path) -> None:
    from prefenv.app import train

    summary = train(out=tmp_path / "run", progress=False, rollout_workers=2, **REACHER)
    assert summary["timesteps"] == 2048 and summary["episodes_finished"] > 0
    assert summary["labels_used"] == 20


@pytest.mark.ray
def test_train_with_one_rollout_worker_is_the_local_run(local_ray: Any, tmp_path: Path) -> None:
    from prefenv.app import train

    for workers in (0, 1):
        train(out=tmp_path / str(workers), progress=False, rollout_workers=workers, **REACHER)
    checkpoints = [
        torch.load(tmp_path / str(w) / "agent" / "ppo_kl.pt", weights_only=False) for w in (0, 1)
    ]
    for name, value in checkpoints[0]["policy"].items():
        assert torch.equal(value, checkpoints[1]["policy"][name])
    local, one = ((tmp_path / str(w) / "rounds.csv").read_text().splitlines() for w in (0, 1))
    assert _untimed(local) == _untimed(one)


def _untimed(csv_lines: list[str]) -> list[list[str]]:
    """rounds.csv without its wall-clock columns."""
    header = csv_lines[0].split(",")
    keep = [i for i, name in enumerate(header) if name not in ("seconds", "rm_seconds")]
    return [[row.split(",")[i] for i in keep] for row in csv_lines]
