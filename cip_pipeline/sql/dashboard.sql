-- The dashboard's queries (cip_pipeline/dashboard), all read-only. Values are bound as $name
-- parameters, never spliced in. They read the aggregated tables; the few that touch
-- core.events or core.fact_sessions are bounded by a time range (zone maps skip the rest) or
-- by a block sample.

-- Home ------------------------------------------------------------------------------------

-- name: headline
-- Events, users, revenue, orders (purchase events: the data has no order id) and session
-- conversion over every month.
SELECT sum(k.events)::BIGINT AS events,
       (SELECT count(*) FROM core.dim_users) AS users,
       sum(k.revenue)::DOUBLE AS revenue,
       sum(k.purchases)::BIGINT AS orders,
       sum(k.sessions)::BIGINT AS sessions,
       sum(k.converting_sessions) / nullif(sum(k.sessions), 0) AS conversion,
       min(k.day) AS first_day,
       max(k.day) AS last_day
FROM core.fact_daily_kpis AS k

-- name: month_rows
-- Rows of each month by ingest outcome.
SELECT month::DATE AS month,
       coalesce(sum(rows) FILTER (WHERE outcome = 'loaded'), 0)::BIGINT AS loaded,
       coalesce(sum(rows) FILTER (WHERE outcome = 'duplicate'), 0)::BIGINT AS duplicates,
       coalesce(sum(rows) FILTER (WHERE outcome = 'quarantined'), 0)::BIGINT AS quarantined
FROM core.ingest_audit
GROUP BY ALL
ORDER BY month

-- name: catalog
-- Every table of the warehouse; estimated_size is DuckDB's row count estimate.
SELECT schema_name AS schema,
       table_name AS name,
       estimated_size AS rows,
       column_count AS columns
FROM duckdb_tables()
WHERE database_name = current_database() AND NOT internal
ORDER BY schema_name, table_name

-- Data explorer ---------------------------------------------------------------------------

-- name: profile_months
SELECT DISTINCT month FROM analytics.data_profile ORDER BY month

-- name: profile_section
-- One section of a month's data profile (column, event_type, price_by_category, table).
SELECT key, metric, value, value_text
FROM analytics.data_profile
WHERE month = $month AND section = $section
ORDER BY key, metric

-- name: daily_kpis
SELECT day,
       events,
       dau,
       sessions,
       converting_sessions,
       views,
       carts,
       purchases,
       remove_from_carts,
       buyers,
       revenue::DOUBLE AS revenue,
       average_order_value,
       session_conversion_rate
FROM core.fact_daily_kpis
WHERE day >= $start AND day < $end
ORDER BY day

-- name: hourly_events
-- Events per hour and type in [start, end), one day read through the zone maps: every hour
-- and every type the month has (its data profile), 0 where there is none, so a quiet hour or
-- a day without purchases shows as zero instead of a gap.
WITH counts AS (
    SELECT date_trunc('hour', event_time) AS hour,
           event_type::VARCHAR AS event_type,
           count(*) AS events
    FROM core.events
    WHERE event_time >= $start AND event_time < $end
    GROUP BY ALL
),
hours AS (
    SELECT unnest(range($start::TIMESTAMP, $end::TIMESTAMP, INTERVAL 1 HOUR)) AS hour
),
types AS (
    SELECT key AS event_type
    FROM analytics.data_profile
    WHERE month = $month AND section = 'event_type' AND metric = 'events' AND value > 0
    UNION
    SELECT event_type FROM counts
)
SELECT h.hour, t.event_type, coalesce(c.events, 0) AS events
FROM hours AS h
CROSS JOIN types AS t
LEFT JOIN counts AS c USING (hour, event_type)
ORDER BY h.hour, t.event_type

-- name: hour_of_day
-- Events per hour of the day and type over a month, every row read.
SELECT hour(event_time) AS hour_of_day,
       event_type::VARCHAR AS event_type,
       count(*) AS events
FROM core.events
WHERE event_time >= $start AND event_time < $end
GROUP BY ALL
ORDER BY hour_of_day, event_type

