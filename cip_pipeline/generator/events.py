"""Sessions and their events, built with vectorised numpy one time block at a time.

A session is a run of product views in one main category. Some sessions buy: each bought
item is carted (one or more cart events) and then purchased at the end of the session, and a
second item is often the complement of the first. Some carts are abandoned. October-like
months log only part of the carts; November-like months have a sale weekend and two windows
in which purchases were not logged.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pyarrow as pa

from cip_pipeline.generator import calibration as cal
from cip_pipeline.generator.catalog import Catalog, month_sampler
from cip_pipeline.generator.population import Population

EVENT_TYPES = ("view", "cart", "purchase")
VIEW, CART, PURCHASE = 0, 1, 2

# Session shape: views per session are 1 + negative binomial (median 2, long tail).
VIEWS_DISPERSION = 0.37
SESSION_CATEGORY_LOYALTY = 0.85  # share of a session's views in its main category
FAVOURITE_CATEGORY_SHARE = 0.55  # share of a user's sessions in their favourite category
DEARER_ITEM_SHARE = 0.5  # buyers pick the dearer of two viewed items this often
COMPLEMENT_SHARE = 0.5  # a second item is the first one's complement this often
REPEAT_CART_MEAN = 0.35  # extra cart events of a bought item (quantity changes)
# Purchase and cart propensity: logit = base + weight_z * z + weight_len * log(views).
BUY_WEIGHT_Z = 3.2
BUY_WEIGHT_LEN = 0.6
CART_WEIGHT_Z = 0.7
CART_WEIGHT_LEN = 0.5
# A shopper who abandons a cart often comes back days later to buy it, the more likely the
# higher their propensity: recent carts without a purchase are a strong, non-linear signal.
FOLLOW_UP_SHARE = 0.35  # of abandoned carts, on average
FOLLOW_UP_WEIGHT_Z = 1.5
FOLLOW_UP_DELAY_MEDIAN_S = 1.0 * 86400
FOLLOW_UP_DELAY_SIGMA = 1.0
# Seconds between events of a session: log-normal.
GAP_MEDIAN_S = 38.0
GAP_SIGMA = 1.25
CHECKOUT_MEDIAN_S = 45.0
DUPLICATE_ZIPF = 2.8  # extra copies of a duplicated row, truncated at 77 (78 rows in all)
DUPLICATE_CART_SHARE = 0.8

# Traffic by hour of day (UTC); the store's audience is mostly UTC+3.
HOUR_WEIGHT = np.array(
    [
        0.12,
        0.08,
        0.1,
        0.25,
        0.6,
        1.0,
        1.3,
        1.5,
        1.6,
        1.65,
        1.65,
        1.65,
        1.6,
        1.6,
        1.65,
        1.7,
        1.75,
        1.7,
        1.6,
        1.3,
        0.9,
        0.55,
        0.35,
        0.2,
    ]
)
WEEKDAY_WEIGHT = np.array([1.02, 1.0, 0.98, 0.97, 0.95, 0.98, 1.08])  # Monday first
SALE_DAY_TRAFFIC = {15: 1.6, 16: 3.3, 17: 2.6, 18: 1.2}
SALE_DAY_BUYING = {16: 1.2, 17: 1.45}


def month_start(month: str) -> datetime:
    y, m = (int(x) for x in month.split("-"))
    return datetime(y, m, 1, tzinfo=UTC)


def days_in(month: str) -> int:
    y, m = (int(x) for x in month.split("-"))
    return calendar.monthrange(y, m)[1]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _hhmm(day: int, hhmm: str) -> int:
    h, m = (int(x) for x in hhmm.split(":"))
    return (day - 1) * 86400 + h * 3600 + m * 60


@dataclass
class MonthPlan:
    """Everything decided once per month; a block's events are drawn from it."""

    index: int
    month: str
    profile: cal.MonthProfile
    start: int  # epoch seconds of the month's first second
    end: int
    session_user: np.ndarray  # int32 population index, sessions sorted by start
    session_start: np.ndarray  # int64 epoch seconds
    views_mean: float
    buy_base: float
    cart_base: float
    follow_base: float
    extra_items: float  # mean purchases per buying session beyond the first
    next_cart_logging: float  # cart logging of the next month, for follow-ups that spill
    sampler: tuple[np.ndarray, np.ndarray, np.ndarray]
    cat_cum: np.ndarray  # cumulative category share, for global category draws
    gaps: list[tuple[int, int]]  # epoch windows with no purchase logging (all months)
    duplicate_rate: float  # duplicated rows to add per generated row
    null_session_blocks: np.ndarray  # block index of each null-session event of the month


