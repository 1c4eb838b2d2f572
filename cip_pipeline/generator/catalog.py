"""The product catalog: categories, products, brands and prices, with their life cycle over
the generated months (products retire, new ones appear: cold start)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cip_pipeline.generator import calibration as cal
from cip_pipeline.generator.taxonomy import CATEGORY_CODES, COMPLEMENTS, KNOWN_BRANDS

# Share of the month-0 catalog that is new in each later month, and that retires each month.
NEW_PRODUCT_SHARE = 0.22
RETIRE_SHARE = 0.08
# Spread of product popularity within a category (log-normal sigma): heavy-tailed.
POPULARITY_SIGMA = 1.5
PRICE_SIGMA = 0.8  # spread of prices within a category


@dataclass
class Categories:
    category_id: np.ndarray  # int64, one per category index
    code: list[str | None]  # dotted code, None for the categories the real files leave empty
    weight: np.ndarray  # float64 traffic share, sums to 1
    median_price: np.ndarray  # float64
    complement: np.ndarray  # int32 category index bought together with it, -1 for none


@dataclass
class Catalog:
    categories: Categories
    product_id: np.ndarray  # int32, sorted by category then id
    category: np.ndarray  # int32 category index per product
    weight: np.ndarray  # float64 popularity within its category (not normalised)
    brand: np.ndarray  # int32 index into brand_names, -1 where the brand is missing
    brand_names: list[str]
    price: np.ndarray  # float64 [n_months, n_products], two decimals
    born: np.ndarray  # int16 first month the product is sold
    retired_after: np.ndarray  # int16 last month it is sold (n_months - 1 when never retired)
    complement: np.ndarray  # int32 product index often bought with it, -1 for none

    def active(self, month: int) -> np.ndarray:
        return (self.born <= month) & (self.retired_after >= month)


def _scaled_weights(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    w = rng.lognormal(0.0, sigma, n)
    return w / w.sum()


def build_categories(rng: np.random.Generator) -> Categories:
    codes = list(CATEGORY_CODES)
    n_coded = cal.CATEGORY_IDS_WITH_CODE
    n_uncoded = cal.CATEGORY_IDS - n_coded
    # Every code has a category id; the remaining coded ids share codes, as in the real files
    # (several category ids carry the same code).
    extra = rng.choice(len(codes), n_coded - len(codes), replace=True)
    code_of_id = np.concatenate([np.arange(len(codes)), extra])
    code_weight = np.array([CATEGORY_CODES[c][1] for c in codes])
    code_price = np.array([CATEGORY_CODES[c][0] for c in codes])
    # Split a code's traffic over its ids: the first id takes most of it.
    split = rng.lognormal(0.0, 1.0, n_coded)
    split[: len(codes)] *= 6.0
    per_code = np.bincount(code_of_id, weights=split, minlength=len(codes))
    coded_w = code_weight[code_of_id] * split / per_code[code_of_id]
    coded_w *= (1.0 - cal.OCTOBER.code_missing_share) / coded_w.sum()
    uncoded_w = _scaled_weights(rng, n_uncoded, 1.6) * cal.OCTOBER.code_missing_share
    weight = np.concatenate([coded_w, uncoded_w])
    median_price = np.concatenate(
        [
            code_price[code_of_id] * rng.lognormal(0.0, 0.15, n_coded),
            rng.lognormal(np.log(70.0), 0.9, n_uncoded),
        ]
    )
    code: list[str | None] = [codes[i] for i in code_of_id] + [None] * n_uncoded
    # The first id of each code is the one complements point to.
    first_id_of_code = {codes[i]: i for i in range(len(codes))}
    complement = np.full(cal.CATEGORY_IDS, -1, dtype=np.int32)
    for i, c in enumerate(code):
        if c in COMPLEMENTS:
            complement[i] = first_id_of_code[COMPLEMENTS[c]]
    # Real ids: 19 digits, mostly of one prefix, a few of later-added ranges.
    base = np.where(rng.random(cal.CATEGORY_IDS) < 0.9, 2053013552000000000, 2061717930000000000)
    offsets = np.sort(rng.integers(0, 14_000_000_000, cal.CATEGORY_IDS))
    category_id = base + offsets[rng.permutation(cal.CATEGORY_IDS)]
    return Categories(category_id.astype(np.int64), code, weight, median_price, complement)


def _brand_names(rng: np.random.Generator, n: int) -> list[str]:
    syll = [
        "ka",
        "ro",
        "ti",
        "ven",
        "lux",
        "mar",
        "to",
        "ne",
        "si",
        "gra",
        "bel",
        "dor",
        "fi",
        "ko",
        "la",
        "mi",
        "no",
        "pra",
        "sta",
        "tek",
        "vo",
        "zen",
        "al",
        "or",
        "us",
        "ex",
    ]
    names = list(KNOWN_BRANDS[:n])
    seen = set(names)
    while len(names) < n:
        k = int(rng.integers(2, 4))
        name = "".join(syll[i] for i in rng.integers(0, len(syll), k))
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def _greedy_flag(
    rng: np.random.Generator, share: np.ndarray, target: float, eligible: np.ndarray
) -> np.ndarray:
    """Flag eligible items, in random order, until their share of traffic reaches target."""
    order = rng.permutation(np.flatnonzero(eligible))
    cum = np.cumsum(share[order])
    flagged = np.zeros(share.size, dtype=bool)
    flagged[order[: int(np.searchsorted(cum, target))]] = True
    return flagged


def build_catalog(
    rng: np.random.Generator, n_initial: int, n_months: int, brands: Sequence[int]
) -> Catalog:
    """`brands[m]`: the brands of month m's profile. A product new in month m carries one of
    the first `brands[m]`, so that a month sees about as many brands as its profile."""
    cats = build_categories(rng)
    n_new = round(n_initial * NEW_PRODUCT_SHARE) * max(0, n_months - 1)
    n = n_initial + n_new
    # Products per category grow less than linearly with its traffic.
    alloc = cats.weight**0.6
    category = rng.choice(cal.CATEGORY_IDS, n, p=alloc / alloc.sum()).astype(np.int32)
    born = np.zeros(n, dtype=np.int16)
    if n_new:
        born[n_initial:] = rng.integers(1, n_months, n_new)
    retired_after = np.full(n, n_months - 1, dtype=np.int16)
    for m in range(n_months - 1):
        alive = (born <= m) & (retired_after == n_months - 1)
        retiring = alive & (rng.random(n) < RETIRE_SHARE)
        retired_after[retiring] = m
    weight = rng.lognormal(0.0, POPULARITY_SIGMA, n)

    # Order by category so a category's products are one slice; ids grow within the slice.
    order = np.lexsort((born, category))
    category, born, retired_after, weight = (
        category[order],
        born[order],
        retired_after[order],
        weight[order],
    )
    # Ids grow within a category; products new after month 0 get ids from 1e8, as in 2019-Nov.
    step = max(1, min(60, 59_000_000 // max(n, 1)))
    product_id = np.empty(n, dtype=np.int64)
    for is_new, first_id in ((False, 1_000_000), (True, 100_000_000)):
        sel = (born > 0) == is_new
        product_id[sel] = first_id + np.cumsum(rng.integers(1, 2 * step, int(sel.sum())))
    product_id = product_id.astype(np.int32)

    # Month-0 traffic share of each product: category share times share within category.
    within = weight * (born == 0)
    cat_tot = np.bincount(category, weights=within, minlength=cal.CATEGORY_IDS)
    share = np.divide(
        cats.weight[category] * within,
        cat_tot[category],
        out=np.zeros(n),
        where=cat_tot[category] > 0,
    )

    n_brands = max(brands)
    brand_names = _brand_names(rng, n_brands)
    pool = np.asarray(brands, dtype=np.int64)[born]
    ranks = np.minimum(rng.zipf(1.35, n) - 1, pool - 1)
    # Each top-level category has its own leading brands.
    top_of_cat = {c.split(".")[0] for c in cats.code if c}
    top_offset = {t: i * 7 for i, t in enumerate(sorted(top_of_cat))}
    cat_offset = np.array([top_offset[c.split(".")[0]] if c else 97 for c in cats.code])
    rank = ranks + cat_offset[category]
    # A month's new brands come with its new products (a share of them as large as the new
    # brands' share): drawn from the whole pool, the new ones would hardly ever be picked.
    before = np.asarray([brands[0], *brands[:-1]], dtype=np.int64)[born]
    fresh = (pool > before) & (rng.random(n) < (pool - before) / pool)
    brand = np.where(fresh, before + rank % np.maximum(pool - before, 1), rank % pool)
    brand = brand.astype(np.int32)
    smartphone = np.array([c == "electronics.smartphone" for c in cats.code])[category]
    no_brand = _greedy_flag(rng, share, cal.OCTOBER.brand_missing_share, ~smartphone & (born == 0))
    new_share = np.where(born > 0, weight, 0.0) / max(float(weight[born > 0].sum()), 1e-12)
    no_brand |= _greedy_flag(
        rng, new_share, cal.NOVEMBER.brand_missing_share, ~smartphone & (born > 0)
    )
    brand[no_brand] = -1

    base_price = cats.median_price[category] * rng.lognormal(-0.08, PRICE_SIGMA, n)
    price = np.empty((n_months, n))
    price[0] = base_price
    for m in range(1, n_months):
        drift = np.where(rng.random(n) < 0.3, rng.lognormal(0.0, 0.06, n), 1.0)
        price[m] = price[m - 1] * drift
    price = np.round(np.clip(price, 0.77, cal.PRICE_CAP), 2)

    # A product's partner: a popular product of the complementary category.
    complement = np.full(n, -1, dtype=np.int32)
    starts = np.searchsorted(category, np.arange(cal.CATEGORY_IDS))
    ends = np.searchsorted(category, np.arange(cal.CATEGORY_IDS), side="right")
    for c in np.flatnonzero(cats.complement >= 0):
        partner = cats.complement[c]
        lo, hi = starts[partner], ends[partner]
        mine = np.arange(starts[c], ends[c])
        if hi == lo or mine.size == 0:
            continue
        top = lo + np.argsort(-weight[lo:hi])[:5]
        complement[mine] = top[mine % top.size]
    return Catalog(
        cats,
        product_id,
        category,
        weight,
        brand,
        brand_names,
        price,
        born,
        retired_after,
        complement,
    )


def month_sampler(catalog: Catalog, month: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a month needs to draw products by category: (cumulative popularity over active
    products, ordered by category; each category's [lo, hi) bounds on it; category traffic
    share among categories that have an active product)."""
    active = catalog.active(month)
    w = np.where(active, catalog.weight, 0.0)
    cum = np.cumsum(w)
    n_cat = catalog.categories.category_id.size
    starts = np.searchsorted(catalog.category, np.arange(n_cat))
    ends = np.searchsorted(catalog.category, np.arange(n_cat), side="right")
    padded = np.concatenate([[0.0], cum])
    lo, hi = padded[starts], padded[ends]
    cat_share = np.where(hi > lo, catalog.categories.weight, 0.0)
    return cum, np.stack([lo, hi], axis=1), cat_share / cat_share.sum()
