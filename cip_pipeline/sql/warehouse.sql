-- Warehouse-wide definitions, applied by every writing connection (each is idempotent).

-- name: create_types
CREATE TYPE IF NOT EXISTS event_type AS ENUM ('view', 'cart', 'purchase', 'remove_from_cart')

-- name: drop_retired_tables
-- Tables that earlier versions wrote and nothing reads any more: the propensity features'
-- private user-day tables (now core.fact_user_days) and their staging copy (now written
-- snapshot by snapshot). Left in place they would hold gigabytes at full scale.
DROP TABLE IF EXISTS ml.feature_user_days;
DROP TABLE IF EXISTS ml.feature_carts_not_bought;
DROP TABLE IF EXISTS ml.feature_purchase_days;
DROP TABLE IF EXISTS ml.feature_staging