def _time_bins(month: str, profile: cal.MonthProfile) -> tuple[np.ndarray, np.ndarray]:
    """Traffic and buying weight of each hour of the month."""
    n_days = days_in(month)
    first_weekday = month_start(month).weekday()
    day_w = np.array([WEEKDAY_WEIGHT[(first_weekday + d) % 7] for d in range(n_days)])
    day_w *= np.linspace(0.94, 1.06, n_days)  # the store grows
    buy_w = np.ones(n_days)
    if profile.sale_weekend:
        for day, f in SALE_DAY_TRAFFIC.items():
            if day <= n_days:
                day_w[day - 1] *= f
        for day, f in SALE_DAY_BUYING.items():
            if day <= n_days:
                buy_w[day - 1] = f
    traffic = (day_w[:, None] * HOUR_WEIGHT[None, :]).ravel()
    return traffic / traffic.sum(), np.repeat(buy_w, 24)


def _negbin_views(rng: np.random.Generator, mean: float, n: int) -> np.ndarray:
    mu = max(mean - 1.0, 1e-6)
    p = VIEWS_DISPERSION / (VIEWS_DISPERSION + mu)
    return 1 + rng.negative_binomial(VIEWS_DISPERSION, p, n)


def _solve_base(target: float, fn, lo: float = -15.0, hi: float = 8.0) -> float:
    """Bisection for the intercept whose mean outcome hits target (fn is increasing)."""
    for _ in range(50):
        mid = (lo + hi) / 2
        if fn(mid) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def purchase_logging_gaps(index: int, month: str) -> list[tuple[int, int]]:
    """Epoch windows of the month in which purchases were not logged."""
    if not cal.profile_for(index).sale_weekend:
        return []
    start = int(month_start(month).timestamp())
    return [
        (start + _hhmm(d0, t0), start + _hhmm(d1, t1))
        for (d0, t0), (d1, t1) in cal.PURCHASE_LOGGING_GAPS
        if d1 <= days_in(month)
    ]


def originals(profile: cal.MonthProfile) -> tuple[float, float]:
    """The month's views and carts less its exact duplicate rows (mostly carts): the real
    counts include them, and the generator adds its copies on top of what it draws."""
    duplicates = profile.duplicate_share * profile.rows
    return (
        profile.views - (1 - DUPLICATE_CART_SHARE) * duplicates,
        profile.carts - DUPLICATE_CART_SHARE * duplicates,
    )


def follow_ups(profile: cal.MonthProfile) -> tuple[float, float]:
    """Follow-up sessions per ordinary session, and abandoned carts per ordinary session (before
    cart logging). Follow-ups (one view, a cart, a purchase) count among the month's sessions,
    purchases and carts, so the ordinary sessions make up the rest: a fixed point."""
    carts = originals(profile)[1]
    follow = abandoned = 0.0
    for _ in range(200):
        purchases = profile.purchases / profile.sessions * (1 + follow) - follow
        bought_carts = purchases * (1 + REPEAT_CART_MEAN)
        abandoned = carts / profile.sessions * (1 + follow) / profile.cart_logging
        abandoned = max(abandoned - bought_carts, 1e-6) / (1 + FOLLOW_UP_SHARE)
        previous, follow = follow, abandoned * FOLLOW_UP_SHARE
        if abs(follow - previous) < 1e-12:
            break
    return follow, abandoned


