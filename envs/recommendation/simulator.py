"""A vectorised user simulator in the style of RecSim's interest-evolution model.

Everything here operates on a *batch* of users at once with numpy, so thousands of simulated
sessions advance in one call (see ``benchmarks/bench_recsim_speed.py``). The Gymnasium envs in
:mod:`envs.recommendation.env` are thin layers over :class:`UserBatchSimulator`.

The model, per user ``u`` and step ``t`` (K topics, C candidates, a slate of S candidate slots):

- **Catalog** (shared, fixed by ``catalog_seed``): item ``j`` has a topic vector ``topic_j`` on the
  simplex (mostly one cluster), a quality ``q_j ~ N(mu_cluster, quality_std)`` with cluster means
  spread over ``[-3, 0]`` for "trashy" clusters and ``[0, 3]`` for "nutritious" ones (RecSim),
  a length ``L_j`` (minutes), a clickbait appeal ``a_j = clickbait_appeal * sigmoid(-q_j)``
  (low quality looks more clickable) and an observable popularity, a noisy view of the appeal.
- **User state**: latent interests ``i_u in [-1, 1]^K`` (hidden), a consumption profile
  ``p_u`` (decaying sum of consumed topic vectors; observable, it is the user's history), a
  remaining session time budget ``b_u`` (hidden) and the step count.
- **Affinity** of user ``u`` to item ``j``: ``f_uj = (i_u - boredom_weight * p_u) . topic_j``
  (boredom: recently consumed topics are less attractive).
- **Choice** (multinomial logit with a no-click option): slot ``k`` holding item ``j`` has logit
  ``affinity_scale * f_uj + a_j + k * log(position_bias)``; the no-click option has logit
  ``no_click_logit``; ``P = softmax([logits, no_click_logit])``
  (:func:`~envs.recommendation.choice.choice_probabilities`).
- **Consumption** of the clicked item ``j``: engagement (watch time)
  ``L_j * sigmoid(affinity_scale * f_uj + a_j)``; satisfaction ``q_j + f_uj``; diversity
  ``1 - cos(topic_j, p_u)`` (1 with an empty history). No click: all three are 0.
- **Dynamics**: the clicked item pulls interests toward it, ``i_u += drift_rate * (topic_j - i_u)``;
  the profile decays, ``p_u = profile_decay * p_u + topic_j`` (no click: only the decay); the
  budget pays the watch time and is refunded in proportion to quality (RecSim),
  ``b_u -= watch * (1 - refund_rate * q_j)``, or ``no_click_cost`` without a click.
- **End**: the user leaves when ``b_u <= 0`` (``terminated``); otherwise the session is cut after
  ``horizon`` steps (``truncated``).

Randomness: each user owns an ``np.random.Generator``. At a user's reset it draws, in one call,
the initial interests ``U(-1, 1)^K``, the whole session's choice uniforms ``[horizon]`` and
candidate sets ``[horizon, C]`` (:func:`~envs.recommendation.choice.distinct_items`); steps then
only index those tables. So a user's session depends on its own generator alone, not on the
batch it runs in: user ``i`` of a batch seeded ``s + i`` (Gymnasium's vector-env convention)
replays a batch of one seeded ``s + i`` exactly.

Modules: the parameters and the catalog are in :mod:`envs.recommendation.catalog`, the choice
model and candidate draws in :mod:`envs.recommendation.choice`; this module holds the
observation layout and the batched simulator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from envs.recommendation.catalog import Catalog, SimConfig, sigmoid
from envs.recommendation.choice import choice_probabilities, distinct_items, sample_choices
from envs.recommendation.ratings import world_from_ratings

__all__ = ["ObsLayout", "StepOutcome", "UserBatchSimulator"]


# ----------------------------------------------------------------------------- observations


@dataclass(frozen=True)
class ObsLayout:
    """Layout of the flat observation ``[D]`` (all entries in [0, 1]).

    ``D = K + 3 + C * (K + 2)``: the user part is the scaled consumption profile
    ``(1 - profile_decay) * p_u`` (K), the session progress ``t / horizon``, whether the last step
    was a click, and the last watch time over the longest item length; then for each of the C
    candidates its topic vector (K), length over the longest length, and popularity.
    """

    n_topics: int
    n_candidates: int

    @property
    def user_dim(self) -> int:
        return self.n_topics + 3

    @property
    def item_dim(self) -> int:
        return self.n_topics + 2

    @property
    def dim(self) -> int:
        return self.user_dim + self.n_candidates * self.item_dim

    @classmethod
    def infer(cls, obs_dim: int, n_candidates: int) -> ObsLayout:
        """The layout with ``n_candidates`` candidates whose observations have ``obs_dim`` entries."""
        k, rem = divmod(obs_dim - 3 - 2 * n_candidates, n_candidates + 1)
        if rem or k < 1:
            raise ValueError(
                f"an observation of size {obs_dim} does not fit the recommendation layout "
                f"K + 3 + C * (K + 2) with C = {n_candidates} candidates: is this a "
                "prefenv/RecSlate or RecSingle observation?"
            )
        return cls(k, n_candidates)

    def split(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``[N, D]`` -> profile ``[N, K]``, candidate topics ``[N, C, K]``, extras ``[N, C, 2]``.

        Extras are (length / max length, popularity) per candidate. Works for numpy arrays and
        torch tensors alike.
        """
        k = self.n_topics
        profile = obs[:, :k]
        items = obs[:, self.user_dim :].reshape(obs.shape[0], self.n_candidates, self.item_dim)
        return profile, items[:, :, :k], items[:, :, k:]


