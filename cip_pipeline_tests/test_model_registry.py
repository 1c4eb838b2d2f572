"""The model registry: every version is kept, only validated ones are served for scoring."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import lightgbm as lgb
import numpy as np
import pytest

from cip_pipeline.io_managers.model_io_manager import ModelRegistryIOManager, TrainedModel
from cip_pipeline.resources import WarehouseResource

KEY = dg.AssetKey(["ml", "propensity_model"])


def _booster(seed: int) -> lgb.Booster:
    rng = np.random.default_rng(seed)
    x = rng.random((200, 3))
    y = (x[:, 0] + rng.random(200) * 0.1 > 0.5).astype(int)
    params = {"objective": "binary", "verbose": -1, "seed": seed}
    return lgb.train(params, lgb.Dataset(x, y), num_boost_round=3)


def _model(seed: int, validated: bool) -> TrainedModel:
    return TrainedModel(
        booster=_booster(seed),
        params={"seed": seed},
        features=["a", "b", "c"],
        windows={},
        metrics={},
        validated=validated,
    )


def test_a_version_that_failed_validation_is_kept_but_not_served(tmp_path: Path) -> None:
    warehouse = WarehouseResource(path=str(tmp_path / "cip.duckdb"))
    manager = ModelRegistryIOManager(warehouse=warehouse)

    def load() -> int:
        return manager.load_input(dg.build_input_context(asset_key=KEY)).version

    manager.handle_output(dg.build_output_context(asset_key=KEY), _model(1, validated=False))
    with pytest.raises(dg.Failure, match="no validated version"):
        load()
    manager.handle_output(dg.build_output_context(asset_key=KEY), _model(2, validated=True))
    manager.handle_output(dg.build_output_context(asset_key=KEY), _model(3, validated=False))
    assert load() == 2
    served = manager.load_input(dg.build_input_context(asset_key=KEY))
    assert served.params == {"seed": 2}
    with warehouse.connect(read_only=True) as con:
        rows = con.execute(
            "SELECT version, validated FROM ml.model_registry ORDER BY version"
        ).fetchall()
    assert rows == [(1, False), (2, True), (3, False)]


def test_a_registry_made_before_the_flag_gets_it(tmp_path: Path) -> None:
    """Versions registered before `validated` existed were all served: they stay so."""
    warehouse = WarehouseResource(path=str(tmp_path / "cip.duckdb"))
    with warehouse.connect() as con:
        con.execute(
            "CREATE SCHEMA ml; CREATE TABLE ml.model_registry (model_name VARCHAR NOT NULL, "
            "version INTEGER NOT NULL, created_at TIMESTAMP NOT NULL, booster VARCHAR NOT NULL, "
            "params JSON NOT NULL, features JSON NOT NULL, windows JSON NOT NULL, "
            "metrics JSON NOT NULL, encodings JSON NOT NULL, PRIMARY KEY (model_name, version))"
        )
        con.execute(
            "INSERT INTO ml.model_registry VALUES ('ml/propensity_model', 1, now()::TIMESTAMP, "
            "?, '{}', '[]', '{}', '{}', '{}')",
            [_booster(4).model_to_string()],
        )
    manager = ModelRegistryIOManager(warehouse=warehouse)
    manager.handle_output(dg.build_output_context(asset_key=KEY), _model(5, validated=False))
    assert manager.load_input(dg.build_input_context(asset_key=KEY)).version == 1
