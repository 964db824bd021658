"""A data-driven simulator: item and user factors fit to a ``user,item,rating`` CSV.

:func:`read_ratings` parses the file (an optional ``user,item,rating`` header, then one rating per
line; ids are any strings, ratings finite numbers). :func:`fit_factors` fits
``rating ~ mu + b_i + p_u . q_i`` by alternating least squares (numpy, seeded). :func:`world_from_ratings`
turns the fit into what :class:`~envs.recommendation.simulator.UserBatchSimulator` accepts:

- **topics** (``K = 2F``): item ``j``'s factor ``q_j`` split into its positive and negative parts,
  ``[max(q_j, 0), max(-q_j, 0)] / ||q_j||_1``, so the simulator's affinity
  ``interest . topic_j`` with the user interest ``[p_u, -p_u] / s`` equals ``p_u . q_j / (s ||q_j||_1)``:
  the fitted preference, sign included.
- **users**: a pool of interest vectors, one per rater, scaled into ``[-1, 1]``; each simulated
  session starts from a pool member (drawn from the session's own generator).
- **quality**: the item bias ``b_i`` rescaled to the simulator's ``[-3, 3]`` range (well-rated items
  are "nutritious"); **popularity**: the item's share of ratings (a logistic of its z-scored log
  count); **length**: drawn uniformly, as ratings carry no durations.

Usage::

    world = world_from_ratings("ratings.csv", n_factors=8, seed=0)
    env = RecommendationEnv(**world.env_kwargs(), slate_size=3)
    sim = UserBatchSimulator.from_ratings("ratings.csv", n_users=1024)
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from envs.recommendation.catalog import Catalog, SimConfig

__all__ = [
    "FactorModel",
    "Ratings",
    "RatingsWorld",
    "fit_factors",
    "read_ratings",
    "world_from_ratings",
]


@dataclass(frozen=True)
class Ratings:
    """Parsed ratings (R rows) with dense indices.

    Attributes:
        users: ``[R]`` int64 user index into ``user_ids``.
        items: ``[R]`` int64 item index into ``item_ids``.
        values: ``[R]`` float64 ratings.
        user_ids: original user ids in index order.
        item_ids: original item ids in index order.
    """

    users: np.ndarray
    items: np.ndarray
    values: np.ndarray
    user_ids: tuple[str, ...]
    item_ids: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def subset(self, rows: np.ndarray) -> Ratings:
        """The ratings at ``rows`` (same id tables)."""
        return Ratings(
            self.users[rows], self.items[rows], self.values[rows], self.user_ids, self.item_ids
        )


def read_ratings(path: str | os.PathLike[str]) -> Ratings:
    """Read a ``user,item,rating`` CSV (header optional, blank lines skipped).

    Raises:
        ValueError: naming the file, the line and the fix, for a line without exactly three
            fields, an empty id, a rating that is not a finite number, or a file with no ratings.
    """
    user_index: dict[str, int] = {}
    item_index: dict[str, int] = {}
    users, items, values = [], [], []
    with open(path, newline="") as handle:
        for line_no, row in enumerate(csv.reader(handle), start=1):
            if not row or all(not cell.strip() for cell in row):
                continue
            cells = [cell.strip() for cell in row]
            if line_no == 1 and [c.lower() for c in cells] == ["user", "item", "rating"]:
                continue
            where = f"{path} line {line_no}"
            if len(cells) != 3:
                raise ValueError(
                    f"{where}: expected 3 comma-separated fields user,item,rating, got "
                    f"{len(cells)} ({','.join(cells)!r}): fix or delete the line"
                )
            user, item, rating = cells
            if not user or not item:
                raise ValueError(f"{where}: empty user or item id: every row needs both ids")
            try:
                value = float(rating)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise ValueError(
                    f"{where}: rating {rating!r} is not a finite number: ratings must be numeric "
                    "(e.g. 4 or 3.5); a header, if any, must be exactly 'user,item,rating' on line 1"
                )
            users.append(user_index.setdefault(user, len(user_index)))
            items.append(item_index.setdefault(item, len(item_index)))
            values.append(value)
    if not values:
        raise ValueError(
            f"{path} holds no ratings: expected lines 'user,item,rating' such as 'u1,i7,4'"
        )
    return Ratings(
        np.asarray(users, dtype=np.int64),
        np.asarray(items, dtype=np.int64),
        np.asarray(values, dtype=np.float64),
        tuple(user_index),
        tuple(item_index),
    )


@dataclass(frozen=True)
class FactorModel:
    """``rating(u, i) ~ global_mean + item_bias[i] + user_factors[u] . item_factors[i]``.

    Attributes:
        user_factors: ``[U, F]``.
        item_factors: ``[I, F]``.
        item_bias: ``[I]``.
        global_mean: mean training rating.
        item_counts: ``[I]`` number of training ratings per item.
    """

    user_factors: np.ndarray
    item_factors: np.ndarray
    item_bias: np.ndarray
    global_mean: float
    item_counts: np.ndarray

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``[R]`` predicted ratings of (user index, item index) pairs."""
        return (
            self.global_mean
            + self.item_bias[items]
            + (self.user_factors[users] * self.item_factors[items]).sum(axis=1)
        )

    def rmse(self, ratings: Ratings) -> float:
        """Root mean squared error on ``ratings`` (indices from the same id tables)."""
        err = self.predict(ratings.users, ratings.items) - ratings.values
        return float(np.sqrt(np.mean(err**2)))


