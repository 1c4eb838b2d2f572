-- Machine learning: propensity features, product affinity and recommendations.

-- name: data_range
SELECT min(event_time), max(event_time) FROM core.events

-- name: event_days
-- The days with user-days (every event has a user), which the snapshots' windows read: a day
-- inside the data without any would read as no purchase and no activity.
SELECT DISTINCT day FROM core.fact_user_days ORDER BY day

-- name: propensity_snapshot
-- One snapshot: a row per user with an event before the cutoff, so that the score snapshot
-- covers every user (a user idle in the window has zero window counts). A training snapshot
-- holds idle users only once its window starts after the first day of the data: with two
-- months (cutoffs 14 to 28 days in) none does, while 31% of the scored users are idle (the
-- 2 M-event sample): the validated fit sees none, the refit the validation snapshot's 11%.
-- Every feature reads only days strictly before the cutoff (a midnight); the label reads only
-- [cutoff, cutoff + horizon). Everything but the sessions comes from core.fact_user_days
-- (all_time: snapshot_all_time; for the score snapshot, the same figures mostly from
-- core.dim_users); sessions from core.fact_sessions, and the part before the cutoff of those
-- going on past it from core.events (straddling_events). One snapshot at a time keeps memory
-- to one snapshot's users. The window's sums run over the window's days alone, apart from the
-- all-time figures: one aggregate over every day with per-row window filters took twice as
-- long (16.0 against 8.5 s for the 110 M score snapshot). The 7-day features lie inside the
-- window (PropensityConfig keeps window_days >= 14).
WITH all_time AS ({all_time}),
in_window AS (
    SELECT user_id,
           sum(events) AS events_w,
           sum(views) AS views_w,
           sum(carts) AS carts_w,
           sum(purchases) AS purchases_w,
           count(*) AS active_days_w,
           min(day) AS first_day_w,
           sum(events) FILTER (WHERE day >= TIMESTAMP '{cutoff}' - INTERVAL 7 DAY) AS events_7d,
           sum(carts) FILTER (WHERE day >= TIMESTAMP '{cutoff}' - INTERVAL 7 DAY) AS carts_7d,
           sum(events) FILTER (WHERE day >= TIMESTAMP '{cutoff}' - INTERVAL 14 DAY
                                 AND day < TIMESTAMP '{cutoff}' - INTERVAL 7 DAY)
               AS events_prev_7d,
           -- over the window's days, the top of the day with most views (then the latest);
           -- (views, day) packed in one integer: arg_max over a struct was 3x the whole query
           arg_max(top_category, views * 100000 + (day::DATE - DATE '1970-01-01'))
               AS primary_category,
           arg_max(top_brand, views * 100000 + (day::DATE - DATE '1970-01-01'))
               AS preferred_brand,
           sum(carts_not_bought) AS carts_not_bought_w
    FROM core.fact_user_days
    WHERE day < TIMESTAMP '{cutoff}'
      AND day >= TIMESTAMP '{cutoff}' - INTERVAL {window_days} DAY
    GROUP BY user_id
),
straddling AS ({straddling_sessions}),
straddling_before AS (
    -- Each session going on past the cutoff as far as it went before it: its end, length and
    -- products there depend on later events (a purchase just after midnight).
    SELECT min(user_id) AS user_id,
           date_diff('second', min(event_time), max(event_time)) AS duration_seconds,
           count(DISTINCT product_id) AS distinct_products
    FROM ({straddling_events})
    GROUP BY user_session
),
sessions AS (
    -- Sessions started in the window, each as far as it went before the cutoff. Breadth as
    -- products per session, summed: it ranks users as the per-day distinct count did
    -- (Spearman 0.9998 at 110 M, same validation PR-AUC), and fact_sessions holds it
    -- already, where the per-day count was a third of the user-days.
    SELECT user_id,
           count(*) AS sessions_w,
           avg(duration_seconds) AS avg_session_seconds,
           sum(distinct_products) AS session_products_w
    FROM (
        SELECT user_id, duration_seconds, distinct_products
        FROM core.fact_sessions
        WHERE end_time < TIMESTAMP '{cutoff}'
          AND start_time >= TIMESTAMP '{cutoff}' - INTERVAL {window_days} DAY
        UNION ALL
        SELECT user_id, duration_seconds, distinct_products
        FROM straddling_before
    )
    GROUP BY ALL
),
labels AS (
    SELECT DISTINCT user_id, true AS purchased
    FROM core.fact_user_days
    WHERE {labelled} AND purchases > 0
      AND day >= TIMESTAMP '{cutoff}'
      AND day < TIMESTAMP '{cutoff}' + INTERVAL {horizon_days} DAY
),
rfm_valued AS (
    -- RFM as of the cutoff, among users who bought before it: each value higher = better
    SELECT user_id,
           last_purchase_day AS r_value,
           purchase_days_all AS f_value,
           revenue_all AS m_value
    FROM all_time
    WHERE purchases_all > 0
),
rfm_scored AS ({rfm_scored}),
rfm AS (
    SELECT user_id, r_score + f_score + m_score AS rfm_score FROM rfm_scored
)
SELECT TIMESTAMP '{cutoff}' AS snapshot,
       '{role}' AS role,
       -- the plan, so that the model can record the windows it was trained on
       {horizon_days} AS horizon_days,
       {window_days} AS window_days,
       h.user_id,
       coalesce(w.events_w, 0) AS events_w,
       coalesce(w.views_w, 0) AS views_w,
       coalesce(w.carts_w, 0) AS carts_w,
       coalesce(w.purchases_w, 0) AS purchases_w,
       coalesce(s.sessions_w, 0) AS sessions_w,
       s.avg_session_seconds,
       coalesce(s.session_products_w, 0) AS session_products_w,
       coalesce(w.active_days_w, 0) AS active_days_w,
       coalesce(date_diff('day', w.first_day_w, h.last_day) + 1, 0) AS active_span_days,
       coalesce(w.events_7d, 0) AS events_7d,
       coalesce(w.carts_7d, 0) AS carts_7d,
       coalesce(w.events_prev_7d, 0) AS events_prev_7d,
       coalesce(w.events_7d, 0) - coalesce(w.events_prev_7d, 0) AS events_trend,
       date_diff('second', h.last_event, TIMESTAMP '{cutoff}') / 86400.0 AS recency_days,
       date_diff('second', h.last_cart, TIMESTAMP '{cutoff}') / 86400.0 AS days_since_cart,
       date_diff('day', h.first_day, TIMESTAMP '{cutoff}') AS tenure_days,
       coalesce(w.carts_not_bought_w, 0) AS carts_not_bought_w,
       h.purchases_all > 0 AS prior_purchase,
       h.purchases_all, h.revenue_all,
       coalesce(r.rfm_score, 0) AS rfm_score,
       w.primary_category, w.preferred_brand,
       CASE WHEN {labelled} THEN coalesce(l.purchased, false) END AS label