-- name: hour_of_day_sampled
-- The same from a 2% block sample (vectors of 2,048 rows, seed fixed), for months too big
-- to read whole on every cache miss; shares by hour are what the page shows.
SELECT hour(event_time) AS hour_of_day,
       event_type::VARCHAR AS event_type,
       count(*) AS events
FROM core.events TABLESAMPLE 2% (system, 42)
WHERE event_time >= $start AND event_time < $end
GROUP BY ALL
ORDER BY hour_of_day, event_type

-- name: ingest_audit
SELECT month::DATE AS month, outcome, reason, rows
FROM core.ingest_audit
ORDER BY month, outcome, reason

-- Optimization ----------------------------------------------------------------------------

-- name: events_columns
SELECT column_name, data_type
FROM information_schema.columns
WHERE table_schema = 'core' AND table_name = 'events'
ORDER BY ordinal_position

-- name: database_size
SELECT block_size, total_blocks, used_blocks, free_blocks, wal_size
FROM pragma_database_size()

-- Executive overview ----------------------------------------------------------------------

-- name: period_headline
SELECT sum(revenue)::DOUBLE AS revenue,
       sum(purchases)::BIGINT AS orders,
       avg(dau)::DOUBLE AS average_dau,
       sum(sessions)::BIGINT AS sessions,
       sum(converting_sessions) / nullif(sum(sessions), 0) AS conversion,
       sum(revenue)::DOUBLE / nullif(sum(purchases), 0) AS average_order_value
FROM core.fact_daily_kpis
WHERE day >= $start AND day < $end

-- name: funnel_period
-- The session funnel of the sessions begun in [start, end), from its per-day rows (each
-- session counts on the day it began, so the days add up to any period).
SELECT step, step_name, sum(sessions)::BIGINT AS sessions
FROM analytics.funnel
WHERE dimension = 'day' AND key::DATE >= $start AND key::DATE < $end
GROUP BY step, step_name
ORDER BY step

