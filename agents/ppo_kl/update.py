"""The PPO update: one loop over epochs and shuffled minibatches of a rollout batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from agents.policies import Obs
from agents.ppo_kl.buffer import RolloutBatch
from agents.ppo_kl.config import PPOKLConfig
from agents.ppo_kl.losses import (
    approx_kl_and_clip_fraction,
    entropy_loss,
    normalize_advantages,
    ppo_clip_loss,
    value_loss,
)
from agents.ppo_kl.optim import ClippedAdam


@dataclass(frozen=True)
class UpdateStats:
    """Means over the minibatches of one update (``nan`` when no minibatch ran).

    ``approx_kl`` is ``mean((r - 1) - log r)`` over the last epoch run, ``clip_fraction`` the share
    of ratios outside ``[1 - clip_coef, 1 + clip_coef]``; ``epochs`` counts completed epochs
    (fewer than ``n_epochs`` after a ``target_kl`` early stop).
    """

    policy_loss: float
    value_loss: float
    entropy: float
    approx_kl: float
    clip_fraction: float
    epochs: int


def _index(obs: Obs, idx: Tensor) -> Obs:
    if isinstance(obs, dict):
        return {k: v[idx] for k, v in obs.items()}
    return obs[idx]


def ppo_update(
    policy: nn.Module,
    optimizer: ClippedAdam,
    batch: RolloutBatch,
    cfg: PPOKLConfig,
    rng: np.random.Generator,
) -> UpdateStats:
    """``cfg.n_epochs`` passes of shuffled ``cfg.batch_size`` minibatch steps over ``batch``.

    Per minibatch: one ``policy.evaluate`` forward (actor and critic), advantages normalised
    within the minibatch, loss = clipped surrogate + vf_coef * value loss - ent_coef * entropy,
    global-norm gradient clipping and an Adam step. With ``target_kl`` set, the update stops
    (before stepping) at the first minibatch whose approximate KL exceeds 1.5 * target_kl (SB3).
    """
    n = batch.advantages.shape[0]
    device = batch.advantages.device
    # The per-sample scalars travel together: one gather per minibatch instead of four.
    scalars = torch.stack([batch.log_probs, batch.values, batch.advantages, batch.returns], 1)
    log_ratios: list[Tensor] = []  # detached; diagnostics are computed once at the end
    pg_losses: list[Tensor] = []
    v_losses: list[Tensor] = []
    entropies: list[Tensor] = []
    epochs, last_epoch_start = 0, 0
    for _ in range(cfg.n_epochs):
        perm = torch.from_numpy(rng.permutation(n)).to(device)
        last_epoch_start, stop = len(log_ratios), False
        for start in range(0, n, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            old_log_probs, old_values, advantages, returns = scalars[idx].unbind(1)
            log_probs, entropy, values = policy.evaluate(_index(batch.obs, idx), batch.actions[idx])
            log_ratio = log_probs - old_log_probs
            if cfg.target_kl is not None:
                approx_kl, _ = approx_kl_and_clip_fraction(log_ratio, cfg.clip_coef)
                if approx_kl.item() > 1.5 * cfg.target_kl:
                    stop = True
                    break
            if cfg.normalize_advantage:
                advantages = normalize_advantages(advantages)
            pg_loss = ppo_clip_loss(log_ratio, advantages, cfg.clip_coef)
            v_loss = value_loss(values, old_values, returns, cfg.clip_vloss)
            loss = pg_loss + cfg.vf_coef * v_loss
            if cfg.ent_coef > 0:
                loss = loss + cfg.ent_coef * entropy_loss(entropy)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()  # clips the global gradient norm first
            log_ratios.append(log_ratio.detach())
            pg_losses.append(pg_loss.detach())
            v_losses.append(v_loss.detach())
            entropies.append(entropy.detach().mean())
        if stop:
            break
        epochs += 1
    return _stats(
        log_ratios[last_epoch_start:],
        log_ratios,
        pg_losses,
        v_losses,
        entropies,
        epochs,
        cfg.clip_coef,
    )


def _stats(
    last_epoch: list[Tensor],
    log_ratios: list[Tensor],
    pg_losses: list[Tensor],
    v_losses: list[Tensor],
    entropies: list[Tensor],
    epochs: int,
    clip_coef: float,
) -> UpdateStats:
    def mean(xs: list[Tensor]) -> float:
        return torch.stack(xs).mean().item() if xs else float("nan")

    approx_kl = clip_fraction = float("nan")
    if log_ratios:
        clip_fraction = approx_kl_and_clip_fraction(torch.cat(log_ratios), clip_coef)[1].item()
    if last_epoch:
        approx_kl = approx_kl_and_clip_fraction(torch.cat(last_epoch), clip_coef)[0].item()
    return UpdateStats(
        mean(pg_losses), mean(v_losses), mean(entropies), approx_kl, clip_fraction, epochs
    )
