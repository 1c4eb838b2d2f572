"""Customer Intelligence Platform: the `cip_pipeline` Dagster code location."""

import contextlib
import os

from cip_pipeline.budget import Budget

__version__ = "0.1.0"

# Polars sizes its thread pool once, at first use: give it the run's share of the cores. A
# budget that cannot be used is reported where it is used (`cip`, the run's resources), not as
# a failed import.
with contextlib.suppress(ValueError):
    os.environ.setdefault("POLARS_MAX_THREADS", str(Budget.from_env().threads_per_run))