FROM all_time AS h
LEFT JOIN in_window AS w USING (user_id)
LEFT JOIN sessions AS s USING (user_id)
LEFT JOIN rfm AS r USING (user_id)
LEFT JOIN labels AS l USING (user_id)

-- name: straddling_sessions
-- Sessions started in a snapshot's window that go on at or after its cutoff (a few: those
-- around its midnight).
SELECT user_session, start_time
FROM core.fact_sessions
WHERE start_time < TIMESTAMP '{cutoff}'
  AND start_time >= TIMESTAMP '{cutoff}' - INTERVAL {window_days} DAY
  AND end_time >= TIMESTAMP '{cutoff}'

-- name: straddling_events
-- Their events before the cutoff (straddling: a CTE of straddling_sessions). DuckDB pushes the
-- earliest start into the scan of core.events as a filter, and the few sessions as a list:
-- it reads the row groups of the last hours before the cutoff (2 of 18 on the sample).
SELECT e.user_session, e.user_id, e.event_time, e.product_id
FROM core.events AS e
JOIN straddling AS s USING (user_session)
WHERE e.event_time < TIMESTAMP '{cutoff}'
  AND e.event_time >= s.start_time
  AND e.event_time >= (SELECT min(start_time) FROM straddling)

-- name: straddling_input
-- What a snapshot reads of core.events (straddling_events), as an order-free hash sum.
WITH straddling AS ({straddling_sessions})
SELECT count(*) AS n,
       coalesce(sum(hash(user_session, user_id, event_time, product_id)), 0) AS content
FROM ({straddling_events})

