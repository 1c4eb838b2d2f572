"""Published figures of the real REES46 files that the generator is calibrated to.

Sources and definitions are in the project's reference notes on the dataset (October and
November 2019, full passes over the real files). Counts are per month; the generator scales
every count of entities (rows, users, sessions, products, brands) linearly with `--events`.
The taxonomy (691 category ids, 277 of them with a code, 13 top-level categories) is a fixed
property of the store and is not scaled.
"""

from __future__ import annotations

from dataclasses import dataclass

REAL_TOTAL_ROWS = 109_950_743
CATEGORY_IDS = 691
CATEGORY_IDS_WITH_CODE = 277
PRICE_CAP = 2574.07  # the real files' maximum price, in both months


@dataclass(frozen=True)
class MonthProfile:
    """What one month of the real data looks like. Month 0 behaves like October 2019, every
    later month like November 2019 (sale weekend and purchase-logging gaps included)."""

    name: str
    rows: int
    views: int
    carts: int
    purchases: int
    users: int
    sessions: int
    products: int
    brands: int
    session_purchase_share: float
    buyer_share: float
    code_missing_share: float
    brand_missing_share: float
    zero_price_share: float
    duplicate_share: float
    null_sessions: int
    revenue: float
    # Share of carts that reach the log: October's cart logging is incomplete.
    cart_logging: float
    sale_weekend: bool


OCTOBER = MonthProfile(
    name="october",
    rows=42_448_764,
    views=40_779_399,
    carts=926_516,
    purchases=742_849,
    users=3_022_290,
    sessions=9_244_421,
    products=166_794,
    brands=3_444,
    session_purchase_share=0.0681,
    buyer_share=0.115,
    code_missing_share=0.318,
    brand_missing_share=0.144,
    zero_price_share=0.0016,
    duplicate_share=30_219 / 42_448_764,
    null_sessions=2,
    revenue=229.96e6,
    cart_logging=0.42,
    sale_weekend=False,
)

NOVEMBER = MonthProfile(
    name="november",
    rows=67_501_979,
    views=63_556_110,
    carts=3_028_930,
    purchases=916_939,
    users=3_696_117,
    sessions=13_776_050,
    products=190_662,
    brands=4_200,
    session_purchase_share=0.0562,
    buyer_share=0.119,
    code_missing_share=0.324,
    brand_missing_share=0.137,
    zero_price_share=0.0028,
    duplicate_share=100_510 / 67_501_979,
    null_sessions=10,
    revenue=275.19e6,
    cart_logging=1.0,
    sale_weekend=True,
)

# Across both months.
USERS_BOTH_MONTHS = 1_401_758  # 46.4% of October's users are active again in November
PRODUCTS_UNION = 206_876
PRODUCTS_BOTH_MONTHS = 150_580
PRICE_MEAN = 290.32
PRICE_MEDIAN = 163.0
PRICE_STD = 357.9

# November 2019 purchase-logging gaps, as (day, hh:mm) -> (day, hh:mm) in the month.
PURCHASE_LOGGING_GAPS = (((14, "18:09"), (16, "08:32")), ((16, "15:34"), (17, "03:43")))


def profile_for(month_index: int) -> MonthProfile:
    """The first generated month is October-like, every later one November-like."""
    return OCTOBER if month_index == 0 else NOVEMBER