def plan_month(
    rng: np.random.Generator,
    index: int,
    month: str,
    scale: float,
    catalog: Catalog,
    pop: Population,
    block_seconds: int,
) -> MonthPlan:
    profile = cal.profile_for(index)
    start = int(month_start(month).timestamp())
    end = start + days_in(month) * 86400
    users = pop.active[index]
    follow, abandoned = follow_ups(profile)
    # Follow-up sessions count among the month's sessions: draw only the ordinary ones.
    sessions_per_user = profile.sessions / profile.users / (1 + follow)
    act = pop.activity[users]
    lam = act * (sessions_per_user - 1.0) / act.mean()
    n_sessions = 1 + rng.poisson(lam)
    session_user = np.repeat(users, n_sessions).astype(np.int32)
    traffic, buy_w = _time_bins(month, profile)
    hour = np.searchsorted(np.cumsum(traffic), rng.random(session_user.size) * traffic.sum())
    hour = np.minimum(hour, traffic.size - 1)
    session_start = start + hour * 3600 + rng.integers(0, 3600, session_user.size)
    order = np.argsort(session_start, kind="stable")
    session_user, session_start, hour = session_user[order], session_start[order], hour[order]

    gaps = purchase_logging_gaps(index, month)

    # Calibrate purchase, cart and follow-up intercepts on a sample of the month's sessions.
    probe = rng.choice(session_user.size, min(200_000, session_user.size), replace=False)
    z = pop.propensity[session_user[probe]]
    log_v = np.log(_negbin_views(rng, profile.views / profile.sessions, probe.size))
    day_buy = buy_w[hour[probe]]
    in_gap = np.zeros(probe.size, dtype=bool)
    for g0, g1 in gaps:  # sessions starting in a gap lose their purchases
        in_gap |= (session_start[probe] >= g0) & (session_start[probe] < g1)

    def buy_share(b: float, gap_loss: bool = True) -> float:
        p = np.minimum(_sigmoid(b + BUY_WEIGHT_Z * z + BUY_WEIGHT_LEN * log_v) * day_buy, 0.95)
        return float(np.mean(p * ~in_gap)) if gap_loss else float(np.mean(p))

    cart_weight = np.exp(CART_WEIGHT_Z * z + CART_WEIGHT_LEN * log_v)

    def follow_share(f: float) -> float:  # over abandoned carts, which lean to high z
        return float(np.average(_sigmoid(f + FOLLOW_UP_WEIGHT_Z * z), weights=cart_weight))

    follow_base = _solve_base(FOLLOW_UP_SHARE, follow_share)
    # Every follow-up session buys, unless its purchase falls in a logging gap (as often as an
    # ordinary session's does, near enough): the ordinary sessions make up the other buyers.
    logged = 1.0
    for _ in range(2):
        buying = profile.session_purchase_share * (1 + follow) - follow * logged
        buy_base = _solve_base(buying, buy_share)
        logged = buy_share(buy_base) / buy_share(buy_base, False)
    views_mean = originals(profile)[0] / profile.sessions * (1 + follow) - follow
    # Items per ordinary buying session, so that the logged purchases (follow-ups included,
    # those in logging gaps lost) match.
    purchases_target = profile.purchases / profile.sessions * (1 + follow) - follow * logged
    extra_items = max(0.0, purchases_target / buy_share(buy_base) - 1.0)

    def cart_rate(c: float) -> float:
        return float(np.mean(np.exp(c) * cart_weight))

    cart_base = _solve_base(abandoned, cart_rate)

    sampler = month_sampler(catalog, index)
    n_blocks = (end - start) // block_seconds
    expected_rows = profile.rows * scale
    n_null = max(1, round(profile.null_sessions * scale))
    return MonthPlan(
        index=index,
        month=month,
        profile=profile,
        start=start,
        end=end,
        session_user=session_user,
        session_start=session_start.astype(np.int64),
        views_mean=views_mean,
        buy_base=buy_base,
        cart_base=cart_base,
        follow_base=follow_base,
        extra_items=extra_items,
        next_cart_logging=cal.profile_for(index + 1).cart_logging,
        sampler=sampler,
        cat_cum=np.cumsum(sampler[2]),
        gaps=gaps,
        duplicate_rate=profile.duplicate_share,
        null_session_blocks=np.sort(rng.integers(0, n_blocks, n_null))
        if expected_rows > 0
        else np.empty(0, dtype=np.int64),
    )


