"""The model type: a trained LightGBM booster lands in the warehouse's model registry
(`ml.model_registry`, one row per version) in LightGBM's text format, never pickle, with its
parameters, features, windows, metrics, encodings and a fingerprint of its training inputs;
downstream assets load it back. A version handed back (`RegisteredModel`) is reused as it is,
not registered again."""

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import lightgbm as lgb

from cip_pipeline import sql
from cip_pipeline.io_managers.tables import transaction
from cip_pipeline.resources import WarehouseResource


@dataclass
class TrainedModel:
    booster: lgb.Booster
    params: dict[str, Any]
    features: list[str]
    windows: dict[str, Any]
    metrics: dict[str, Any]
    encodings: dict[str, Any] = field(default_factory=dict)
    # Passed its validation (for the propensity model: beat every baseline). A version that
    # did not is registered for the record but never loaded for scoring.
    validated: bool = True
    # What it was trained from (data and code), so that the same training is not run twice.
    inputs: str | None = None


@dataclass
class RegisteredModel(TrainedModel):
    name: str = ""
    version: int = 0
    created_at: datetime | None = None


def _registered(name: str, row: tuple[Any, ...]) -> RegisteredModel:
    version, created_at, booster, params, features, windows, metrics, encodings, validated = row
    return RegisteredModel(
        booster=lgb.Booster(model_str=booster),
        params=json.loads(params),
        features=json.loads(features),
        windows=json.loads(windows),
        metrics=json.loads(metrics),
        encodings=json.loads(encodings),
        validated=bool(validated),
        name=name,
        version=int(version),
        created_at=created_at,
    )


def registered_from(warehouse: WarehouseResource, name: str, inputs: str) -> RegisteredModel | None:
    """The newest version of `name` when it was trained from `inputs`, else None."""
    with warehouse.connect() as con:
        con.execute(sql.statement("registry", "create"))
        rows = con.execute(
            sql.statement("registry", "newest_if_trained_on"), {"name": name, "inputs": inputs}
        ).fetchall()
    return _registered(name, rows[0]) if rows else None


class ModelRegistryIOManager(dg.ConfigurableIOManager):
    warehouse: dg.ResourceDependency[WarehouseResource]

    def handle_output(self, context: dg.OutputContext, obj: TrainedModel) -> None:
        if not isinstance(obj, TrainedModel):
            raise dg.DagsterInvariantViolationError(
                f"{context.asset_key.to_user_string()} must return a TrainedModel"
            )
        if isinstance(obj, RegisteredModel):
            context.add_output_metadata(
                {
                    "model_version": dg.MetadataValue.int(obj.version),
                    "registered": "no: this version was reused",
                    "dagster/table_name": "ml.model_registry",
                }
            )
            return
        name = context.asset_key.to_user_string()
        with self.warehouse.connect() as con, transaction(con):
            con.execute(sql.statement("registry", "create"))
            version = con.execute(
                sql.statement("registry", "next_version"), {"name": name}
            ).fetchall()[0][0]
            con.execute(
                sql.statement("registry", "insert"),
                {
                    "name": name,
                    "version": version,
                    "created_at": datetime.now(UTC).replace(tzinfo=None),
                    "booster": obj.booster.model_to_string(),
                    "params": json.dumps(obj.params),
                    "features": json.dumps(obj.features),
                    "windows": json.dumps(obj.windows),
                    "metrics": json.dumps(obj.metrics),
                    "encodings": json.dumps(obj.encodings),
                    "validated": obj.validated,
                    "inputs": obj.inputs,
                },
            )
        context.add_output_metadata(
            {
                "model_version": dg.MetadataValue.int(int(version)),
                "registered": "yes",
                "dagster/table_name": "ml.model_registry",
            }
        )

    def load_input(self, context: dg.InputContext) -> RegisteredModel:
        """The newest validated version."""
        name = context.asset_key.to_user_string()
        with self.warehouse.connect(read_only=True) as con:
            rows = con.execute(sql.statement("registry", "latest"), {"name": name}).fetchall()
        if not rows:
            raise dg.Failure(f"no validated version of {name} in ml.model_registry")
        return _registered(name, rows[0])