def _solve_rows(
    index: np.ndarray, other: np.ndarray, target: np.ndarray, n_rows: int, reg: float
) -> np.ndarray:
    """Ridge solution per row: ``x_r = (O_r^T O_r + reg I)^-1 O_r^T t_r``."""
    dim = other.shape[1]
    gram = np.zeros((n_rows, dim, dim))
    rhs = np.zeros((n_rows, dim))
    np.add.at(gram, index, other[:, :, None] * other[:, None, :])
    np.add.at(rhs, index, other * target[:, None])
    gram += reg * np.eye(dim)
    return np.linalg.solve(gram, rhs[:, :, None])[:, :, 0]


def fit_factors(
    ratings: Ratings,
    n_factors: int = 8,
    reg: float = 0.1,
    iterations: int = 15,
    seed: int | np.random.SeedSequence = 0,
) -> FactorModel:
    """Alternating least squares with item biases (ridge ``reg`` on every parameter).

    Args:
        ratings: training ratings.
        n_factors: F, latent dimensions.
        reg: L2 regularisation per observed rating's row (factors and biases).
        iterations: ALS sweeps (each solves all users, then all items).
        seed: seeds the initial item factors.
    """
    if n_factors < 1 or iterations < 1 or reg < 0:
        raise ValueError(
            f"need n_factors >= 1, iterations >= 1 and reg >= 0, got {n_factors}, {iterations}, {reg}"
        )
    rng = np.random.default_rng(seed)
    n_users, n_items = len(ratings.user_ids), len(ratings.item_ids)
    mu = float(ratings.values.mean())
    residual = ratings.values - mu
    item_aug = np.concatenate(  # [q_i, b_i]
        [0.1 * rng.standard_normal((n_items, n_factors)), np.zeros((n_items, 1))], axis=1
    )
    user_factors = np.zeros((n_users, n_factors))
    for _ in range(iterations):
        bias = item_aug[ratings.items, -1]
        user_factors = _solve_rows(
            ratings.users, item_aug[ratings.items, :-1], residual - bias, n_users, reg
        )
        user_aug = np.concatenate([user_factors, np.ones((n_users, 1))], axis=1)
        item_aug = _solve_rows(ratings.items, user_aug[ratings.users], residual, n_items, reg)
    counts = np.bincount(ratings.items, minlength=n_items)
    return FactorModel(user_factors, item_aug[:, :-1], item_aug[:, -1], mu, counts)


@dataclass(frozen=True)
class RatingsWorld:
    """A catalog, a user-interest pool and the matching config, built from fitted factors."""

    catalog: Catalog
    user_pool: np.ndarray
    """``[U, K]`` initial interests in ``[-1, 1]``, one per rater."""
    config: SimConfig
    model: FactorModel
    ratings: Ratings

    def env_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``RecommendationEnv`` / ``RecommendationVectorEnv`` / gym.make."""
        return {
            "n_items": self.catalog.n_items,
            "sim_config": self.config,
            "catalog": self.catalog,
            "user_pool": self.user_pool,
        }


def _signed_split(x: np.ndarray) -> np.ndarray:
    return np.concatenate([np.maximum(x, 0.0), np.maximum(-x, 0.0)], axis=1)


def world_from_ratings(
    source: str | os.PathLike[str] | Ratings,
    n_factors: int = 8,
    config: SimConfig | None = None,
    reg: float = 0.1,
    iterations: int = 15,
    seed: int = 0,
) -> RatingsWorld:
    """Fit factors to a ratings CSV (or parsed :class:`Ratings`) and build the simulator inputs.

    Args:
        source: path of a ``user,item,rating`` CSV, or already parsed ratings.
        n_factors: F; the simulator gets ``K = 2F`` topics.
        config: the rest of the user model (its ``n_items``/``n_topics`` are replaced; its
            ``n_candidates`` must not exceed the number of rated items).
        reg: L2 regularisation of the fit (see :func:`fit_factors`).
        iterations: alternating least-squares sweeps (see :func:`fit_factors`).
        seed: spawns two independent streams: the fit's (see :func:`fit_factors`) and the
            item lengths'.
    """
    fit_seed, length_seed = np.random.SeedSequence(seed).spawn(2)
    ratings = source if isinstance(source, Ratings) else read_ratings(source)
    model = fit_factors(ratings, n_factors, reg, iterations, fit_seed)
    n_items = len(ratings.item_ids)
    base = config if config is not None else SimConfig()
    if base.n_candidates > n_items:
        raise ValueError(
            f"the ratings rate {n_items} items, fewer than n_candidates={base.n_candidates}: "
            "use a larger ratings file or a smaller n_candidates"
        )
    cfg = replace(base, n_items=n_items, n_topics=2 * n_factors)
    rng = np.random.default_rng(length_seed)
    split = _signed_split(model.item_factors)
    norm = split.sum(axis=1, keepdims=True)
    topics = np.where(norm > 0, split / np.where(norm > 0, norm, 1.0), 1.0 / split.shape[1])
    bias = model.item_bias
    spread = float(np.abs(bias).max())
    quality = 3.0 * bias / spread if spread > 0 else np.zeros(n_items)
    log_counts = np.log1p(model.item_counts.astype(np.float64))
    z = (log_counts - log_counts.mean()) / (log_counts.std() + 1e-9)
    catalog = Catalog(
        topics=topics,
        cluster=topics.argmax(axis=1),
        quality=quality,
        length=rng.uniform(*cfg.length_range, size=n_items),
        appeal=cfg.clickbait_appeal / (1.0 + np.exp(quality)),
        popularity=1.0 / (1.0 + np.exp(-z)),
    )
    interest = np.concatenate([model.user_factors, -model.user_factors], axis=1)
    scale = float(np.abs(interest).max())
    pool = interest / scale if scale > 0 else interest
    return RatingsWorld(catalog, pool, cfg, model, ratings)
