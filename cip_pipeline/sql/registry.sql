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
    validated BOOLEAN NOT NULL DEFAULT true,
    PRIMARY KEY (model_name, version)
);
-- registries made before the flag: their versions were all served
ALTER TABLE ml.model_registry ADD COLUMN IF NOT EXISTS validated BOOLEAN DEFAULT true;
-- a fingerprint of what the version was trained from (NULL: unknown, never reused)
ALTER TABLE ml.model_registry ADD COLUMN IF NOT EXISTS inputs VARCHAR

-- name: next_version
SELECT coalesce(max(version), 0) + 1 FROM ml.model_registry WHERE model_name = $name

-- name: insert
INSERT INTO ml.model_registry BY NAME
SELECT $name AS model_name, $version AS version, $created_at AS created_at,
       $booster AS booster, $params AS params, $features AS features, $windows AS windows,
       $metrics AS metrics, $encodings AS encodings, $validated AS validated,
       $inputs AS inputs

-- name: latest
-- The newest version that passed its validation: the one scoring uses.
SELECT version, created_at, booster, params, features, windows, metrics, encodings,
       validated
FROM ml.model_registry
WHERE model_name = $name AND validated
ORDER BY version DESC
LIMIT 1

-- name: newest_if_trained_on
-- The newest version, validated or not, when it was trained from exactly these inputs: the
-- same training would register the same booster again.
SELECT version, created_at, booster, params, features, windows, metrics, encodings,
       validated
FROM ml.model_registry
WHERE model_name = $name
  AND version = (SELECT max(version) FROM ml.model_registry WHERE model_name = $name)
  AND inputs = $inputs