-- name: snapshot_all_time
-- A snapshot's all-time figures per user: every user-day before the cutoff.
SELECT user_id,
       min(day) AS first_day,
       max(day) AS last_day,
       max(last_event) AS last_event,
       max(last_cart) AS last_cart,
       sum(purchases)::BIGINT AS purchases_all,
       sum(revenue)::DOUBLE AS revenue_all,  -- summed exactly, as DECIMAL
       count(*) FILTER (WHERE purchases > 0) AS purchase_days_all,
       max(day) FILTER (WHERE purchases > 0) AS last_purchase_day
FROM core.fact_user_days
WHERE day < TIMESTAMP '{cutoff}'
GROUP BY user_id

-- name: snapshot_all_time_of_dim_users
-- The same figures for a cutoff after the last day of the data (the score snapshot): what
-- core.dim_users adds up of every user-day already, and the last cart and the purchase days
-- from the user-days that have a cart or a purchase (a sixth of them). Grouping all 21 M
-- user-days again took 12.2-13.3 s for that snapshot at 110 M events, this 9.8-10.8 s
-- (the same rows).
SELECT u.user_id,
       u.first_seen::DATE AS first_day,
       u.last_seen::DATE AS last_day,
       u.last_seen AS last_event,
       d.last_cart,
       u.purchases AS purchases_all,
       u.revenue::DOUBLE AS revenue_all,
       coalesce(d.purchase_days, 0) AS purchase_days_all,
       u.last_purchase::DATE AS last_purchase_day
FROM core.dim_users AS u
LEFT JOIN (
    SELECT user_id,
           max(last_cart) AS last_cart,
           count(*) FILTER (WHERE purchases > 0) AS purchase_days
    FROM core.fact_user_days
    WHERE carts > 0 OR purchases > 0
    GROUP BY user_id
) AS d USING (user_id)

-- name: snapshot_input_days
-- What the propensity snapshots read, day by day, as order-free hash sums: core.fact_user_days
-- by its day (user_days_content in core.sql), core.fact_sessions by the day each session
-- starts. A snapshot's fingerprint sums the days before its cutoff (and, when labelled,
-- before the end of its label window).
SELECT 'user_days' AS source, day, n, content
FROM ({user_days_content})
UNION ALL
SELECT 'sessions', date_trunc('day', start_time), count(*),
       sum(hash(user_session, user_id, start_time, end_time, duration_seconds,
                distinct_products))
FROM core.fact_sessions
GROUP BY ALL

-- name: feature_sample
-- A reproducible uniform sample of one snapshot (hash of user and snapshot), in user order:
-- the table's row order varies between builds, and LightGBM's bagging follows row order.
SELECT *
FROM ml.propensity_features
WHERE snapshot = TIMESTAMP '{snapshot}'
  AND hash(user_id, snapshot) % 1000000 < {per_million}
ORDER BY user_id

-- name: snapshot_sizes
-- idle: users with no event in the feature window
SELECT snapshot, role, count(*) AS users, count(*) FILTER (WHERE label) AS positives,
       count(*) FILTER (WHERE events_w = 0) AS idle,
       min(horizon_days) AS horizon_days, min(window_days) AS window_days
FROM ml.propensity_features
GROUP BY ALL
ORDER BY snapshot

-- name: create_scoring_staging
-- Scores land here batch by batch before the IO manager publishes them in one transaction.
CREATE OR REPLACE TABLE ml.scoring_staging (user_id INTEGER, snapshot TIMESTAMP, score DOUBLE)

-- name: scoring_rows
-- Read as a stream of batches: one scan, one batch of users in Python at a time.
SELECT *
FROM ml.propensity_features
WHERE role = 'score'

-- name: scores_from_staging
-- Deciles by rank, ties sharing the first one's: users the model scores alike get one
-- decile (the sample had 14% of its users on one score, which ntile split over three by
-- user_id). Without ties a decile holds a tenth of the users; a tie lies whole in the decile
-- where it starts, so that one holds more and those it runs into fewer, none when it covers
-- one whole.
SELECT user_id,
       snapshot AS scored_as_of,
       score,
       1 + 10 * (rank() OVER (ORDER BY score DESC) - 1) // count(*) OVER () AS decile,
       {version} AS model_version
FROM ml.scoring_staging

