"""A run's step budget, worked out before it starts: what will really run, and what cannot work.

``prefenv train --steps N`` is split into the initial policy's steps and one training chunk per
round (:func:`prefenv.loop.step_schedule`). An agent that trains in whole rollouts
(:class:`prefenv.agent.RolloutSized`: PPO-KL, SB3 PPO / A2C) gets chunks of whole rollouts, so
the run takes at most ``N`` steps (fewer by under a rollout per round; settings that leave a round
without one are refused by :class:`~prefenv.app.spec.TrainSpec`). What remains to say before the
run starts, :func:`budget_warnings`: a chunk shorter than an episode finishes no episode, so its
round has no return to report; and a run far below ``N`` (an initial phase rounded up).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import gymnasium as gym

import prefenv
from prefenv.app.spec import TrainSpec
from prefenv.loop import step_schedule

__all__ = ["BudgetPlan", "BudgetWarning", "budget_warnings", "plan_budget", "warn_budget"]

TOLERANCE = 0.10
"""A run more than 10% short of ``--steps`` gets a warning."""


class BudgetWarning(UserWarning):
    """Rounds will finish no episode, or the run will take far fewer steps than ``--steps``."""


@dataclass(frozen=True)
class BudgetPlan:
    """The env steps each ``learn`` call of a run asks for.

    Attributes:
        steps: the initial policy's steps, then each round's chunk, in whole ``unit`` multiples.
        unit: the rollout a call comes in (1 when the agent stops at any step).
    """

    steps: tuple[int, ...]
    unit: int

    @property
    def total(self) -> int:
        """Env steps the run will take (at most ``--steps``)."""
        return sum(self.steps)


def plan_budget(spec: TrainSpec) -> BudgetPlan:
    """The steps ``spec``'s run will take, call by call."""
    config = spec.loop_config()
    return BudgetPlan(tuple(step_schedule(config)), config.step_unit)


def budget_warnings(spec: TrainSpec) -> list[str]:
    """What will not go as the settings read: rounds too short for an episode, a short run.

    Returns:
        One message per problem, each naming the flags that fix it; empty when all is well.
    """
    plan = plan_budget(spec)
    messages = []
    if plan.total < spec.steps * (1 - TOLERANCE):
        messages.append(
            f"--steps {spec.steps:,} will run {plan.total:,} steps: {spec.agent} trains in whole "
            f"rollouts of {plan.unit:,} steps (--n-envs {spec.n_envs} x rollout length) and the "
            f"initial phase runs {plan.steps[0]:,}. Raise --steps, or lower --n-steps"
        )
    episode = gym.spec(prefenv.resolve_env_id(spec.env, prefenv.register_task_envs))
    horizon = episode.max_episode_steps
    if horizon is None:  # the env ends its own episodes: nothing to check statically
        return messages
    if plan.steps[0] // spec.n_envs < horizon:
        messages.append(
            f"--initial-steps {spec.initial_steps:,} gives each of --n-envs {spec.n_envs} "
            f"sub-envs {plan.steps[0] // spec.n_envs:,} steps, less than one {horizon}-step "
            "episode: unless episodes end early, the first queries find no finished episode and "
            f"the run stops. Raise --initial-steps to {horizon * spec.n_envs} or lower --n-envs"
        )
    shortest = min(plan.steps[1:]) // spec.n_envs
    if shortest < horizon:
        needed = plan.steps[0] + spec.resolved_rounds() * horizon * spec.n_envs
        messages.append(
            f"each round trains about {shortest:,} steps per sub-env, less than one "
            f"{horizon}-step episode: unless episodes end early, rounds finish no episode and "
            f"report no return. Raise --steps to at least {needed}, or lower --rounds or "
            "--n-envs"
        )
    return messages


def warn_budget(spec: TrainSpec) -> None:
    """Issue each of :func:`budget_warnings` as a :class:`BudgetWarning`."""
    for message in budget_warnings(spec):
        warnings.warn(message, BudgetWarning, stacklevel=2)
