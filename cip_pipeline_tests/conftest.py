from __future__ import annotations

from pathlib import Path

import pytest

from cip_pipeline.generator import generate
from cip_pipeline_tests.warehouse_sample import (
    WarehouseSample,
    build_dashboard_sample,
    run_sample,
)

REPO = Path(__file__).resolve().parents[1]
REAL_HEAD = REPO.parent / "shared" / "reference" / "real_samples" / "2019-Oct-head.csv"


MILLION_SAMPLE_EVENTS = 1_000_000


@pytest.fixture(scope="session")
def million_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 1 M generated events over October and November 2019."""
    out = tmp_path_factory.mktemp("million")
    generate(MILLION_SAMPLE_EVENTS, seed=42, out=out)
    return out


@pytest.fixture(scope="session")
def real_head() -> Path:
    if not REAL_HEAD.exists():
        pytest.skip("the shared reference sample is not beside this checkout")
    return REAL_HEAD


@pytest.fixture(scope="session")
def warehouse_sample(tmp_path_factory: pytest.TempPathFactory) -> WarehouseSample:
    """About 150 k generated events over October and November 2019, through every asset."""
    root = tmp_path_factory.mktemp("warehouse_sample")
    generate(150_000, seed=5, out=root / "raw")
    instance, summaries = run_sample(root, ["2019-10", "2019-11"])
    return WarehouseSample(root, instance, summaries)


@pytest.fixture(scope="session")
def dashboard_sample(
    warehouse_sample: WarehouseSample, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A copy of the sample's data folder with the models and experiments built too, and a
    Dagster home holding their materializations: what the dashboard reads. Returns the
    folder to use as CIP_DATA_DIR."""
    return build_dashboard_sample(warehouse_sample.root, tmp_path_factory.mktemp("dashboard"))
