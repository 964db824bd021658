"""REED: the reward network learns the environment's dynamics from the agent's own transitions.

REED (Metcalf et al., "Rewards Encoding Environment Dynamics Improves Preference-based
Reinforcement Learning", Apple, arXiv 2402.17975; code github.com/apple/ml-reed) trains the
reward network's state-action encoder, before every preference refit, to predict the
representation of the next state from the current state and action, on every transition the
agent has collected; then the whole reward network is fit to the labels as usual. A handful of
labels cannot teach which features of a state matter; the dynamics, learnt from thousands of
unlabelled steps, give the encoder features the labels then only have to weigh.

The objective is SimSiam's (REED's ``self_future_consistency`` default): with ``e(s, a)`` the
reward MLP's last hidden layer, a projector ``g`` and a predictor ``h``,

    loss = - cos( h(g(e(s_t, a_t))), stopgrad(g(e(s_t+1, a_t+1))) )

averaged over a minibatch of transitions. The stop-gradient on the target is what keeps the
representation from collapsing to a constant.

Where this differs from REED's code, and why:

- **Target.** REED embeds the next state alone with a separate state encoder. prefenv's reward
  MLP reads the state and the action together in its first layer, so the target is the same
  encoder on the next step's state and action, ``e(s_t+1, a_t+1)`` (as SPR does). The last step
  of every recorded episode has no next action and is left out.
- **Heads.** REED keeps its projector and predictor between refits. Here they are built fresh
  for every refit from the member's torch seed and dropped after it, so a checkpoint is the
  reward network alone and a resumed run refits exactly as an unbroken one.
- **Steps.** REED runs one SGD epoch (lr 3e-4, batch 128) over the whole replay buffer before
  every refit, so its cost grows with the buffer. Here each refit runs a fixed number of Adam
  steps on transitions drawn uniformly from the query pool (``updates * batch_size``), which
  keeps the cost flat over a run.
- A reward that reads ``next_obs`` (the recommendation ids) already sees the next state, so the
  prediction would be trivial: REED is refused there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prefenv.records import Trajectory
from prefenv.reward_networks import MLPRewardModel

__all__ = [
    "SelfPredictive",
    "Transitions",
    "check_model",
    "self_predictive_loss",
    "train_self_predictive",
]


@dataclass(frozen=True)
class SelfPredictive:
    """REED's settings; sizes from its ``train_REED.yaml`` (projection 128, comparison 256)."""

    updates: int = 500
    """Adam steps per refit and ensemble member (REED: one epoch over the replay buffer)."""
    batch_size: int = 128
    """Transitions per step (REED: ``self_future_consistency_batch: 128``)."""
    lr: float = 3e-4
    """Adam learning rate (REED: ``self_future_consistency_lr: 0.0003``, with SGD)."""
    projection: int = 128
    """Width of the projected representation (``self_future_consistency_projection_size``)."""
    predictor_hidden: int = 256
    """Hidden width of the predictor (``self_future_consistency_comparison_hidden_size``)."""

    def __post_init__(self) -> None:
        for name in ("updates", "batch_size", "projection", "predictor_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"SelfPredictive: {name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"SelfPredictive: lr must be a finite number > 0, got {self.lr}")

    @property
    def transitions_per_refit(self) -> int:
        """How many transitions a refit trains on (each member in its own order)."""
        return self.updates * self.batch_size


@dataclass(frozen=True)
class Transitions:
    """``[N, D]`` arrays of consecutive steps ``(s_t, a_t)`` and ``(s_t+1, a_t+1)`` of one episode."""

    obs: np.ndarray
    acts: np.ndarray
    next_obs: np.ndarray
    next_acts: np.ndarray

    def __len__(self) -> int:
        return len(self.obs)

    @classmethod
    def sample(
        cls, trajectories: Sequence[Trajectory], count: int, rng: np.random.Generator
    ) -> Transitions | None:
        """``count`` transitions drawn uniformly (with replacement) over every step that has a
        next action; None when no trajectory has two steps."""
        usable = [t for t in trajectories if len(t) >= 2]
        if not usable:
            return None
        sizes = np.array([len(t) - 1 for t in usable])
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        flat = np.sort(rng.integers(0, sizes.sum(), size=count))
        episode = np.searchsorted(starts, flat, side="right") - 1
        step = flat - starts[episode]
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("o", "a", "no", "na")}
        for e in np.unique(episode):
            t, steps = usable[e], step[episode == e]
            parts["o"].append(t.obs[steps])
            parts["a"].append(t.acts[steps])
            parts["no"].append(t.obs[steps + 1])
            parts["na"].append(t.acts[steps + 1])
        obs, acts, next_obs, next_acts = (
            np.concatenate(parts[k]).astype(np.float32) for k in ("o", "a", "no", "na")
        )
        return cls(obs, acts, next_obs, next_acts)


