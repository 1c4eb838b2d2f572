"""Argument checks shared by the power and analysis functions.

Every check raises `ValueError` with a message that names the argument and the accepted range,
so that a bad value in an asset's config surfaces as a readable error rather than a NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

POWER_ALTERNATIVES = ("two-sided", "one-sided")
TEST_ALTERNATIVES = ("two-sided", "greater", "less")


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return out


def check_open_unit(name: str, value: Any) -> float:
    """A probability strictly between 0 and 1 (baselines, alpha, power, shares)."""
    out = _real(name, value)
    if not 0.0 < out < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1, got {value!r}")
    return out


def check_positive(name: str, value: Any) -> float:
    out = _real(name, value)
    if out <= 0.0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return out


def check_nonnegative(name: str, value: Any) -> float:
    out = _real(name, value)
    if out < 0.0:
        raise ValueError(f"{name} must not be negative, got {value!r}")
    return out


def check_nonzero(name: str, value: Any) -> float:
    out = _real(name, value)
    if out == 0.0:
        raise ValueError(f"{name} must not be zero")
    return out


def check_alpha_power(alpha: Any, power: Any) -> tuple[float, float]:
    a = check_open_unit("alpha", alpha)
    p = check_open_unit("power", power)
    if p <= a:
        raise ValueError(f"power ({p}) must be greater than alpha ({a})")
    return a, p


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return str(value)


def check_count(name: str, value: Any, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        if isinstance(value, float | np.floating) and float(value).is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be a whole number, got {value!r}")
    out = int(value)
    if out < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {out}")
    return out


def check_sample(name: str, values: ArrayLike, *, min_size: int = 2) -> NDArray[np.float64]:
    """A one-dimensional, finite, numeric sample with at least `min_size` values."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a sequence of numbers") from exc
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size < min_size:
        raise ValueError(f"{name} needs at least {min_size} values, got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr
