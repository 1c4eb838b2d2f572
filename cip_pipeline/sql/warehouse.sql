-- Warehouse-wide definitions.

-- name: create_types
CREATE TYPE IF NOT EXISTS event_type AS ENUM ('view', 'cart', 'purchase', 'remove_from_cart')