-- name: baskets
-- Purchase baskets of events before cutoff: each session's distinct purchased products,
-- and each user's purchases in one bucket of horizon days counted from the Unix epoch
-- (fixed buckets: two purchases a day apart fall in two baskets across a boundary). Baskets
-- of more than max basket products (bulk buyers) are left out: their pairs would swamp the
-- counts.
WITH purchases AS (
    SELECT DISTINCT user_session, user_id, product_id,
           floor(epoch(event_time) / (86400 * {horizon_days}))::BIGINT AS horizon_bucket
    FROM core.events
    WHERE event_type = 'purchase' AND event_time < TIMESTAMP '{cutoff}'
),
all_baskets AS (
    SELECT DISTINCT 'session' AS basket_kind, user_session::VARCHAR AS basket, product_id
    FROM purchases WHERE user_session IS NOT NULL
    UNION ALL
    SELECT DISTINCT 'user_horizon', user_id::VARCHAR || ':' || horizon_bucket::VARCHAR,
           product_id
    FROM purchases
)
SELECT basket_kind, basket, product_id
FROM all_baskets
QUALIFY count(*) OVER (PARTITION BY basket_kind, basket) <= {max_basket}

-- name: rules
-- Association rules A -> B over the baskets: support, confidence and lift, both directions.
WITH baskets AS ({baskets}),
n AS (
    SELECT basket_kind, count(DISTINCT basket) AS baskets FROM baskets GROUP BY ALL
),
items AS (
    SELECT basket_kind, product_id, count(*) AS n_item FROM baskets GROUP BY ALL
),
pairs AS (
    SELECT a.basket_kind, a.product_id AS a, b.product_id AS b, count(*) AS n_pair
    FROM baskets AS a
    JOIN baskets AS b
      ON a.basket_kind = b.basket_kind AND a.basket = b.basket AND a.product_id < b.product_id
    GROUP BY ALL
    HAVING count(*) >= {min_pair_support}
),
directed AS (
    SELECT basket_kind, a AS antecedent, b AS consequent, n_pair FROM pairs
    UNION ALL
    SELECT basket_kind, b, a, n_pair FROM pairs
)
SELECT d.basket_kind,
       d.antecedent,
       d.consequent,
       d.n_pair AS pair_baskets,
       d.n_pair / n.baskets AS support,
       d.n_pair / ia.n_item AS confidence,
       d.n_pair * n.baskets / (ia.n_item * ic.n_item) AS lift
FROM directed AS d
JOIN n USING (basket_kind)
JOIN items AS ia ON ia.basket_kind = d.basket_kind AND ia.product_id = d.antecedent
JOIN items AS ic ON ic.basket_kind = d.basket_kind AND ic.product_id = d.consequent
WHERE d.n_pair * n.baskets / (ia.n_item * ic.n_item) >= {min_lift}