def _draw_categories(rng: np.random.Generator, plan: MonthPlan, n: int) -> np.ndarray:
    idx = np.searchsorted(plan.cat_cum, rng.random(n) * plan.cat_cum[-1], side="right")
    return np.minimum(idx, plan.cat_cum.size - 1)


def _draw_products(rng: np.random.Generator, plan: MonthPlan, cats: np.ndarray) -> np.ndarray:
    cum, bounds, _ = plan.sampler
    lo, hi = bounds[cats, 0], bounds[cats, 1]
    idx = np.searchsorted(cum, lo + rng.random(cats.size) * (hi - lo), side="right")
    return np.minimum(idx, cum.size - 1)


def uuid4_strings(rng: np.random.Generator, n: int) -> pl.Series:
    """n random version-4 UUIDs as strings, formatted without a Python loop."""
    raw = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    hexdigits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    out = np.full((n, 36), ord("-"), dtype=np.uint8)
    positions = (0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34)
    for i, p in enumerate(positions):
        out[:, p] = hexdigits[raw[:, i] >> 4]
        out[:, p + 1] = hexdigits[raw[:, i] & 15]
    offsets = np.arange(0, 36 * (n + 1), 36, dtype=np.int32)
    arr = pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(out))
    return pl.Series("user_session", pl.from_arrow(arr))


def _nullable_lookup(values: list[str | None]) -> pl.Series:
    return pl.Series(values, dtype=pl.String)


@dataclass
class Lookups:
    """Product attributes as Polars series, gathered per event."""

    category_code: pl.Series
    brand: pl.Series

    @classmethod
    def build(cls, catalog: Catalog) -> Lookups:
        return cls(
            _nullable_lookup(catalog.categories.code),
            _nullable_lookup([*catalog.brand_names, None]),
        )


