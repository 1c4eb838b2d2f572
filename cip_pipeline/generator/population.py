"""Users: a latent purchase propensity and an activity level per user, and who is active in
which month. The propensity persists across months, so this month's behaviour (carts,
purchases) predicts next month's purchases, noisily."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cip_pipeline.generator import calibration as cal

RETENTION = cal.USERS_BOTH_MONTHS / cal.OCTOBER.users  # 46.4% of a month's users return
ACTIVITY_SIGMA = 0.9


@dataclass
class Population:
    user_id: np.ndarray  # int32, grows with registration order
    propensity: np.ndarray  # float32 latent z ~ N(0, 1)
    activity: np.ndarray  # float32 log-normal, mean 1
    favourite: np.ndarray  # int32 category index the user mostly browses
    active: list[np.ndarray]  # per month: sorted indices of the users active in it


def _new_user_ids(rng: np.random.Generator, n: int, after: int) -> np.ndarray:
    if after == 0:
        # Month-0 users registered over years, most of them recently (ids 1e8 .. 5.66e8).
        raw = 100_000_000 + np.sort(rng.random(n) ** 0.25) * 466_000_000
        ids = np.floor(raw).astype(np.int64)
        return np.maximum.accumulate(ids - np.arange(n)) + np.arange(n)
    return after + np.cumsum(rng.integers(1, 6, n))


def build_population(
    rng: np.random.Generator, users_per_month: list[int], category_weight: np.ndarray
) -> Population:
    ids: list[np.ndarray] = []
    active: list[np.ndarray] = []
    total = 0
    last_id = 0
    z_parts: list[np.ndarray] = []
    a_parts: list[np.ndarray] = []
    for m, n_users in enumerate(users_per_month):
        if m == 0:
            retained = np.empty(0, dtype=np.int64)
        else:
            prev = active[m - 1]
            n_ret = min(n_users, round(prev.size * RETENTION))
            z = np.concatenate(z_parts)[prev]
            a = np.concatenate(a_parts)[prev]
            # Engaged users come back more often (Gumbel top-k: sampling without replacement).
            key = 0.5 * z + 0.8 * np.log(a) + rng.gumbel(size=prev.size)
            retained = (
                np.sort(prev[np.argpartition(-key, n_ret - 1)[:n_ret]]) if n_ret else prev[:0]
            )
        n_new = n_users - retained.size
        new_ids = _new_user_ids(rng, n_new, last_id)
        if n_new:
            last_id = int(new_ids[-1])
        ids.append(new_ids)
        z_parts.append(rng.standard_normal(n_new).astype(np.float32))
        a_parts.append(
            rng.lognormal(-(ACTIVITY_SIGMA**2) / 2, ACTIVITY_SIGMA, n_new).astype(np.float32)
        )
        active.append(np.concatenate([retained, total + np.arange(n_new)]))
        total += n_new
    user_id = np.concatenate(ids).astype(np.int32)
    favourite = rng.choice(category_weight.size, total, p=category_weight).astype(np.int32)
    return Population(user_id, np.concatenate(z_parts), np.concatenate(a_parts), favourite, active)