-- name: recommendations
-- Top 10 per product before cutoff: rules first, topped up from co-views, then topped up to
-- 10 from the same category and brand by popularity, then the same category (fallback). A
-- cold-start product (no rule, no co-view) gets the fallback alone; any product short of 10
-- gets it after its own. rules is a relation of rules computed with the same cutoff.
WITH products AS (
    SELECT product_id,
           any_value(category_id) AS category_id,
           any_value(brand) AS brand,
           count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
           count(*) FILTER (WHERE event_type = 'view') AS views
    FROM core.events
    WHERE event_time < TIMESTAMP '{cutoff}'
    GROUP BY ALL
),
from_rules AS (
    SELECT antecedent AS product_id, consequent AS recommended_product_id,
           max(confidence * lift) AS score, 'rule' AS source, 1 AS tier
    FROM {rules}
    GROUP BY ALL
),
session_products AS (
    -- Sessions of the last four weeks that viewed 2 to max_session_views products, over before
    -- the cutoff: co-views are about what is browsed together now, and long sessions add
    -- pairs quadratically. fact_sessions holds each session's distinct viewed products, so no
    -- month of events is grouped again here (13.3 s over November at 110 M events).
    SELECT viewed_products AS products
    FROM core.fact_sessions
    WHERE end_time < TIMESTAMP '{cutoff}'
      AND start_time >= (SELECT max(event_time) FROM core.events
                         WHERE event_time < TIMESTAMP '{cutoff}') - INTERVAL 28 DAY
      AND len(viewed_products) BETWEEN 2 AND {max_session_views}
),
co_view_pairs AS (
    -- Each unordered pair once per session, from the session's own list, then both
    -- directions. The self-join of session views this replaces needed one 512 MiB block
    -- for its hash table (out of memory once at 110 M events) and took 49.9 s, this 15-20 s
    -- (packing the pair in one BIGINT was no faster).
    SELECT a, b, count(*) AS n
    FROM (
        SELECT a, unnest(list_filter(products, lambda p: p > a)) AS b
        FROM (SELECT unnest(products) AS a, products FROM session_products)
    )
    GROUP BY ALL
    HAVING count(*) >= 2
),
co_view_directed AS NOT MATERIALIZED (
    -- both directions, read twice below: storing them once cost more than the second read
    SELECT a AS product_id, b AS recommended_product_id, n FROM co_view_pairs
    UNION ALL
    SELECT b, a, n FROM co_view_pairs
),
co_view_floor AS (
    -- A lower bound of each product's 10th highest count, from a few thresholds: only its
    -- pairs at or above it can be in its top 10, so the window below sorts a fraction of
    -- the directed pairs (35 M at 110 M events: 4.2 -> 2.2 s, the same rows). A top-10
    -- aggregate was faster still but ran out of memory under the budget.
    SELECT product_id,
           CASE WHEN count(*) FILTER (WHERE n >= 32) >= 10 THEN 32
                WHEN count(*) FILTER (WHERE n >= 16) >= 10 THEN 16
                WHEN count(*) FILTER (WHERE n >= 8) >= 10 THEN 8
                WHEN count(*) FILTER (WHERE n >= 4) >= 10 THEN 4
                WHEN count(*) FILTER (WHERE n >= 3) >= 10 THEN 3
                ELSE 0 END AS least
    FROM co_view_directed
    GROUP BY product_id
),
co_views AS (
    SELECT product_id, recommended_product_id, n::DOUBLE AS score, 'co-view' AS source,
           2 AS tier
    FROM co_view_directed JOIN co_view_floor USING (product_id)
    WHERE n >= least
    QUALIFY row_number() OVER (PARTITION BY product_id ORDER BY n DESC,
                               recommended_product_id) <= 10
),
popular AS (
    -- Candidates chosen by the popularity they are then ranked by: chosen by purchases first,
    -- a product of many views could rank first and yet not be among them.
    SELECT product_id, category_id, brand, popularity,
           row_number() OVER (PARTITION BY category_id, brand
                              ORDER BY popularity DESC, product_id) AS brand_rank,
           row_number() OVER (PARTITION BY category_id
                              ORDER BY popularity DESC, product_id) AS category_rank
    FROM (SELECT *, purchases + views / 100.0 AS popularity FROM products)
),
fallback AS (
    -- Same brand only when both have one: products without a brand share no brand (they go
    -- by category alone).
    SELECT p.product_id, q.product_id AS recommended_product_id, q.popularity AS score,
           'fallback' AS source, CASE WHEN q.brand = p.brand THEN 3 ELSE 4 END AS tier
    FROM products AS p
    JOIN popular AS q
      ON q.category_id = p.category_id AND q.product_id <> p.product_id
     AND ((q.brand = p.brand AND q.brand_rank <= 11) OR q.category_rank <= 11)
),
candidates AS (
    SELECT * FROM from_rules
    UNION ALL SELECT * FROM co_views
    UNION ALL SELECT * FROM fallback
),
best AS (
    -- a product reached by several routes keeps its best tier
    SELECT product_id, recommended_product_id, arg_min(source, tier) AS source,
           min(tier) AS tier, arg_min(score, tier) AS score
    FROM candidates
    WHERE product_id <> recommended_product_id
    GROUP BY ALL
)
SELECT product_id, recommended_product_id,
       row_number() OVER (PARTITION BY product_id ORDER BY tier, score DESC,
                          recommended_product_id) AS rank,
       score, source
FROM best
QUALIFY rank <= 10

-- name: recommendations_headline
-- Over the rows written: the products of core.events (those recommendations are made for),
-- how many got none (alone in their category, with no rule or co-view) and how many got 1 to
-- 9. Aggregates without GROUP BY: one row even when nothing was written.
SELECT p.products,
       p.products - r.recommended AS products_without_recommendations,
       r.short AS products_short_of_10
