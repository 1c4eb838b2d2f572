-- Analytics: data profile, funnel, cohort retention and RFM segments, over the core tables.
--
-- Placeholders: {events}, {user_days}, {sessions}, {audit}, {rfm} are subqueries over upstream
-- tables handed over by the SQL IO manager; {start} is a TIMESTAMP literal of the partition;
-- {rules} is the RFM rule table below.

-- name: data_profile
-- The month's events profiled as a tidy table, one row per (section, key, metric):
--   table              core.events            rows
--   column             <column>               null_share, distinct_count (non-null values),
--                                             min, max (as text in value_text)
--   event_type         view, cart, ...        events, share
--   price_by_category  <top-level category>   events, min, p25, p50, p75, p95, max
--                      ('(none)': no code)    (linear interpolation between order statistics)
--   ingest             <reason>               loaded / duplicate / quarantined: rows
-- Price quantiles come from the (category, price) histogram: prices have few distinct values,
-- so no list of a month's prices is ever held in memory.
WITH figures AS (
    SELECT count(*) AS rows,
           count(event_time) AS n_event_time,
           min(event_time)::VARCHAR AS lo_event_time,
           max(event_time)::VARCHAR AS hi_event_time,
           count(event_type) AS n_event_type,
           count(product_id) AS n_product_id,
           min(product_id)::VARCHAR AS lo_product_id,
           max(product_id)::VARCHAR AS hi_product_id,
           count(category_id) AS n_category_id,
           min(category_id)::VARCHAR AS lo_category_id,
           max(category_id)::VARCHAR AS hi_category_id,
           count(category_code) AS n_category_code,
           min(category_code) AS lo_category_code,
           max(category_code) AS hi_category_code,
           count(brand) AS n_brand,
           min(brand) AS lo_brand,
           max(brand) AS hi_brand,
           count(price) AS n_price,
           min(price)::VARCHAR AS lo_price,
           max(price)::VARCHAR AS hi_price,
           count(user_id) AS n_user_id,
           min(user_id)::VARCHAR AS lo_user_id,
           max(user_id)::VARCHAR AS hi_user_id,
           count(user_session) AS n_user_session,
           min(user_session)::VARCHAR AS lo_user_session,
           max(user_session)::VARCHAR AS hi_user_session,
           count(*) FILTER (WHERE event_type = 'view') AS t_view,
           count(*) FILTER (WHERE event_type = 'cart') AS t_cart,
           count(*) FILTER (WHERE event_type = 'purchase') AS t_purchase,
           count(*) FILTER (WHERE event_type = 'remove_from_cart') AS t_remove_from_cart
    FROM {events}
),
distincts AS (
    -- one query per column: DuckDB runs several DISTINCT aggregates of one query slower than
    -- the same aggregates apart (the whole profile of a 67 M-row month: 9.7 -> 8.6 s)
    SELECT *
    FROM (SELECT count(DISTINCT event_time) AS d_event_time FROM {events}),
         -- the types' text order from their few distinct values, not a cast of every row
         -- (the enum's order is not alphabetical): 0.7 -> 0.2 s for a 69 M-row month
         (SELECT count(*) AS d_event_type, min(t::VARCHAR) AS lo_event_type,
                 max(t::VARCHAR) AS hi_event_type
          FROM (SELECT DISTINCT event_type AS t FROM {events} WHERE event_type IS NOT NULL)),
         (SELECT count(DISTINCT product_id) AS d_product_id FROM {events}),
         (SELECT count(DISTINCT category_id) AS d_category_id FROM {events}),
         (SELECT count(DISTINCT category_code) AS d_category_code FROM {events}),
         (SELECT count(DISTINCT brand) AS d_brand FROM {events}),
         (SELECT count(DISTINCT price) AS d_price FROM {events}),
         (SELECT count(DISTINCT user_id) AS d_user_id FROM {events}),
         (SELECT count(DISTINCT user_session) AS d_user_session FROM {events})
),
stats AS MATERIALIZED (SELECT * FROM figures, distincts),
columns AS (
    SELECT 'event_time' AS key, 1 AS pos, n_event_time AS non_null, d_event_time AS distinct_count,
           lo_event_time AS lo, hi_event_time AS hi FROM stats
    UNION ALL SELECT 'event_type', 2, n_event_type, d_event_type, lo_event_type, hi_event_type
        FROM stats
    UNION ALL SELECT 'product_id', 3, n_product_id, d_product_id, lo_product_id, hi_product_id
        FROM stats
    UNION ALL SELECT 'category_id', 4, n_category_id, d_category_id, lo_category_id,
        hi_category_id FROM stats
    UNION ALL SELECT 'category_code', 5, n_category_code, d_category_code, lo_category_code,
        hi_category_code FROM stats
    UNION ALL SELECT 'brand', 6, n_brand, d_brand, lo_brand, hi_brand FROM stats
    UNION ALL SELECT 'price', 7, n_price, d_price, lo_price, hi_price FROM stats
    UNION ALL SELECT 'user_id', 8, n_user_id, d_user_id, lo_user_id, hi_user_id FROM stats
    UNION ALL SELECT 'user_session', 9, n_user_session, d_user_session, lo_user_session,
        hi_user_session FROM stats
),
event_types AS (
    SELECT 'view' AS key, 1 AS pos, t_view AS events, rows FROM stats
    UNION ALL SELECT 'cart', 2, t_cart, rows FROM stats
    UNION ALL SELECT 'purchase', 3, t_purchase, rows FROM stats
    UNION ALL SELECT 'remove_from_cart', 4, t_remove_from_cart, rows FROM stats
),
code_prices AS (
    SELECT category_code, price, count(*) AS n FROM {events} GROUP BY category_code, price
),
histogram AS (
    SELECT coalesce(split_part(category_code, '.', 1), '(none)') AS category,
           price::DOUBLE AS price,
           sum(n)::BIGINT AS n
    FROM code_prices
    GROUP BY category, price
),
ranked AS MATERIALIZED (
    SELECT category, price, n,
           (sum(n) OVER (PARTITION BY category ORDER BY price
                         ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) - n)::BIGINT AS below,
           (sum(n) OVER (PARTITION BY category))::BIGINT AS total
    FROM histogram
),
positions AS (
    SELECT c.category, q.metric, q.pos,
           (c.total - 1)::DOUBLE * q.q AS h,
           floor((c.total - 1)::DOUBLE * q.q)::BIGINT AS k_lo,
           ceil((c.total - 1)::DOUBLE * q.q)::BIGINT AS k_hi
    FROM (SELECT DISTINCT category, total FROM ranked) AS c
    CROSS JOIN (VALUES ('min', 2, 0.0), ('p25', 3, 0.25), ('p50', 4, 0.5), ('p75', 5, 0.75),
                       ('p95', 6, 0.95), ('max', 7, 1.0)) AS q(metric, pos, q)
),
-- The k-th smallest price (0-based) is the price of the histogram row with the greatest
-- `below` <= k: an ASOF join, then linear interpolation between the two neighbours.
lower_values AS (
    SELECT p.*, r.price AS lo
    FROM positions AS p
    ASOF JOIN ranked AS r ON p.category = r.category AND p.k_lo >= r.below
),
quantiles AS (
    SELECT l.category, l.metric, l.pos, l.lo + (l.h - l.k_lo) * (r.price - l.lo) AS value
    FROM lower_values AS l
    ASOF JOIN ranked AS r ON l.category = r.category AND l.k_hi >= r.below
),
tidy AS (
    SELECT 'table' AS section, 0 AS section_pos, 'core.events' AS key, 0 AS key_pos,
           'rows' AS metric, 0 AS metric_pos, rows::DOUBLE AS value, NULL AS value_text
    FROM stats
    UNION ALL
    SELECT 'column', 1, c.key, c.pos, 'null_share', 1,
           CASE WHEN s.rows = 0 THEN NULL ELSE 1 - c.non_null / s.rows END, NULL
    FROM columns AS c, stats AS s
    UNION ALL
    SELECT 'column', 1, key, pos, 'distinct_count', 2, distinct_count::DOUBLE, NULL FROM columns
    UNION ALL
    SELECT 'column', 1, key, pos, 'min', 3, NULL, lo FROM columns
    UNION ALL
    SELECT 'column', 1, key, pos, 'max', 4, NULL, hi FROM columns
    UNION ALL
    SELECT 'event_type', 2, key, pos, 'events', 1, events::DOUBLE, NULL FROM event_types
    UNION ALL
    SELECT 'event_type', 2, key, pos, 'share', 2, events / nullif(rows, 0), NULL
    FROM event_types
    UNION ALL
    SELECT DISTINCT 'price_by_category', 3, category, 0, 'events', 1, total::DOUBLE, NULL
    FROM ranked
    UNION ALL
    SELECT 'price_by_category', 3, category, 0, metric, pos, value, NULL FROM quantiles
    UNION ALL
    SELECT 'ingest', 4, reason, 0, outcome, 0, rows::DOUBLE, NULL FROM {audit}
)
SELECT {start} AS month, section, key, metric, value, value_text
FROM tidy
ORDER BY section_pos, key_pos, key, metric_pos, metric

-- name: data_profile_headline
SELECT coalesce(sum(rows) FILTER (WHERE outcome = 'loaded'), 0) AS rows_loaded,
       coalesce(sum(rows) FILTER (WHERE outcome = 'duplicate'), 0) AS rows_duplicate,
       coalesce(sum(rows) FILTER (WHERE outcome = 'quarantined'), 0) AS rows_quarantined
FROM core.ingest_audit
WHERE month >= $start AND month < $end

-- name: event_mix
SELECT event_type::VARCHAR AS event_type, count(*) AS events
FROM core.events
WHERE event_time >= $start AND event_time < $end
GROUP BY ALL
ORDER BY events DESC

-- name: funnel
-- The session-level funnel over every month of core.fact_sessions: sessions (step 0), with a
-- view (1), with a view and a cart (2), with a view, a cart and a purchase (3). Each step
-- keeps only the sessions of the step before, so steps never increase. Sessions count for
-- the day they began and for their main top-level category ('(none)': no event with a code).
--   dimension / key        overall / all, day / YYYY-MM-DD, category / <top-level category>
--   step_conversion        sessions / sessions of the previous step (NULL for step 0)
--   conversion_from_start  sessions / sessions of step 0
WITH s AS (
    SELECT start_time::DATE AS day,
           coalesce(main_category, '(none)') AS category,
           views > 0 AS viewed,
           views > 0 AND has_cart AS carted,
           views > 0 AND has_cart AND has_purchase AS bought
    FROM {sessions}
),
counts AS (
    SELECT CASE WHEN grouping(day) = 0 THEN 'day'
                WHEN grouping(category) = 0 THEN 'category'
                ELSE 'overall' END AS dimension,
           CASE WHEN grouping(day) = 0 THEN strftime(day, '%Y-%m-%d')
                WHEN grouping(category) = 0 THEN category
                ELSE 'all' END AS key,
           count(*) AS s0,
           count(*) FILTER (WHERE viewed) AS s1,
           count(*) FILTER (WHERE carted) AS s2,
           count(*) FILTER (WHERE bought) AS s3
    FROM s
    GROUP BY GROUPING SETS ((), (day), (category))
),
steps AS (
    SELECT dimension, key, 0 AS step, 'session' AS step_name, s0 AS sessions, s0 AS base
    FROM counts
    UNION ALL SELECT dimension, key, 1, 'view', s1, s0 FROM counts
    UNION ALL SELECT dimension, key, 2, 'cart', s2, s0 FROM counts
    UNION ALL SELECT dimension, key, 3, 'purchase', s3, s0 FROM counts
)
SELECT dimension,
       key,
       step,
       step_name,
       sessions,
       sessions / nullif(lag(sessions) OVER (PARTITION BY dimension, key ORDER BY step), 0)
           AS step_conversion,
       sessions / nullif(base, 0) AS conversion_from_start
FROM steps
ORDER BY CASE dimension WHEN 'overall' THEN 0 WHEN 'day' THEN 1 ELSE 2 END, key, step

-- name: funnel_headline
SELECT count(*) AS sessions,
       count(*) FILTER (WHERE views > 0) AS with_view,
       count(*) FILTER (WHERE views > 0 AND has_cart) AS with_cart,
       count(*) FILTER (WHERE views > 0 AND has_cart AND has_purchase) AS with_purchase
FROM core.fact_sessions

-- name: cohort_retention
-- Weekly cohorts (weeks begin on Monday) over every month of core.fact_user_days:
--   activity  cohort = week of the user's first event; active_users = users of the cohort
--             with an event in the week `weeks_since` weeks later
--   purchase  cohort = week of the user's first purchase; active_users = buyers of the cohort
--             who purchased in that week (repeat purchase from week 1 on)
-- One row per cohort and week since, from 0 to the last week of the data (zeros included);
-- retention_rate = active_users / cohort_users. week_complete: each of that week's seven days
-- has data (a user-day): the first and last weeks are usually seen in part, and a week of a
-- month not loaded (or without events) has no data at all, not zero activity.
WITH user_weeks AS MATERIALIZED (
    SELECT user_id,
           date_trunc('week', day)::DATE AS week,
           bool_or(purchases > 0) AS purchased
    FROM {user_days}
    GROUP BY user_id, week
),
complete_weeks AS (
    -- weeks whose seven days all have a user-day (the distinct days: a few hundred rows)
    SELECT date_trunc('week', day)::DATE AS week
    FROM (SELECT DISTINCT day FROM {user_days})
    GROUP BY week
    HAVING count(*) = 7
),
bounds AS (
    SELECT max(week) AS last_week FROM user_weeks
),
firsts AS (
    SELECT user_id,
           min(week) AS first_week,
           min(week) FILTER (WHERE purchased) AS first_purchase_week
    FROM user_weeks
    GROUP BY user_id
),
active AS (
    SELECT 'activity' AS cohort_kind, f.first_week AS cohort_week,
           (w.week - f.first_week) // 7 AS weeks_since, count(*) AS active_users
    FROM user_weeks AS w JOIN firsts AS f USING (user_id)
    GROUP BY ALL
    UNION ALL
    SELECT 'purchase', f.first_purchase_week,
           (w.week - f.first_purchase_week) // 7, count(*)
    FROM user_weeks AS w JOIN firsts AS f USING (user_id)
    WHERE w.purchased
    GROUP BY ALL
),
cohorts AS (
    SELECT cohort_kind, cohort_week, active_users AS cohort_users
    FROM active
    WHERE weeks_since = 0
),
grid AS (
    SELECT c.cohort_kind, c.cohort_week, c.cohort_users,
           unnest(range(0, (b.last_week - c.cohort_week) // 7 + 1))::INTEGER AS weeks_since
    FROM cohorts AS c, bounds AS b
)
SELECT g.cohort_kind,
       g.cohort_week,
       g.weeks_since,
       g.cohort_users,
       coalesce(a.active_users, 0) AS active_users,
       coalesce(a.active_users, 0) / g.cohort_users AS retention_rate,
       w.week IS NOT NULL AS week_complete
FROM grid AS g
LEFT JOIN active AS a USING (cohort_kind, cohort_week, weeks_since)
LEFT JOIN complete_weeks AS w ON w.week = g.cohort_week + 7 * g.weeks_since
ORDER BY g.cohort_kind, g.cohort_week, g.weeks_since

-- name: cohort_headline
-- Over the table just written (the view `written`, see SqlQuery.headline): the share of the
-- cohorts' users active (bought again) one week after their first, over cohorts whose week 1
-- is complete, each of its days with data (a week seen in part, or not at all, would bias it
-- low); NULL when none is.
SELECT min(cohort_week) AS first_week,
       max(cohort_week) AS last_week,
       sum(active_users) FILTER (WHERE cohort_kind = 'activity' AND observed_week_1)
           / sum(cohort_users) FILTER (WHERE cohort_kind = 'activity' AND observed_week_1)
           AS week_1_retention,
       sum(active_users) FILTER (WHERE cohort_kind = 'purchase' AND observed_week_1)
           / sum(cohort_users) FILTER (WHERE cohort_kind = 'purchase' AND observed_week_1)
           AS week_1_repeat_purchase_rate
FROM (SELECT *, weeks_since = 1 AND week_complete AS observed_week_1 FROM written)

-- name: rfm_rules
-- The RFM segment rule table: a buyer gets the segment of the first rule (lowest priority)
-- whose ranges hold its R, F and M scores (5 = best: most recent, most frequent, biggest
-- spender; see rfm_segments). The last rule matches every score, so every buyer has exactly
-- one segment.
--   Champions        recent, frequent, top spenders
--   Loyal Customers  frequent, still buying (not quite top on recency or spend)
--   Cant Lose Them   frequent top spenders who have not bought for a long time
--   At Risk          frequent or big spenders who have not bought for a long time
--   Lost             longest since a purchase, infrequent, low spend
--   Hibernating      not bought for a long time, infrequent, average spend
--   New Customers    bought recently, on one day only (F = 1 is exactly one purchase day)
--   Regular          everyone else: middle recency, not (yet) frequent
SELECT * FROM (VALUES
    (1, 'Champions',       4, 5, 4, 5, 4, 5),
    (2, 'Loyal Customers', 3, 5, 4, 5, 1, 5),
    (3, 'Cant Lose Them',  1, 2, 4, 5, 4, 5),
    (4, 'At Risk',         1, 2, 3, 5, 1, 5),
    (5, 'At Risk',         1, 2, 1, 5, 4, 5),
    (6, 'Lost',            1, 1, 1, 2, 1, 2),
    (7, 'Hibernating',     1, 2, 1, 5, 1, 5),
    (8, 'New Customers',   4, 5, 1, 1, 1, 5),
    (9, 'Regular',         1, 5, 1, 5, 1, 5)
) AS rules(priority, segment, r_min, r_max, f_min, f_max, m_min, m_max)

-- name: rfm_scored
-- The rows of {valued} (r_value, f_value, m_value: each higher = better) with their R, F and
-- M scores as rfm_segments documents them. One definition for the segments and for the
-- propensity features' rfm_score.
SELECT *,
       CASE WHEN r_value = max(r_value) OVER () THEN 5
            ELSE 1 + 5 * (rank() OVER (ORDER BY r_value) - 1) // count(*) OVER ()
       END AS r_score,
       CASE WHEN f_value = 1 THEN 1
            WHEN f_value = max(f_value) OVER () THEN 5
            ELSE greatest(2, 1 + 5 * (rank() OVER (ORDER BY f_value) - 1) // count(*) OVER ())
       END AS f_score,
       CASE WHEN m_value = max(m_value) OVER () THEN 5
            ELSE 1 + 5 * (rank() OVER (ORDER BY m_value) - 1) // count(*) OVER ()
       END AS m_score
FROM {valued}

-- name: rfm_segments
-- One row per buyer (a user with a purchase event in any month):
--   recency_days  calendar days from the last purchase to the end of the data (the last
--                 event_time of core.events, not today)
--   frequency     distinct days with a purchase
--   monetary      sum of purchase prices
--   r/f/m_score   tie-aware quintiles 1..5, 5 = best (most recent, most purchase days, most
--                 spent); equal values always share a score. The best value among buyers
--                 scores 5 however many tie on it (more than a fifth would fall short by the
--                 rule below), any other 1 + floor(5 x the share of buyers with a strictly
--                 worse value), so the worst scores 1. F is 1 for exactly one purchase day
--                 (also when every buyer bought on one day) and at least 2 for more: F = 1
--                 means "bought on one day only" whatever their share. One buyer, or all
--                 tied: R and M 5; F 1 for one purchase day, else 5.
--   segment       from the rule table (rfm_rules)
-- The scores are rfm_scored's, which ml.sql's propensity_snapshot shares (rfm_score = R + F + M
-- as of its cutoff).
WITH purchase_days AS (
    SELECT user_id,
           event_time::DATE AS day,
           max(event_time) AS last_purchase,
           count(*) AS purchases,
           sum(price) AS spend
    FROM {events}
    WHERE event_type = 'purchase'
    GROUP BY user_id, day
),
buyers AS (
    SELECT user_id,
           max(last_purchase) AS last_purchase,
           count(*) AS frequency,
           sum(purchases)::BIGINT AS purchases,
           sum(spend) AS monetary
    FROM purchase_days
    GROUP BY user_id
),
measured AS (
    SELECT b.*, date_diff('day', b.last_purchase::DATE, e.end_of_data::DATE) AS recency_days
    FROM buyers AS b, (SELECT max(event_time) AS end_of_data FROM {events}) AS e
),
valued AS (
    SELECT *, -recency_days AS r_value, frequency AS f_value, monetary AS m_value
    FROM measured
),
scored AS ({rfm_scored}),
segment_of AS (
    SELECT r.r, f.f, m.m, arg_min(rules.segment, rules.priority) AS segment
    FROM range(1, 6) AS r(r)
    CROSS JOIN range(1, 6) AS f(f)
    CROSS JOIN range(1, 6) AS m(m)
    JOIN ({rules}) AS rules
        ON r.r BETWEEN rules.r_min AND rules.r_max
        AND f.f BETWEEN rules.f_min AND rules.f_max
        AND m.m BETWEEN rules.m_min AND rules.m_max
    GROUP BY r.r, f.f, m.m
)
SELECT s.user_id,
       s.last_purchase,
       s.recency_days,
       s.frequency,
       s.purchases,
       s.monetary::DECIMAL(18, 2) AS monetary,
       s.r_score::TINYINT AS r_score,
       s.f_score::TINYINT AS f_score,
       s.m_score::TINYINT AS m_score,
       s.r_score::VARCHAR || s.f_score::VARCHAR || s.m_score::VARCHAR AS rfm_code,
       g.segment
FROM scored AS s
JOIN segment_of AS g ON g.r = s.r_score AND g.f = s.f_score AND g.m = s.m_score

-- name: rfm_headline
-- Over the table just written (the view `written`, see SqlQuery.headline); no buyer: revenue
-- 0, shares NULL (not NaN).
SELECT count(*) AS buyers,
       coalesce(sum(monetary), 0)::DOUBLE AS revenue,
       count(*) FILTER (WHERE segment = 'Champions') / nullif(count(*), 0) AS champions_share,
       count(*) FILTER (WHERE segment = 'Lost') / nullif(count(*), 0) AS lost_share,
       (SELECT max(event_time) FROM core.events) AS end_of_data
FROM written

-- name: rfm_segment_summary
-- One row per segment of the rule table (in rule order), over the buyers of rfm_segments:
-- users, their share of buyers, average and total spend and the share of revenue.
WITH segments AS (
    SELECT segment, min(priority) AS rule_order FROM ({rules}) GROUP BY segment
),
per_segment AS (
    SELECT segment,
           count(*) AS users,
           avg(monetary)::DOUBLE AS average_spend,
           sum(monetary) AS revenue,
           avg(recency_days)::DOUBLE AS average_recency_days,
           avg(frequency)::DOUBLE AS average_frequency
    FROM {rfm}
    GROUP BY segment
),
total AS (
    SELECT count(*) AS users, sum(monetary) AS revenue FROM {rfm}
)
SELECT s.segment,
       s.rule_order,
       coalesce(p.users, 0) AS users,
       coalesce(p.users, 0) / nullif(t.users, 0) AS user_share,
       p.average_spend,
       coalesce(p.revenue, 0)::DECIMAL(18, 2) AS revenue,
       coalesce(p.revenue, 0)::DOUBLE / nullif(t.revenue, 0)::DOUBLE AS revenue_share,
       p.average_recency_days,
       p.average_frequency
FROM segments AS s
LEFT JOIN per_segment AS p USING (segment)
CROSS JOIN total AS t
ORDER BY s.rule_order

-- Checks ----------------------------------------------------------------------------------

-- name: check_data_profile
SELECT (SELECT count(*) - count(DISTINCT (section, key, metric))
        FROM analytics.data_profile WHERE month >= $start AND month < $end) AS duplicated_keys,
       (SELECT count(*) FROM analytics.data_profile
        WHERE month >= $start AND month < $end
          AND metric IN ('null_share', 'share') AND NOT (value BETWEEN 0 AND 1))
           AS shares_out_of_range,
       (SELECT sum(value) FROM analytics.data_profile
        WHERE month >= $start AND month < $end
          AND section = 'event_type' AND metric = 'share') AS event_share_total,
       (SELECT sum(value) FROM analytics.data_profile
        WHERE month >= $start AND month < $end
          AND section = 'price_by_category' AND metric = 'events') AS priced_events,
       (SELECT value FROM analytics.data_profile
        WHERE month >= $start AND month < $end
          AND section = 'table' AND metric = 'rows') AS profiled_rows,
       (SELECT sum(value) FROM analytics.data_profile
        WHERE month >= $start AND month < $end
          AND section = 'ingest' AND metric = 'loaded') AS loaded_rows,
       (SELECT count(*) FROM core.events
        WHERE event_time >= $start AND event_time < $end) AS table_rows

-- name: check_funnel
WITH f AS (SELECT * FROM analytics.funnel),
ordered AS (
    SELECT sessions,
           lag(sessions) OVER (PARTITION BY dimension, key ORDER BY step) AS previous
    FROM f
)
SELECT (SELECT count(*) - count(DISTINCT (dimension, key, step)) FROM f) AS duplicated_keys,
       (SELECT count(*) FROM ordered WHERE sessions > previous) AS increasing_steps,
       (SELECT count(*) FROM f
        WHERE NOT (step_conversion BETWEEN 0 AND 1)
           OR NOT (conversion_from_start BETWEEN 0 AND 1)) AS rates_out_of_range,
       (SELECT sessions FROM f WHERE dimension = 'overall' AND step = 0) AS funnel_sessions,
       (SELECT count(*) FROM core.fact_sessions) AS sessions,
       (SELECT sum(sessions) FROM f WHERE dimension = 'day' AND step = 0) AS day_sessions,
       (SELECT sum(sessions) FROM f WHERE dimension = 'category' AND step = 0)
           AS category_sessions

-- name: check_cohort_retention
-- Each cohort's size against the users whose first day (first purchase day) falls in its
-- week, counted apart from the table's cohorts, from the user-days (whose own checks
-- reconcile their sums with core.events): equal cohorts mean every user and every buyer is
-- in exactly one.
WITH c AS (SELECT * FROM analytics.cohort_retention),
firsts AS (
    SELECT date_trunc('week', min(day))::DATE AS first_week,
           date_trunc('week', min(day) FILTER (WHERE purchases > 0))::DATE
               AS first_purchase_week
    FROM core.fact_user_days
    GROUP BY user_id
),
expected AS (
    SELECT 'activity' AS cohort_kind, first_week AS cohort_week, count(*) AS users
    FROM firsts GROUP BY ALL
    UNION ALL
    SELECT 'purchase', first_purchase_week, count(*)
    FROM firsts WHERE first_purchase_week IS NOT NULL GROUP BY ALL
)
SELECT (SELECT count(*) - count(DISTINCT (cohort_kind, cohort_week, weeks_since)) FROM c)
           AS duplicated_keys,
       (SELECT count(*) FROM c WHERE NOT (retention_rate BETWEEN 0 AND 1)
           OR active_users > cohort_users) AS rates_out_of_range,
       (SELECT count(*)
        FROM (SELECT * FROM c WHERE weeks_since = 0) AS w
        FULL JOIN expected AS e USING (cohort_kind, cohort_week)
        WHERE w.cohort_users IS DISTINCT FROM e.users) AS cohorts_mismatched,
       (SELECT coalesce(sum(users), 0) FROM expected WHERE cohort_kind = 'activity') AS users,
       (SELECT coalesce(sum(users), 0) FROM expected WHERE cohort_kind = 'purchase') AS buyers

-- name: check_rfm_segments
WITH r AS (SELECT * FROM analytics.rfm_segments)
SELECT (SELECT count(*) FROM r) AS rows,
       (SELECT count(DISTINCT user_id) FROM r) AS distinct_users,
       (SELECT count(DISTINCT user_id) FROM core.events WHERE event_type = 'purchase')
           AS buyers,
       (SELECT count(*) FROM r
        WHERE r_score NOT BETWEEN 1 AND 5 OR f_score NOT BETWEEN 1 AND 5
           OR m_score NOT BETWEEN 1 AND 5
           OR r_score IS NULL OR f_score IS NULL OR m_score IS NULL) AS scores_out_of_range,
       (SELECT count(*) FROM r
        WHERE segment IS NULL OR segment NOT IN (SELECT segment FROM ({rules})))
           AS without_segment

-- name: check_rfm_segment_summary
WITH s AS (SELECT * FROM analytics.rfm_segment_summary)
SELECT (SELECT count(*) - count(DISTINCT segment) FROM s) AS duplicated_segments,
       (SELECT sum(user_share) FROM s) AS user_share_total,
       (SELECT sum(revenue_share) FROM s) AS revenue_share_total,
       (SELECT sum(users) FROM s) AS users,
       (SELECT count(*) FROM analytics.rfm_segments) AS buyers,
       (SELECT sum(revenue) FROM s) AS revenue,
       -- 0 without buyers, as the summary's revenue column is
       (SELECT coalesce(sum(monetary), 0) FROM analytics.rfm_segments) AS buyer_revenue