-- name: category_conversion_all
-- Per top-level category over every month: sessions, and those that viewed, carted and
-- bought (the funnel's last step).
SELECT key AS category,
       max(sessions) FILTER (WHERE step = 0)::BIGINT AS sessions,
       max(sessions) FILTER (WHERE step = 3)::BIGINT AS converted
FROM analytics.funnel
WHERE dimension = 'category'
GROUP BY key
ORDER BY sessions DESC, category

-- name: category_conversion_period
-- The same for the sessions begun in [start, end), from core.fact_sessions (the funnel table
-- has categories over every month only).
SELECT coalesce(main_category, '(none)') AS category,
       count(*) AS sessions,
       count(*) FILTER (WHERE views > 0 AND has_cart AND has_purchase) AS converted
FROM core.fact_sessions
WHERE start_time >= $start AND start_time < $end
GROUP BY ALL
ORDER BY sessions DESC, category

-- User intelligence -----------------------------------------------------------------------

-- name: rfm_summary
SELECT segment,
       rule_order,
       users,
       user_share,
       average_spend,
       revenue::DOUBLE AS revenue,
       revenue_share,
       average_recency_days,
       average_frequency
FROM analytics.rfm_segment_summary
ORDER BY rule_order

-- name: rfm_landscape
-- A fixed pseudo-random sample of 4,000 buyers: a scatter of every buyer would send hundreds
-- of thousands of points to the browser. The buyers first in a multiplicative hash of their id
-- (Knuth's, modulo 2^32; user ids are INTEGER, so the product fits), so the same buyers give
-- the same sample whatever order rfm_segments was written in (a seeded reservoir sample follows
-- the row order) and whatever the DuckDB version (hash() may change). md5 took 10 times longer.
SELECT user_id, recency_days, frequency, monetary::DOUBLE AS monetary, segment, rfm_code
FROM analytics.rfm_segments
ORDER BY (user_id::UBIGINT * 2654435761) % 4294967296, user_id
LIMIT 4000

-- name: cohort_retention
SELECT cohort_week, weeks_since, cohort_users, active_users, retention_rate, week_complete
FROM analytics.cohort_retention
WHERE cohort_kind = $kind
ORDER BY cohort_week, weeks_since

-- Experiment lab --------------------------------------------------------------------------

-- name: overall_baseline
-- Session conversion and sessions per day: the lab's default baseline and traffic.
SELECT sum(converting_sessions) / nullif(sum(sessions), 0) AS baseline,
       avg(sessions)::DOUBLE AS daily_units,
       sum(sessions)::BIGINT AS sessions
FROM core.fact_daily_kpis

-- name: segment_test_plans
SELECT * FROM experiments.segment_test_plans ORDER BY rowid

-- name: outcome_window
SELECT min(cutoff) AS cutoff, max(window_end) AS window_end, count(*) AS buyers
FROM experiments.segment_outcomes

-- name: reactivation_simulation
SELECT * FROM experiments.reactivation_simulation ORDER BY rowid

-- ML engine -------------------------------------------------------------------------------

-- name: model_versions
-- Every registered version without its booster (the booster is read for one version).
SELECT model_name, version, created_at, params, features, windows, metrics, encodings
FROM ml.model_registry
ORDER BY model_name, version DESC

-- name: model_booster
SELECT booster FROM ml.model_registry WHERE model_name = $model AND version = $version

-- name: score_histogram
-- Users per score bin of width 0.02.
SELECT least(floor(score * 50), 49)::INTEGER AS bin, count(*) AS users
FROM ml.propensity_scores
GROUP BY ALL
ORDER BY bin

-- name: score_deciles
SELECT decile,
       count(*) AS users,
       min(score) AS min_score,
       avg(score) AS mean_score,
       max(score) AS max_score,
       min(model_version) AS model_version,
       max(scored_as_of) AS scored_as_of
FROM ml.propensity_scores
GROUP BY decile
ORDER BY decile

-- name: recommendation_sources
-- How the top 10s were filled, and for how many products each route comes first.
SELECT source,
       count(*) AS recommendations,
       count(*) FILTER (WHERE rank = 1) AS products_led
FROM ml.recommendations
GROUP BY source
ORDER BY recommendations DESC

-- name: recommended_products
-- The most bought products whose best recommendation comes from `source` (rule, co-view or
-- fallback: popular in the category, all a cold-start product gets), for the product picker.
SELECT p.product_id, p.category_code, p.brand, p.purchases, p.views
FROM core.dim_products AS p
SEMI JOIN (
    SELECT product_id FROM ml.recommendations WHERE rank = 1 AND source = $source
) AS r USING (product_id)
ORDER BY p.purchases DESC, p.views DESC, p.product_id
LIMIT 200

-- name: product
SELECT product_id, category_id, category_code, brand, latest_price::DOUBLE AS price,
       views, carts, purchases, first_seen, last_seen
FROM core.dim_products
WHERE product_id = $product

-- name: recommendations_for
-- A product's top 10 with what explains each: the association rule (of the two basket kinds,
-- the one the recommender scored it by: the highest confidence x lift, ties by kind name; all
-- its figures from that one row), co-view sessions (the score), or the category and brand
-- match of a fallback.
WITH rules AS (
    SELECT consequent, basket_kind, pair_baskets, confidence, lift
    FROM ml.product_affinity
    WHERE antecedent = $product
    QUALIFY row_number() OVER (
        PARTITION BY consequent ORDER BY confidence * lift DESC, basket_kind
    ) = 1
),
anchor AS (
    SELECT category_id, brand FROM core.dim_products WHERE product_id = $product
)
SELECT r.rank,
       r.recommended_product_id,
       d.category_code,
       d.brand,
       d.latest_price::DOUBLE AS price,
       r.source,
       r.score,
       rules.basket_kind,
       rules.pair_baskets,
       rules.confidence,
       rules.lift,
       d.category_id = a.category_id AS same_category,
       coalesce(d.brand = a.brand, false) AS same_brand  -- two without a brand share none
FROM ml.recommendations AS r
LEFT JOIN core.dim_products AS d ON d.product_id = r.recommended_product_id
LEFT JOIN rules ON rules.consequent = r.recommended_product_id
LEFT JOIN anchor AS a ON true
WHERE r.product_id = $product
ORDER BY r.rank
