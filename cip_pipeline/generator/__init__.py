"""A generator of REES46-faithful clickstream files (`cip generate`).

Files have the real names (`2019-Oct.csv`), format and statistics; see `calibration.py` for
the figures they are calibrated to and `events.py` for the behaviour they carry.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from cip_pipeline.generator import calibration as cal
from cip_pipeline.generator.catalog import Catalog, build_catalog
from cip_pipeline.generator.events import (
    Lookups,
    block_events,
    days_in,
    plan_month,
    purchase_logging_gaps,
)
from cip_pipeline.generator.population import build_population
from cip_pipeline.generator.writer import MonthFileWriter
from cip_pipeline.months import raw_file_name

BLOCK_SECONDS = 6 * 3600
PROGRESS_MIN_EVENTS = 5_000_000


@dataclass
class GenerationReport:
    files: list[Path]
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def generator_version(package: Path = Path(__file__).parent) -> str:
    """What decides the files written for given arguments: the generator's source files and the
    libraries that draw and format the rows. A cache of generated files keyed by it is stale
    once it changes."""
    digest = hashlib.sha256()
    for path in sorted(package.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{digest.hexdigest()[:16]}-numpy{np.__version__}-polars{pl.__version__}"


def _seed(seed: int, *path: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *path]))


def _calibrated_catalog(
    seed: int, n_months: int, month0_rows: float, target_products: float, brands: list[int]
) -> Catalog:
    """The catalog whose month-0 expected count of products with at least one event
    matches the target (popularity is heavy-tailed, so many listed products go unseen)."""

    def seen(n_initial: int) -> tuple[float, Catalog]:
        cat = build_catalog(_seed(seed, 1), n_initial, n_months, brands)
        within = cat.weight * cat.active(0)
        tot = np.bincount(cat.category, weights=within, minlength=cat.categories.weight.size)
        share = cat.categories.weight[cat.category] * np.divide(
            within, tot[cat.category], out=np.zeros_like(within), where=tot[cat.category] > 0
        )
        return float(np.sum(-np.expm1(-month0_rows * share))), cat

    n = max(10, int(target_products * 2))
    for _ in range(8):
        got, cat = seen(n)
        if abs(got - target_products) <= max(2.0, 0.01 * target_products):
            break
        n = max(10, int(n * target_products / max(got, 1.0)))
    return cat


def generate(
    events: int,
    seed: int = 42,
    months: Sequence[str] = ("2019-10", "2019-11"),
    out: Path = Path("data/raw"),
    compress: bool = False,
    progress: Callable[[str], None] | None = None,
) -> GenerationReport:
    """Write one REES46-format file per month into `out`, about `events` rows in all."""
    if events < 1:
        raise ValueError("--events must be at least 1")
    months = sorted(months)
    t0 = time.perf_counter()
    profiles = [cal.profile_for(i) for i in range(len(months))]
    scale = events / sum(p.rows for p in profiles)
    if progress is None and events >= PROGRESS_MIN_EVENTS:
        progress = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    brands = [max(5, round(p.brands * scale)) for p in profiles]
    catalog = _calibrated_catalog(
        seed, len(months), profiles[0].rows * scale, profiles[0].products * scale, brands
    )
    pop = build_population(
        _seed(seed, 2),
        [max(1, round(p.users * scale)) for p in profiles],
        catalog.categories.weight,
    )
    lookups = Lookups.build(catalog)
    out.mkdir(parents=True, exist_ok=True)
    suffix = ".csv.gz" if compress else ".csv"
    paths = [out / (raw_file_name(m) + suffix) for m in months]
    writer = MonthFileWriter(compress)
    report = GenerationReport(files=paths)
    carry: pl.DataFrame | None = None
    written = 0
    last_note = time.perf_counter()
    all_gaps = [g for i, m in enumerate(months) for g in purchase_logging_gaps(i, m)]
    ok = False
    try:
        for i, month in enumerate(months):
            plan = plan_month(_seed(seed, 3, i), i, month, scale, catalog, pop, BLOCK_SECONDS)
            # A follow-up purchase may land in a later month's logging gap.
            plan.gaps = all_gaps
            if carry is not None:
                # Months not consecutive: what spilled into the months between is not written.
                carry = carry.filter(pl.col("event_time") >= _dt(plan.start))
            n_blocks = days_in(month) * 86400 // BLOCK_SECONDS
            bounds = np.searchsorted(
                plan.session_start, plan.start + BLOCK_SECONDS * np.arange(n_blocks + 1)
            )
            rows = 0
            for b in range(n_blocks):
                frame = block_events(
                    _seed(seed, 4, i, b),
                    plan,
                    b,
                    int(bounds[b]),
                    int(bounds[b + 1]),
                    catalog,
                    pop,
                    lookups,
                )
                if carry is not None:
                    frame = pl.concat([carry, frame])
                frame = frame.sort("event_time", maintain_order=True)
                cut = frame["event_time"].search_sorted(_dt(plan.start + BLOCK_SECONDS * (b + 1)))
                block, carry = frame.slice(0, cut), frame.slice(cut)
                writer.put(paths[i], block)
                rows += block.height
                written += block.height
                if progress and time.perf_counter() - last_note > 5:
                    last_note = time.perf_counter()
                    progress(
                        f"{month}: {100 * (b + 1) / n_blocks:5.1f}% · {written:,} rows · "
                        f"{last_note - t0:.0f} s"
                    )
            report.rows[month] = rows
            if progress:
                progress(f"{month}: done, {rows:,} rows · {time.perf_counter() - t0:.0f} s")
        ok = True
    finally:
        if ok:
            writer.close()
        else:
            writer.abort()
    report.seconds = time.perf_counter() - t0
    return report


def _dt(epoch_s: int) -> datetime:
    return datetime.fromtimestamp(epoch_s, tz=UTC).replace(tzinfo=None)