class _Heads(nn.Module):
    """SimSiam's projector (linear + LayerNorm, as REED's ``mosaic`` one ends) and predictor."""

    def __init__(self, width: int, config: SelfPredictive) -> None:
        super().__init__()
        self.projector = nn.Sequential(
            nn.Linear(width, config.projection), nn.LayerNorm(config.projection)
        )
        self.predictor = nn.Sequential(
            nn.Linear(config.projection, config.predictor_hidden),
            nn.ReLU(),
            nn.Linear(config.predictor_hidden, config.projection),
        )


def _check_network(network: nn.Module) -> MLPRewardModel:
    if not isinstance(network, MLPRewardModel):
        raise ValueError(
            f"REED trains the hidden layers of prefenv's MLP reward network, not a "
            f"{type(network).__name__}: turn --reed off for this reward model"
        )
    if network.use_next_obs:
        raise ValueError(
            "REED predicts the next state's representation, but this reward network reads "
            "next_obs already (the env declares prefenv_reward_next_obs), so the prediction "
            "would be trivial: turn --reed off for this env"
        )
    if not network.hidden_sizes:
        raise ValueError("REED needs a reward network with at least one hidden layer")
    return network


def check_model(model: nn.Module) -> None:
    """Refuse, before any training, a reward model REED cannot train (every ensemble member).

    Raises:
        ValueError: a member is not an :class:`MLPRewardModel`, or reads ``next_obs``.
    """
    for network in getattr(model, "members", [model]):
        _check_network(network)


def self_predictive_loss(network: MLPRewardModel, heads: _Heads, batch: Sequence[Tensor]) -> Tensor:
    """Negative cosine between the predicted and the (stop-gradient) next representation."""
    obs, acts, next_obs, next_acts = batch
    online = heads.predictor(heads.projector(network.embed(obs, acts)))
    with torch.no_grad():
        target = heads.projector(network.embed(next_obs, next_acts))
    return -F.cosine_similarity(online, target, dim=-1).mean()


def train_self_predictive(
    network: nn.Module,
    transitions: Transitions,
    config: SelfPredictive,
    rng: np.random.Generator,
) -> float:
    """Train ``network``'s hidden layers (in place) on ``transitions``; the final loss.

    Runs ``config.updates`` Adam steps of ``config.batch_size`` transitions each (cycling through
    ``transitions`` in ``rng``'s order) with fresh heads built from torch's current generator.
    The output layer and the input normaliser are left alone. Returns the mean loss over the last
    tenth of the steps (in [-1, 1]; -1 is a perfect prediction).

    Raises:
        ValueError: ``network`` is not an :class:`MLPRewardModel`, or reads ``next_obs``.
    """
    network = _check_network(network)
    device = network.input_mean.device
    heads = _Heads(network.hidden_sizes[-1], config).to(device)
    params = [p for layer in network.layers[:-1] for p in layer.parameters()]
    optimizer = torch.optim.Adam([*params, *heads.parameters()], lr=config.lr)
    data = [
        torch.as_tensor(x, device=device)
        for x in (transitions.obs, transitions.acts, transitions.next_obs, transitions.next_acts)
    ]
    order = rng.permutation(len(transitions))
    losses = []
    was_training = network.training
    network.train()
    for step in range(config.updates):
        start = (step * config.batch_size) % len(order)
        index = np.take(order, np.arange(start, start + config.batch_size), mode="wrap")
        index_t = torch.as_tensor(index, device=device)
        loss = self_predictive_loss(network, heads, [x[index_t] for x in data])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    network.train(was_training)
    tail = max(1, config.updates // 10)
    return float(np.mean(losses[-tail:]))