def _duplicate_copies(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.minimum(rng.zipf(DUPLICATE_ZIPF, n), 77)


MEAN_DUPLICATE_COPIES = float(np.mean(_duplicate_copies(np.random.default_rng(0), 1_000_000)))


def block_events(
    rng: np.random.Generator,
    plan: MonthPlan,
    block: int,
    lo: int,
    hi: int,
    catalog: Catalog,
    pop: Population,
    lookups: Lookups,
) -> pl.DataFrame:
    """The events of the sessions plan.session_*[lo:hi], in session order."""
    n_s = hi - lo
    users = plan.session_user[lo:hi]
    starts = plan.session_start[lo:hi]
    z = pop.propensity[users]
    # Session category: the user's favourite, or a popular one.
    fav = pop.favourite[users]
    bounds = plan.sampler[1]
    use_fav = (rng.random(n_s) < FAVOURITE_CATEGORY_SHARE) & (bounds[fav, 1] > bounds[fav, 0])
    s_cat = np.where(use_fav, fav, _draw_categories(rng, plan, n_s))

    n_views = _negbin_views(rng, plan.views_mean, n_s)
    v_off = np.cumsum(n_views) - n_views
    v_sess = np.repeat(np.arange(n_s), n_views)
    v_cat = np.where(
        rng.random(v_sess.size) < SESSION_CATEGORY_LOYALTY,
        s_cat[v_sess],
        _draw_categories(rng, plan, v_sess.size),
    )
    v_prod = _draw_products(rng, plan, v_cat)
    v_key = (np.arange(v_sess.size) - v_off[v_sess]) * 64

    # Bought items, their carts and purchases, at the end of the session.
    hour = (starts - plan.start) // 3600
    day = hour // 24 + 1
    buy_mult = np.ones(n_s)
    if plan.profile.sale_weekend:
        for d, f in SALE_DAY_BUYING.items():
            buy_mult[day == d] = f
    logit = plan.buy_base + BUY_WEIGHT_Z * z + BUY_WEIGHT_LEN * np.log(n_views)
    buys = rng.random(n_s) < np.minimum(_sigmoid(logit) * buy_mult, 0.95)
    n_items = np.where(buys, 1 + rng.poisson(plan.extra_items, n_s), 0)
    i_sess = np.repeat(np.arange(n_s), n_items)
    i_first = np.repeat(np.cumsum(n_items) - n_items, n_items)
    i_j = np.arange(i_sess.size) - i_first
    # The bought item is one of the viewed ones; buyers lean to the dearer of two candidates.
    cand = v_prod[
        v_off[i_sess][:, None]
        + (rng.random((i_sess.size, 2)) * n_views[i_sess][:, None]).astype(np.int64)
    ]
    dearer = np.take_along_axis(
        cand, np.argmax(catalog.price[plan.index, cand], axis=1)[:, None], axis=1
    )[:, 0]
    i_prod = np.where(rng.random(i_sess.size) < DEARER_ITEM_SHARE, dearer, cand[:, 0])
    comp = catalog.complement[i_prod[i_first]]
    comp_ok = comp >= 0
    comp_ok[comp_ok] = catalog.active(plan.index)[comp[comp_ok]]
    use_comp = (i_j > 0) & comp_ok & (rng.random(i_sess.size) < COMPLEMENT_SHARE)
    i_prod = np.where(use_comp, comp, i_prod)
    i_slot = (n_views[i_sess] + i_j) * 64
    n_carts = rng.geometric(1.0 / (1.0 + REPEAT_CART_MEAN), i_sess.size)
    n_carts = np.minimum(rng.binomial(n_carts, plan.profile.cart_logging), 62)
    c_sess = np.repeat(i_sess, n_carts)
    c_key = (
        np.repeat(i_slot, n_carts)
        + 1
        + (np.arange(c_sess.size) - np.repeat(np.cumsum(n_carts) - n_carts, n_carts))
    )
    c_prod = np.repeat(i_prod, n_carts)

    # Abandoned carts: right after the view of the carted product.
    lam = np.exp(plan.cart_base + CART_WEIGHT_Z * z + CART_WEIGHT_LEN * np.log(n_views))
    n_ab = rng.poisson(lam)
    a_sess = np.repeat(np.arange(n_s), n_ab)
    a_rank = (rng.random(a_sess.size) * n_views[a_sess]).astype(np.int64)
    a_prod = v_prod[v_off[a_sess] + a_rank]

    abandoned_key = a_rank * 64 + 1
    sess = np.concatenate([v_sess, c_sess, a_sess, i_sess])
    key = np.concatenate([v_key, c_key, abandoned_key, i_slot + 63])
    prod = np.concatenate([v_prod, c_prod, a_prod, i_prod])
    abandoned = np.concatenate(
        [
            np.zeros(v_sess.size + c_sess.size, bool),
            np.ones(a_sess.size, bool),
            np.zeros(i_sess.size, bool),
        ]
    )
    etype = np.concatenate(
        [
            np.full(v_sess.size, VIEW, np.int8),
            np.full(c_sess.size, CART, np.int8),
            np.full(a_sess.size, CART, np.int8),
            np.full(i_sess.size, PURCHASE, np.int8),
        ]
    )
    order = np.argsort((sess.astype(np.int64) << 32) | key, kind="stable")
    sess, prod, etype, abandoned = sess[order], prod[order], etype[order], abandoned[order]

    # Timing: each session starts at its start time, then log-normal gaps.
    gap = rng.lognormal(np.log(GAP_MEDIAN_S), GAP_SIGMA, sess.size)
    gap += np.where(etype == PURCHASE, rng.lognormal(np.log(CHECKOUT_MEDIAN_S), 0.8, sess.size), 0)
    first = np.ones(sess.size, dtype=bool)
    first[1:] = sess[1:] != sess[:-1]
    gap = np.where(first, 0, np.round(gap)).astype(np.int64)
    csum = np.cumsum(gap)
    times = starts[sess] + csum - csum[first][sess]  # sessions are contiguous and 0-based

    # Follow-up sessions: days after an abandoned cart, view it, cart it, buy it.
    ab_idx = np.flatnonzero(abandoned)
    returns = rng.random(ab_idx.size) < _sigmoid(
        plan.follow_base + FOLLOW_UP_WEIGHT_Z * z[sess[ab_idx]]
    )
    ab_idx = ab_idx[returns]
    n_f = ab_idx.size
    f_start = times[ab_idx] + np.maximum(
        3600, rng.lognormal(np.log(FOLLOW_UP_DELAY_MEDIAN_S), FOLLOW_UP_DELAY_SIGMA, n_f)
    ).astype(np.int64)
    f_cart = f_start + np.round(rng.lognormal(np.log(GAP_MEDIAN_S), GAP_SIGMA, n_f)).astype(
        np.int64
    )
    f_buy = f_cart + np.round(rng.lognormal(np.log(CHECKOUT_MEDIAN_S), 0.8, n_f)).astype(np.int64)
    f_sess = np.repeat(n_s + np.arange(n_f), 3)
    sess = np.concatenate([sess, f_sess])
    prod = np.concatenate([prod, np.repeat(prod[ab_idx], 3)])
    etype = np.concatenate([etype, np.tile(np.array([VIEW, CART, PURCHASE], np.int8), n_f)])
    times = np.concatenate([times, np.stack([f_start, f_cart, f_buy], axis=1).ravel()])
    session_users = np.concatenate([users, users[sess[ab_idx]]])
    # Only part of the carts reach the log in October-like months (carts of bought items
    # were thinned when drawn; abandoned and follow-up carts are thinned here).
    unthinned = np.concatenate([abandoned, np.tile(np.array([False, True, False]), n_f)])
    logging = np.where(times < plan.end, plan.profile.cart_logging, plan.next_cart_logging)
    keep = ~unthinned | (rng.random(sess.size) < logging)
    for g0, g1 in plan.gaps:
        keep &= ~((etype == PURCHASE) & (times >= g0) & (times < g1))
    idx = np.flatnonzero(keep)
    sess, prod, etype, times = sess[idx], prod[idx], etype[idx], times[idx]
    # Zero prices and null sessions are drawn per row before the duplicates are made, so that a
    # duplicate is an exact copy of its original.
    price = catalog.price[plan.index, prod]
    price = np.where(rng.random(price.size) < plan.profile.zero_price_share, 0.0, price)
    null = np.zeros(sess.size, dtype=bool)
    n_null = int(np.count_nonzero(plan.null_session_blocks == block))
    if n_null and sess.size:
        null[rng.integers(0, sess.size, n_null)] = True

    # Exact duplicate rows, mostly of cart events, next to their original.
    rows = np.arange(sess.size)
    n_seeds = rng.poisson(plan.duplicate_rate * rows.size / MEAN_DUPLICATE_COPIES)
    if n_seeds:
        carts = rows[etype == CART]
        if carts.size == 0:
            carts = rows
        pool = np.where(
            rng.random(n_seeds) < DUPLICATE_CART_SHARE,
            carts[rng.integers(0, carts.size, n_seeds)],
            rng.integers(0, rows.size, n_seeds),
        )
        rows = np.sort(np.concatenate([rows, np.repeat(pool, _duplicate_copies(rng, n_seeds))]))
        sess, prod, etype, times = sess[rows], prod[rows], etype[rows], times[rows]
        price, null = price[rows], null[rows]

    cat = catalog.category[prod]
    brand = catalog.brand[prod]
    brand = np.where(brand < 0, len(lookups.brand) - 1, brand)
    session = uuid4_strings(rng, n_s + n_f).gather(sess)
    if null.any():
        session = session.scatter(np.flatnonzero(null), None)
    return pl.DataFrame(
        {
            "event_time": pl.Series(times * 1_000_000, dtype=pl.Int64).cast(pl.Datetime("us")),
            "event_type": pl.Series(EVENT_TYPES, dtype=pl.String).gather(etype),
            "product_id": catalog.product_id[prod],
            "category_id": catalog.categories.category_id[cat],
            "category_code": lookups.category_code.gather(cat),
            "brand": lookups.brand.gather(brand),
            "price": price,
            "user_id": pop.user_id[session_users[sess]],
            "user_session": session,
        }
    )
