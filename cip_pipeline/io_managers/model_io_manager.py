"""The model type: a trained LightGBM booster lands in the warehouse's model registry
(`ml.model_registry`, one row per version) in LightGBM's text format, never pickle, with its
parameters, features, windows, metrics and encodings; downstream assets load it back."""

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import lightgbm as lgb

from cip_pipeline import sql
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


@dataclass
class RegisteredModel(TrainedModel):
    name: str = ""
    version: int = 0
    created_at: datetime | None = None


class ModelRegistryIOManager(dg.ConfigurableIOManager):
    warehouse: dg.ResourceDependency[WarehouseResource]

    def handle_output(self, context: dg.OutputContext, obj: TrainedModel) -> None:
        if not isinstance(obj, TrainedModel):
            raise dg.DagsterInvariantViolationError(
                f"{context.asset_key.to_user_string()} must return a TrainedModel"
            )
        name = context.asset_key.to_user_string()
        with self.warehouse.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
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
                    },
                )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        context.add_output_metadata(
            {
                "model_version": dg.MetadataValue.int(int(version)),
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
        version, created_at, booster, params, features, windows, metrics, encodings = rows[0]
        return RegisteredModel(
            booster=lgb.Booster(model_str=booster),
            params=json.loads(params),
            features=json.loads(features),
            windows=json.loads(windows),
            metrics=json.loads(metrics),
            encodings=json.loads(encodings),
            name=name,
            version=int(version),
            created_at=created_at,
        )