FROM (SELECT count(DISTINCT product_id) AS products FROM core.events) AS p,
     (SELECT count(*) AS recommended, count(*) FILTER (WHERE n < 10) AS short
      FROM (SELECT product_id, count(*) AS n FROM written GROUP BY ALL)) AS r

-- name: evaluation_input_fingerprint
-- Every event and session the offline evaluation reads (all before the cutoff plus the
-- horizon after it), as order-free hash sums of the columns it uses.
SELECT count(*) AS n,
       coalesce(sum(hash(event_time, event_type, product_id, category_id, brand, price,
                         user_id, user_session)), 0) AS content
FROM core.events
WHERE event_time < TIMESTAMP '{until}'
UNION ALL
SELECT count(*), coalesce(sum(hash(start_time, end_time, viewed_products)), 0)
FROM core.fact_sessions
WHERE start_time < TIMESTAMP '{until}'

-- name: recommendation_eval
-- Out of time: users who bought in [cutoff, cutoff + horizon); the query product is the last
-- product they touched before the cutoff. Hit rate and recall at 10 of recs against the 10
-- products most bought before the cutoff other than the anchor, both on the same targets:
-- the next window's purchases other than the anchor, which recs never hold for itself. Users
-- who bought only their anchor drop out, as do buyers with no event before the cutoff (no
-- anchor: nothing to recommend from); both are counted.
WITH next_purchases AS (
    SELECT DISTINCT user_id, product_id
    FROM core.events
    WHERE event_type = 'purchase' AND event_time >= TIMESTAMP '{cutoff}'
      AND event_time < TIMESTAMP '{cutoff}' + INTERVAL {horizon_days} DAY
),
anchors AS (
    -- (time, product) packed in one integer: events of the same second break ties alike in
    -- every run (arg_max over a struct is markedly slower)
    SELECT user_id,
           arg_max(product_id, epoch(event_time)::BIGINT * 2147483648 + product_id) AS anchor
    FROM core.events
    WHERE event_time < TIMESTAMP '{cutoff}'
      AND user_id IN (SELECT user_id FROM next_purchases)
    GROUP BY ALL
),
popular AS (
    -- the 11 most bought: a user's 10 are the first 10 other than their anchor, which recs
    -- never hold either (so both offer 10 products that can be targets)
    SELECT product_id, row_number() OVER (ORDER BY count(*) DESC, product_id) AS rank
    FROM core.events
    WHERE event_type = 'purchase' AND event_time < TIMESTAMP '{cutoff}'
    GROUP BY product_id
    QUALIFY rank <= 11
),
per_user AS (
    -- recs has one row per (product, recommended product): the joins add no rows
    SELECT a.user_id,
           count(*) FILTER (WHERE n.product_id <> a.anchor) AS bought,
           count(r.recommended_product_id) AS rec_hits,
           count(p.product_id) FILTER (WHERE n.product_id <> a.anchor) AS popular_hits,
           count(*) FILTER (WHERE n.product_id = a.anchor) AS anchor_bought
    FROM anchors AS a
    JOIN next_purchases AS n USING (user_id)
    LEFT JOIN {recs} AS r ON r.product_id = a.anchor AND r.recommended_product_id = n.product_id
    LEFT JOIN popular AS pa ON pa.product_id = a.anchor
    LEFT JOIN popular AS p
      ON p.product_id = n.product_id AND (p.rank <= 10 OR coalesce(pa.rank <= 10, false))
    GROUP BY ALL
)
SELECT count(*) FILTER (WHERE bought > 0) AS users,
       avg((rec_hits > 0)::INT) FILTER (WHERE bought > 0) AS hit_rate_at_10,
       sum(rec_hits) / sum(bought) AS recall_at_10,
       avg((popular_hits > 0)::INT) FILTER (WHERE bought > 0) AS popular_hit_rate_at_10,
       sum(popular_hits) / sum(bought) AS popular_recall_at_10,
       sum(anchor_bought) AS anchor_purchases_excluded,
       count(*) FILTER (WHERE bought = 0) AS users_only_anchor_excluded,
       (SELECT count(DISTINCT user_id) FROM next_purchases) - count(*)
           AS users_without_anchor_excluded
FROM per_user