# ----------------------------------------------------------------------------- simulator


class StepOutcome(NamedTuple):
    """What one batched step did, per stepped user (arrays ``[n]``)."""

    clicked_slot: np.ndarray
    """int64 slot of the clicked item, -1 for no click."""
    item: np.ndarray
    """int64 catalog id of the clicked item, -1 for no click."""
    engagement: np.ndarray
    """Watch time in minutes (0 without a click)."""
    satisfaction: np.ndarray
    """Quality plus affinity of the clicked item (0 without a click)."""
    diversity: np.ndarray
    """1 - cosine(clicked topic, profile before the step) (0 without a click)."""
    terminated: np.ndarray
    """bool: the user left (budget exhausted)."""
    truncated: np.ndarray
    """bool: the horizon was reached and the user had not left."""


class UserBatchSimulator:
    """B simulated users stepping in lockstep over one shared catalog (see the module docstring).

    Args:
        n_users: batch size B.
        config: catalog and user-model parameters.
        catalog: a ready catalog (its size and topic count must match ``config``); default one
            generated from ``catalog_seed``.
        catalog_seed: seed of the generated catalog (the same for every env, so sub-envs share it).
        user_pool: optional ``[M, K]`` initial interests in ``[-1, 1]`` (e.g. fitted to ratings,
            :mod:`envs.recommendation.ratings`); a reset user starts from pool row
            ``floor(u * M)`` for its first uniform ``u`` instead of ``U(-1, 1)^K``.

    Usage: set ``rngs`` (one ``np.random.Generator`` per user), call :meth:`reset_users`, then
    alternate :meth:`observe` and :meth:`step`.
    """

    def __init__(
        self,
        n_users: int,
        config: SimConfig | None = None,
        catalog: Catalog | None = None,
        catalog_seed: int = 0,
        user_pool: np.ndarray | None = None,
    ) -> None:
        if n_users < 1:
            raise ValueError(f"n_users must be >= 1, got {n_users}")
        self.config = cfg = config if config is not None else SimConfig()
        if catalog is None:
            catalog = Catalog.generate(cfg, np.random.default_rng(catalog_seed))
        if (catalog.n_items, catalog.n_topics) != (cfg.n_items, cfg.n_topics):
            raise ValueError(
                f"catalog has {catalog.n_items} items x {catalog.n_topics} topics but the config "
                f"says {cfg.n_items} x {cfg.n_topics}: build the config from the catalog's sizes"
            )
        self.catalog = catalog
        if user_pool is not None:
            user_pool = np.array(user_pool, dtype=np.float64)
            if user_pool.ndim != 2 or user_pool.shape[0] < 1 or user_pool.shape[1] != cfg.n_topics:
                raise ValueError(
                    f"user_pool must have shape (M, {cfg.n_topics}) (one interest vector per "
                    f"pool user, K = n_topics), got {user_pool.shape}"
                )
            if not np.all(np.abs(user_pool) <= 1.0):
                raise ValueError("user_pool interests must lie in [-1, 1]: rescale the pool")
            user_pool.setflags(write=False)
        self.user_pool = user_pool
        self.n_users = n_users
        self.layout = ObsLayout(cfg.n_topics, cfg.n_candidates)
        self.rngs: list[np.random.Generator | None] = [None] * n_users
        k, c, h = cfg.n_topics, cfg.n_candidates, cfg.horizon
        self.max_length = float(cfg.length_range[1])
        # Per-item candidate features, precomputed once: [N, K + 2].
        self._item_features = np.concatenate(
            [
                catalog.topics,
                (catalog.length / self.max_length)[:, None],
                catalog.popularity[:, None],
            ],
            axis=1,
        ).astype(np.float32)
        self.interest = np.zeros((n_users, k))
        self.profile = np.zeros((n_users, k))
        self.budget = np.zeros(n_users)
        self.t = np.zeros(n_users, dtype=np.int64)
        self.last_clicked = np.zeros(n_users)
        self.last_watch = np.zeros(n_users)
        self.candidate_table = np.zeros((n_users, h, c), dtype=np.int64)
        self._all_users = np.arange(n_users)
        self.choice_uniforms = np.zeros((n_users, h))

    @classmethod
    def from_ratings(
        cls,
        path: str,
        n_users: int,
        n_factors: int = 8,
        config: SimConfig | None = None,
        seed: int = 0,
    ) -> UserBatchSimulator:
        """A simulator whose catalog and users are fit to a ``user,item,rating`` CSV.

        See :func:`envs.recommendation.ratings.world_from_ratings` (``seed`` seeds the fit).
        """
        world = world_from_ratings(path, n_factors=n_factors, config=config, seed=seed)
        return cls(n_users, world.config, world.catalog, user_pool=world.user_pool)

    # ------------------------------------------------------------------ resets

    def reset_users(self, users: Sequence[int] | np.ndarray) -> None:
        """Start a new session for each listed user, drawing from that user's generator.

        Each user makes exactly one generator call: ``K + horizon * (C + 1)`` uniforms giving the
        initial interests, the session's choice uniforms and its candidate sets.
        """
        cfg = self.config
        users = np.asarray(users, dtype=np.int64).reshape(-1)
        if users.size == 0:
            return
        k, h, c = cfg.n_topics, cfg.horizon, cfg.n_candidates
        draws = np.empty((users.size, k + h * (c + 1)))
        for row, u in enumerate(users.tolist()):
            rng = self.rngs[u]
            if rng is None:
                raise RuntimeError(
                    f"user {u} has no random generator: set simulator.rngs[{u}] before resetting"
                )
            rng.random(out=draws[row])
        if self.user_pool is None:
            self.interest[users] = 2.0 * draws[:, :k] - 1.0
        else:
            m = self.user_pool.shape[0]
            self.interest[users] = self.user_pool[np.minimum((draws[:, 0] * m).astype(int), m - 1)]
        self.choice_uniforms[users] = draws[:, k : k + h]
        self.candidate_table[users] = distinct_items(
            draws[:, k + h :].reshape(users.size, h, c), cfg.n_items
        )
        self.profile[users] = 0.0
        self.budget[users] = cfg.time_budget
        self.t[users] = 0
        self.last_clicked[users] = 0.0
        self.last_watch[users] = 0.0

    # ------------------------------------------------------------------ observations

    def _rows(self, users: np.ndarray | None) -> np.ndarray:
        return self._all_users if users is None else np.asarray(users, dtype=np.int64)

    def candidates(self, users: np.ndarray | None = None) -> np.ndarray:
        """``[n, C]`` catalog ids of the current candidates of ``users`` (default all)."""
        rows = self._rows(users)
        t = np.minimum(self.t[rows], self.config.horizon - 1)
        return self.candidate_table[rows, t]

    def observe(self, users: np.ndarray | None = None) -> np.ndarray:
        """``[n, D]`` float32 observations of ``users`` (layout: :class:`ObsLayout`)."""
        cfg = self.config
        rows = self._rows(users)
        n, k = rows.shape[0], cfg.n_topics
        out = np.empty((n, self.layout.dim), dtype=np.float32)
        out[:, :k] = (1.0 - cfg.profile_decay) * self.profile[rows]
        out[:, k] = self.t[rows] / cfg.horizon
        out[:, k + 1] = self.last_clicked[rows]
        out[:, k + 2] = self.last_watch[rows] / self.max_length
        out[:, self.layout.user_dim :] = self._item_features[self.candidates(rows)].reshape(n, -1)
        return out

    # ------------------------------------------------------------------ the step

    def slate_logits(self, slates: np.ndarray, users: np.ndarray | None = None) -> np.ndarray:
        """``[n, S]`` click logits without position bias; empty slots (``-1``) get ``-inf``."""
        rows = self._rows(users)
        return self._slate_logits(rows, self.candidates(rows), np.asarray(slates, dtype=np.int64))

    def _slate_logits(self, rows: np.ndarray, cand: np.ndarray, slates: np.ndarray) -> np.ndarray:
        cfg = self.config
        valid = slates >= 0
        ids = np.take_along_axis(cand, np.where(valid, slates, 0), axis=1)  # [n, S]
        effective = self.interest[rows] - cfg.boredom_weight * self.profile[rows]  # [n, K]
        affinity = (self.catalog.topics[ids] * effective[:, None, :]).sum(axis=-1)
        logits = cfg.affinity_scale * affinity + self.catalog.appeal[ids]
        return np.where(valid, logits, -np.inf)

    def step(self, slates: np.ndarray, users: np.ndarray | None = None) -> StepOutcome:
        """Show each user a slate and advance their sessions by one step.

        Args:
            slates: ``[n, S]`` int candidate *slots* (0..C-1, distinct per row) or -1 for an
                empty slot; rows follow ``users``. Validate actions first
                (:func:`envs.recommendation.task.check_slates`); this method trusts its input.
            users: the users to step (default all B, in order).

        Returns:
            A :class:`StepOutcome` of arrays ``[n]``.
        """
        cfg, cat = self.config, self.catalog
        rows = self._rows(users)
        slates = np.asarray(slates, dtype=np.int64)
        n = slates.shape[0]
        arange = np.arange(n)
        t = self.t[rows]
        cand = self.candidate_table[rows, np.minimum(t, cfg.horizon - 1)]
        logits = self._slate_logits(rows, cand, slates)
        probs = choice_probabilities(logits, cfg.no_click_logit, cfg.position_bias)
        choice = sample_choices(probs, self.choice_uniforms[rows, np.minimum(t, cfg.horizon - 1)])
        clicked = choice < slates.shape[1]
        slot = np.where(clicked, choice, 0)
        item = np.where(clicked, cand[arange, slates[arange, slot]], -1)
        ids = np.maximum(item, 0)
        topic = cat.topics[ids]  # [n, K]
        interest, profile = self.interest[rows], self.profile[rows]
        affinity = ((interest - cfg.boredom_weight * profile) * topic).sum(axis=-1)
        watch = np.where(
            clicked,
            cat.length[ids] * sigmoid(cfg.affinity_scale * affinity + cat.appeal[ids]),
            0.0,
        )
        satisfaction = np.where(clicked, cat.quality[ids] + affinity, 0.0)
        norm = np.sqrt((topic * topic).sum(-1) * (profile * profile).sum(-1))
        cosine = (topic * profile).sum(-1) / np.where(norm > 0, norm, 1.0)
        diversity = np.where(clicked, 1.0 - cosine, 0.0)
        # Dynamics.
        click_col = clicked[:, None]
        self.interest[rows] = np.where(
            click_col, interest + cfg.drift_rate * (topic - interest), interest
        )
        self.profile[rows] = cfg.profile_decay * profile + np.where(click_col, topic, 0.0)
        cost = np.where(
            clicked, watch * (1.0 - cfg.refund_rate * cat.quality[ids]), cfg.no_click_cost
        )
        budget = self.budget[rows] - cost
        self.budget[rows] = budget
        self.t[rows] = t + 1
        self.last_clicked[rows] = clicked
        self.last_watch[rows] = watch
        terminated = budget <= 0.0
        truncated = (t + 1 >= cfg.horizon) & ~terminated
        return StepOutcome(
            np.where(clicked, choice, -1),
            item,
            watch,
            satisfaction,
            diversity,
            terminated,
            truncated,
        )
