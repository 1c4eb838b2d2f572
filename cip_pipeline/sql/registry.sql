-- The model registry: one row per trained version of each model asset.

-- name: create
CREATE SCHEMA IF NOT EXISTS ml;
CREATE TABLE IF NOT EXISTS ml.model_registry (
    model_name VARCHAR NOT NULL,
    version INTEGER NOT NULL,
    created_at TIMESTAMP NOT NULL,
    booster VARCHAR NOT NULL,  -- LightGBM text format
    params JSON NOT NULL,
    features JSON NOT NULL,
    windows JSON NOT NULL,
    metrics JSON NOT NULL,
    encodings JSON NOT NULL,
    PRIMARY KEY (model_name, version)
)

-- name: next_version
SELECT coalesce(max(version), 0) + 1 FROM ml.model_registry WHERE model_name = $name

-- name: insert
INSERT INTO ml.model_registry VALUES
    ($name, $version, $created_at, $booster, $params, $features, $windows, $metrics, $encodings)

-- name: latest
SELECT version, created_at, booster, params, features, windows, metrics, encodings
FROM ml.model_registry
WHERE model_name = $name
ORDER BY version DESC
LIMIT 1
