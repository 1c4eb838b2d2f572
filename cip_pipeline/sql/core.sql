-- Core: the star schema over core.events (facts per month, dimensions over all months).
--
-- Placeholders: {events}, {user_days}, {sessions} are subqueries over upstream tables handed
-- over by the SQL IO manager (`SqlTable.select()`); {start}, {end}, ... are TIMESTAMP literals
-- made by the project from the partition window (never from user text).

-- name: boundary_sessions
-- Sessions seen on both sides of the month's two boundaries. A session's id changes after a
-- long pause, so two consecutive events of one session are less than the session gap apart:
-- a session with events on both sides of a boundary has one in each gap-wide window around it
-- (start_gap_from = start - gap, start_gap_to = start + gap, likewise around end).
--   inherited:  began in the previous month, goes on into this one (excluded here, it is a
--               row of the previous month's partition)
--   continuing: began in this month, goes on into the next (its next-month events are read)
WITH inherited AS (
    SELECT user_session FROM {events}
    WHERE event_time >= {start_gap_from} AND event_time < {start} AND user_session IS NOT NULL
    INTERSECT
    SELECT user_session FROM {events}
    WHERE event_time >= {start} AND event_time < {start_gap_to} AND user_session IS NOT NULL
),
continuing AS (
    SELECT user_session FROM {events}
    WHERE event_time >= {end_gap_from} AND event_time < {end} AND user_session IS NOT NULL
    INTERSECT
    SELECT user_session FROM {events}
    WHERE event_time >= {end} AND event_time < {end_gap_to} AND user_session IS NOT NULL
    EXCEPT
    SELECT user_session FROM inherited
)
SELECT 'inherited' AS side, user_session FROM inherited
UNION ALL
SELECT 'continuing' AS side, user_session FROM continuing

-- name: continuing_reach
-- The last next-month event, and the number of next-month events, of the sessions that
-- continue past the month's end, within [{end}, {until}). The asset widens {until} until no
-- continuing session can have a later event (see `core.session_reach`).
WITH boundary AS ({boundary})
SELECT max(e.event_time) AS last_event, count(*) AS events
FROM {events} AS e
SEMI JOIN (SELECT user_session FROM boundary WHERE side = 'continuing') AS c
    ON e.user_session = c.user_session
WHERE e.event_time >= {end} AND e.event_time < {until}

-- name: boundary_counts
WITH boundary AS ({boundary})
SELECT count(*) FILTER (WHERE side = 'inherited') AS inherited,
       count(*) FILTER (WHERE side = 'continuing') AS continuing
FROM boundary

-- name: neighbour_fingerprint
-- What a month's sessions read from the months around it, as order-free hash sums: the
-- sessions inherited from the month before (left out of this one), the next month's events of
-- the sessions that go on into it (up to {until}), and the category map (read over all three
-- months). Recorded when fact_sessions is built; an equal one later means that reloading a
-- neighbouring month left this month's sessions as they are.
WITH boundary AS MATERIALIZED ({boundary}),
parts AS (
    SELECT 'inherited' AS part, hash(user_session) AS h
    FROM boundary
    WHERE side = 'inherited'
    UNION ALL
    SELECT 'continuing',
           hash(e.user_session, e.user_id, e.event_time, e.event_type, e.product_id,
                e.category_id, e.price)
    FROM {events} AS e
    SEMI JOIN (SELECT user_session FROM boundary WHERE side = 'continuing') AS c
        ON e.user_session = c.user_session
    WHERE e.event_time >= {end} AND e.event_time < {until}
    UNION ALL
    SELECT 'categories', hash(category_id, category, category_rank)
    FROM ({top_categories})
)
SELECT coalesce(string_agg(part || ' ' || n || ' ' || total, '; ' ORDER BY part), '')
FROM (SELECT part, count(*) AS n, sum(h) AS total FROM parts GROUP BY part)

-- name: top_categories
-- Each category_id's top-level category: the first segment of its code (REES46 has one code
-- per id; should an id carry several, the alphabetically first), and the category's
-- alphabetical rank. Counting on the integer id and mapping through this small relation is
-- cheaper than grouping on the code's text, and the rank lets ties be broken on an integer:
-- arg_min over (count, text) structs is markedly slower than over one packed integer.
SELECT category_id, category, dense_rank() OVER (ORDER BY category) AS category_rank
FROM (
    SELECT category_id, min(split_part(category_code, '.', 1)) AS category
    FROM {events}
    WHERE category_code IS NOT NULL
    GROUP BY category_id
)

-- name: brand_ranks
-- Each brand's alphabetical rank, so that counts per brand are grouped on an integer and ties
-- are broken on one packed integer (see top_categories).
SELECT brand, row_number() OVER (ORDER BY brand) AS brand_rank
FROM (SELECT DISTINCT brand FROM {events} WHERE brand IS NOT NULL)

-- name: fact_sessions
-- One row per session whose first event lies in the month [{start}, {end}), with all its
-- events: those of the month, and for sessions that continue past the month's end, those of
-- the next month up to {until}. Events without a session belong to no session.
--
-- Three narrow aggregations joined on the session beat one wide cascade (session, product ->
-- category -> session): at 110 M events the wide states spill to disk under the memory
-- budget (measured 3x slower).
--   user_id        the session's user (REES46 sessions have one; should one carry several,
--                  the smallest id)
--   main_category  top-level category (see top_categories) with the most events in the
--                  session; ties go to the alphabetically first; NULL when no event has a
--                  code.
--   cart_abandoned the session carted and bought nothing
--   revenue        sum of the purchase events' prices
--   viewed_products the distinct products viewed, ascending (empty without a view): what
--                  co-view recommendations pair up, kept here so that they read sessions
--                  instead of grouping a month of events again
WITH boundary AS MATERIALIZED ({boundary}),
top_categories AS ({top_categories}),
session_events AS NOT MATERIALIZED (
    SELECT e.user_session, e.user_id, e.event_time, e.event_type, e.product_id,
           e.category_id, e.price
    FROM {events} AS e
    ANTI JOIN (SELECT user_session FROM boundary WHERE side = 'inherited') AS i
        ON e.user_session = i.user_session
    WHERE e.event_time >= {start} AND e.event_time < {end} AND e.user_session IS NOT NULL
    UNION ALL
    SELECT e.user_session, e.user_id, e.event_time, e.event_type, e.product_id,
           e.category_id, e.price
    FROM {events} AS e
    SEMI JOIN (SELECT user_session FROM boundary WHERE side = 'continuing') AS c
        ON e.user_session = c.user_session
    WHERE e.event_time >= {end} AND e.event_time < {until}
),
sessions AS (
    SELECT user_session,
           min(user_id)::INTEGER AS user_id,
           min(event_time) AS start_time,
           max(event_time) AS end_time,
           count(*) AS events,
           count(*) FILTER (WHERE event_type = 'view') AS views,
           count(*) FILTER (WHERE event_type = 'cart') AS carts,
           count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
           count(*) FILTER (WHERE event_type = 'remove_from_cart') AS remove_from_carts,
           coalesce(sum(price) FILTER (WHERE event_type = 'purchase'), 0)::DECIMAL(18, 2)
               AS revenue,
           -- The session's products as codes (product_id * 2, plus 1 for a view), sorted:
           -- distinct products and viewed products are then read off neighbours (below).
           -- One sort and no hashing per session: list_distinct (and count(DISTINCT)) took
           -- 2.2 s for a 3-day span at 110 M events, this 1.25 s. Not << 1: DuckDB refuses
           -- to shift a negative id left, while >> 1 and & 1 read negative codes back.
           list_sort(list(product_id::BIGINT * 2 + coalesce(event_type = 'view', false)::BIGINT))
               AS product_codes
    FROM session_events
    GROUP BY user_session
),
main_categories AS (
    SELECT user_session, arg_min(category, -events * 65536 + category_rank) AS main_category
    FROM (
        SELECT e.user_session, t.category, t.category_rank, count(*) AS events
        FROM session_events AS e JOIN top_categories AS t USING (category_id)
        GROUP BY e.user_session, t.category, t.category_rank
    )
    GROUP BY user_session
)
SELECT s.user_session, s.user_id, s.start_time, s.end_time,
       date_diff('second', s.start_time, s.end_time) AS duration_seconds,
       s.events, s.views, s.carts, s.purchases, s.remove_from_carts,
       len(list_filter(s.product_codes, lambda c, i:
           c IS NOT NULL AND (i = 1 OR c >> 1 <> s.product_codes[i - 1] >> 1)))
           AS distinct_products,
       s.carts > 0 AS has_cart,
       s.purchases > 0 AS has_purchase,
       s.carts > 0 AND s.purchases = 0 AS cart_abandoned,
       s.revenue,
       m.main_category,
       list_transform(
           list_filter(s.product_codes, lambda c, i:
               c & 1 = 1 AND (i = 1 OR c <> s.product_codes[i - 1])),
           lambda c: (c >> 1)::INTEGER) AS viewed_products
FROM sessions AS s LEFT JOIN main_categories AS m USING (user_session)

-- name: fact_sessions_event_coverage
-- The month's events with and without a session, for the fact_sessions materialization.
SELECT count(*) FILTER (WHERE user_session IS NULL) AS events_without_session,
       count(*) FILTER (WHERE user_session IS NOT NULL) AS events_with_session
FROM core.events
WHERE event_time >= $start AND event_time < $end

-- name: fact_sessions_headline
-- Over the partition just written (the view `written`, see SqlQuery.headline).
SELECT sum(revenue)::DOUBLE AS revenue,
       avg(has_purchase::INTEGER) AS session_conversion_rate,
       count(*) FILTER (WHERE cart_abandoned) / nullif(count(*) FILTER (WHERE has_cart), 0)
           AS cart_abandonment_rate,
       median(duration_seconds)::DOUBLE AS median_duration_seconds,
       avg(events) AS mean_events_per_session
FROM written

-- name: user_day_events
-- Events per day of the month, and an order-free hash sum of what the user-day build reads
-- of them: how the build is cut into chunks, and whether a chunk's stored rows still hold.
SELECT date_trunc('day', event_time) AS day,
       count(*) AS events,
       sum(hash(user_id, event_time, event_type, price, product_id, category_id,
                category_code, brand)) AS content
FROM {events}
GROUP BY ALL
ORDER BY day

-- name: fact_user_days
-- One row per user and day with an event: the unit that daily KPIs, user dimensions, cohorts
-- and propensity windows sum over, built once per month instead of each of them aggregating
-- the events again. {events} is a chunk of whole days of the month sized to DuckDB's memory
-- budget: a user-day never spans two chunks, and no pass spills.
--   events .. revenue         the user's events of the day, by type; revenue of purchases
--   first_event, last_event   the day's first and last event; last_cart, first_purchase,
--                             last_purchase likewise (NULL without one)
--   carts_not_bought          distinct products carted that day and not bought that day
--   top_category, top_brand   the day's most viewed top-level category (see top_categories)
--                             and brand; ties go to the alphabetically last; NULL without one
-- The two tops are counted on integer ranks and named at the end (see brand_ranks).
WITH top_categories AS ({top_categories}),
brand_ranks AS ({brand_ranks}),
days AS (
    SELECT user_id,
           event_time::DATE AS day,
           count(*) AS events,
           count(*) FILTER (WHERE event_type = 'view') AS views,
           count(*) FILTER (WHERE event_type = 'cart') AS carts,
           count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
           count(*) FILTER (WHERE event_type = 'remove_from_cart') AS remove_from_carts,
           coalesce(sum(price) FILTER (WHERE event_type = 'purchase'), 0)::DECIMAL(18, 2)
               AS revenue,
           min(event_time) AS first_event,
           max(event_time) AS last_event,
           max(event_time) FILTER (WHERE event_type = 'cart') AS last_cart,
           min(event_time) FILTER (WHERE event_type = 'purchase') AS first_purchase,
           max(event_time) FILTER (WHERE event_type = 'purchase') AS last_purchase
    FROM {events}
    GROUP BY ALL
),
carts_not_bought AS (
    SELECT user_id, day, count(DISTINCT product_id) AS carts_not_bought
    FROM (
        SELECT user_id, event_time::DATE AS day, product_id FROM {events}
        WHERE event_type = 'cart'
    ) AS c
    ANTI JOIN (
        SELECT user_id, event_time::DATE AS day, product_id FROM {events}
        WHERE event_type = 'purchase'
    ) AS p USING (user_id, day, product_id)
    GROUP BY ALL
),
day_category AS (
    SELECT v.user_id, v.day, c.category AS top_category
    FROM (
        SELECT user_id, day, arg_max(category_rank, n * 65536 + category_rank) AS category_rank
        FROM (
            SELECT e.user_id, e.event_time::DATE AS day, t.category_rank, count(*) AS n
            FROM {events} AS e JOIN top_categories AS t USING (category_id)
            WHERE e.event_type = 'view'
            GROUP BY ALL
        )
        GROUP BY ALL
    ) AS v
    JOIN (SELECT DISTINCT category, category_rank FROM top_categories) AS c USING (category_rank)
),
day_brand AS (
    SELECT v.user_id, v.day, r.brand AS top_brand
    FROM (
        SELECT user_id, day, arg_max(brand_rank, n * 1048576 + brand_rank) AS brand_rank
        FROM (
            SELECT e.user_id, e.event_time::DATE AS day, r.brand_rank, count(*) AS n
            FROM {events} AS e JOIN brand_ranks AS r USING (brand)
            WHERE e.event_type = 'view'
            GROUP BY ALL
        )
        GROUP BY ALL
    ) AS v
    JOIN brand_ranks AS r USING (brand_rank)
)
SELECT d.*,
       coalesce(n.carts_not_bought, 0) AS carts_not_bought,
       c.top_category,
       b.top_brand
FROM days AS d
LEFT JOIN carts_not_bought AS n USING (user_id, day)
LEFT JOIN day_category AS c USING (user_id, day)
LEFT JOIN day_brand AS b USING (user_id, day)

-- name: user_days_content
-- core.fact_user_days day by day: rows and an order-free hash sum of every column. What
-- dim_users records it added up, and what the propensity snapshots read.
SELECT day::TIMESTAMP AS day,
       count(*) AS n,
       sum(hash(user_id, day, events, views, carts, purchases, remove_from_carts, revenue,
                first_event, last_event, last_cart, first_purchase, last_purchase,
                carts_not_bought, top_category, top_brand)) AS content
FROM core.fact_user_days
GROUP BY ALL

-- name: fact_daily_kpis
-- One row per day of the month with events. Event figures count the day's events (events
-- without a session included); session figures count the sessions that began that day.
--   dau                      distinct users with an event that day
--   buyers                   distinct users with a purchase that day
--   average_order_value      revenue / purchase events (the data has no order id: each
--                            purchase event is one bought item)
--   view_to_cart_rate        cart events / view events
--   cart_to_purchase_rate    purchase events / cart events
--   session_conversion_rate  sessions with a purchase / sessions
-- Rates are NULL when their denominator is 0.
WITH days AS (
    -- from the user-days, distinct users per day are a count of rows
    SELECT day,
           sum(events)::BIGINT AS events,
           count(*) AS dau,
           sum(views)::BIGINT AS views,
           sum(carts)::BIGINT AS carts,
           sum(purchases)::BIGINT AS purchases,
           sum(remove_from_carts)::BIGINT AS remove_from_carts,
           count(*) FILTER (WHERE purchases > 0) AS buyers,
           sum(revenue) AS revenue
    FROM {user_days}
    GROUP BY day
),
session_days AS (
    SELECT start_time::DATE AS day,
           count(*) AS sessions,
           count(*) FILTER (WHERE has_purchase) AS converting_sessions
    FROM {sessions}
    GROUP BY day
)
SELECT d.day,
       d.events,
       d.dau,
       coalesce(s.sessions, 0) AS sessions,
       coalesce(s.converting_sessions, 0) AS converting_sessions,
       d.views,
       d.carts,
       d.purchases,
       d.remove_from_carts,
       d.buyers,
       d.revenue::DECIMAL(18, 2) AS revenue,
       d.revenue::DOUBLE / nullif(d.purchases, 0) AS average_order_value,
       d.carts / nullif(d.views, 0) AS view_to_cart_rate,
       d.purchases / nullif(d.carts, 0) AS cart_to_purchase_rate,
       coalesce(s.converting_sessions, 0) / nullif(s.sessions, 0) AS session_conversion_rate
FROM days AS d
LEFT JOIN session_days AS s USING (day)
ORDER BY d.day

-- name: month_headline
-- Over the daily KPIs just written (the view `written`, see SqlQuery.headline): the month's
-- figures, with no second pass over its events and sessions. A month without events counts 0
-- of each (sums over no rows are NULL); its rates stay NULL.
WITH m AS (
    SELECT coalesce(sum(events), 0) AS events, coalesce(sum(views), 0) AS views,
           coalesce(sum(carts), 0) AS carts, coalesce(sum(purchases), 0) AS purchases,
           coalesce(sum(revenue), 0)::DOUBLE AS revenue, coalesce(sum(sessions), 0) AS sessions,
           coalesce(sum(converting_sessions), 0) AS converting
    FROM written
)
SELECT events::BIGINT AS month_events,
       purchases::BIGINT AS month_purchases,
       revenue AS month_revenue,
       revenue / nullif(purchases, 0) AS month_average_order_value,
       carts / nullif(views, 0) AS month_view_to_cart_rate,
       purchases / nullif(carts, 0) AS month_cart_to_purchase_rate,
       sessions::BIGINT AS month_sessions,
       converting / nullif(sessions, 0) AS month_session_conversion_rate
FROM m

-- name: dim_products
-- One row per product seen in any month.
--   latest_price   price of the product's latest event (simultaneous events: the highest)
--   category_id, category_code   both of the product's latest event with a code (none has
--                  one: the latest event's id); simultaneous events: the highest id, so that
--                  runs agree
--   brand          of the product's latest event with one (simultaneous: the highest 64-bit
--                  hash of it)
--   category_l1..3 levels of category_code; l3 holds the rest of a deeper code
--                  (electronics.audio.music_tools.piano -> electronics, audio,
--                  music_tools.piano)
--   views, carts, purchases, remove_from_carts, revenue   over its lifetime
-- The tie-breaks cost 1.1 s of 3.2 at 110 M events (2.1 s with arg_max on the time alone, which
-- picks among simultaneous events whichever a thread met first). Their keys are 128-bit
-- integers so that the whole id (hash) breaks a tie: with BIGINT keys only the id's low 20 bits
-- fitted, and two ids sharing them tied. Each key is computed once, below the aggregate.
WITH keyed AS (
    SELECT *,
           -- (has a code, time in microseconds, the whole id): bit 120, bits 64-119, bits
           -- 0-63 (the id offset by 2^63, so never negative). One key picks both id and code,
           -- from one event; events tied on it share the id. A NULL id leaves the key NULL.
           ((category_code IS NOT NULL)::HUGEINT << 120) + (epoch_us(event_time)::HUGEINT << 64)
               + (category_id::HUGEINT + 9223372036854775808) AS category_key,
           -- (time in microseconds, the brand's whole 64-bit hash)
           (epoch_us(event_time)::HUGEINT << 64) + hash(brand)::HUGEINT AS brand_key
    FROM {events}
),
products AS (
    SELECT product_id,
           -- (time, price) packed in one integer (times are whole seconds, prices under 2^30
           -- cents): arg_max over a struct is markedly slower
           arg_max(price, epoch(event_time)::BIGINT * 1073741824 + (price * 100)::BIGINT)
               AS latest_price,
           min(price) AS min_price,
           max(price) AS max_price,
           -- the id is the greatest key's low 64 bits, less the offset: a max, cheaper than a
           -- third arg_max (the statement within 3% of its time with BIGINT keys: 20 M
           -- events, one thread)
           (max(category_key) % 18446744073709551616 - 9223372036854775808)::BIGINT
               AS category_id,
           arg_max(category_code, category_key) AS category_code,
           arg_max(brand, brand_key) FILTER (WHERE brand IS NOT NULL) AS brand,
           min(event_time) AS first_seen,
           max(event_time) AS last_seen,
           count(*) FILTER (WHERE event_type = 'view') AS views,
           count(*) FILTER (WHERE event_type = 'cart') AS carts,
           count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
           count(*) FILTER (WHERE event_type = 'remove_from_cart') AS remove_from_carts,
           coalesce(sum(price) FILTER (WHERE event_type = 'purchase'), 0) AS revenue
    FROM keyed
    GROUP BY product_id
)
SELECT product_id,
       category_id,
       category_code,
       nullif(split_part(category_code, '.', 1), '') AS category_l1,
       nullif(split_part(category_code, '.', 2), '') AS category_l2,
       nullif(array_to_string(string_split(category_code, '.')[3:], '.'), '') AS category_l3,
       brand,
       latest_price,
       min_price,
       max_price,
       first_seen,
       last_seen,
       views,
       carts,
       purchases,
       remove_from_carts,
       revenue::DECIMAL(18, 2) AS revenue
FROM products

-- name: dim_products_headline
-- Over the table just written (the view `written`, see SqlQuery.headline).
SELECT count(*) FILTER (WHERE purchases > 0) AS products_purchased,
       count(*) FILTER (WHERE category_code IS NULL) AS products_without_category_code,
       min(first_seen) AS first_event,
       max(last_seen) AS last_event
FROM written

-- name: dim_users
-- One row per user seen in any month.
--   tenure_days          calendar days from the first to the last day with an event
--   sessions             sessions of the user in core.fact_sessions
--   preferred_category   top-level category (see top_categories) with the most of the
--                        user's events
--   preferred_brand      brand with the most of the user's events
--   (ties of either go to the alphabetically first; NULL when no event has one)
-- The user figures add up the user-days, the purchase figures only the user-days with a
-- purchase (6% of them at 110 M events: four more aggregates per user cost 2 s of 27). The
-- preferences take two narrow passes over the events (counts per (user, category rank),
-- counts per (user, brand rank)), which cost less than one wide pass grouped by (user,
-- category_code, brand): that has several times as many groups as users, and DuckDB runs
-- GROUPING SETS by materializing its input first. Grouping on the integer ranks and naming
-- the winner at the end is a third faster than on the text.
WITH users AS (
    SELECT user_id,
           min(first_event) AS first_seen,
           max(last_event) AS last_seen,
           sum(events)::BIGINT AS events,
           sum(views)::BIGINT AS views,
           sum(carts)::BIGINT AS carts
    FROM {user_days}
    GROUP BY user_id
),
buyers AS (
    SELECT user_id,
           sum(purchases)::BIGINT AS purchases,
           sum(revenue) AS revenue,
           min(first_purchase) AS first_purchase,
           max(last_purchase) AS last_purchase
    FROM {user_days}
    WHERE purchases > 0
    GROUP BY user_id
),
top_categories AS ({top_categories}),
brand_ranks AS ({brand_ranks}),
preferred_category AS (
    SELECT b.user_id, c.category AS preferred_category
    FROM (
        SELECT user_id, arg_min(rank, -events * 65536 + rank) AS rank
        FROM (
            SELECT e.user_id, t.category_rank AS rank, count(*) AS events
            FROM {events} AS e JOIN top_categories AS t USING (category_id)
            GROUP BY ALL
        )
        GROUP BY user_id
    ) AS b
    JOIN (SELECT DISTINCT category, category_rank FROM top_categories) AS c
      ON c.category_rank = b.rank
),
preferred_brand AS (
    SELECT b.user_id, r.brand AS preferred_brand
    FROM (
        SELECT user_id, arg_min(rank, -events * 1048576 + rank) AS rank
        FROM (
            SELECT e.user_id, r.brand_rank AS rank, count(*) AS events
            FROM {events} AS e JOIN brand_ranks AS r USING (brand)
            GROUP BY ALL
        )
        GROUP BY user_id
    ) AS b
    JOIN brand_ranks AS r ON r.brand_rank = b.rank
),
sessions AS (
    SELECT user_id, count(*) AS sessions FROM {sessions} GROUP BY user_id
)
SELECT u.user_id,
       u.first_seen,
       u.last_seen,
       date_diff('day', u.first_seen::DATE, u.last_seen::DATE) AS tenure_days,
       coalesce(s.sessions, 0) AS sessions,
       u.events,
       u.views,
       u.carts,
       coalesce(p.purchases, 0) AS purchases,
       coalesce(p.revenue, 0)::DECIMAL(18, 2) AS revenue,
       p.first_purchase,
       p.last_purchase,
       c.preferred_category,
       b.preferred_brand
FROM users AS u
LEFT JOIN buyers AS p USING (user_id)
LEFT JOIN sessions AS s USING (user_id)
LEFT JOIN preferred_category AS c USING (user_id)
LEFT JOIN preferred_brand AS b USING (user_id)

-- name: dim_users_headline
-- Over the table just written (the view `written`, see SqlQuery.headline).
SELECT count(*) FILTER (WHERE purchases > 0) AS buyers,
       sum(revenue)::DOUBLE AS revenue,
       avg(sessions) AS mean_sessions_per_user
FROM written

-- Checks ----------------------------------------------------------------------------------

-- name: check_sessions_keys
-- Session keys of the month: never null, unique in the month and in every other month.
WITH this_month AS (
    SELECT user_session FROM core.fact_sessions
    WHERE start_time >= $start AND start_time < $end
)
SELECT (SELECT count(*) FROM this_month) AS sessions,
       (SELECT count(*) FROM this_month WHERE user_session IS NULL) AS null_keys,
       (SELECT count(*) FROM (
            SELECT user_session
            FROM core.fact_sessions
            SEMI JOIN this_month USING (user_session)
            GROUP BY user_session
            HAVING count(*) > 1)) AS duplicated_keys

-- name: check_sessions_values
-- Row-level consistency of the month's sessions.
SELECT count(*) FILTER (WHERE NOT (
           events = views + carts + purchases + remove_from_carts
           AND events >= 1
           AND distinct_products BETWEEN 1 AND events
           AND end_time >= start_time
           AND duration_seconds = date_diff('second', start_time, end_time)
           AND has_cart = (carts > 0)
           AND has_purchase = (purchases > 0)
           AND cart_abandoned = (has_cart AND NOT has_purchase)
           AND revenue >= 0
           AND (purchases > 0 OR revenue = 0)
           AND user_id IS NOT NULL)) AS inconsistent_rows
FROM core.fact_sessions
WHERE start_time >= $start AND start_time < $end

-- name: check_sessions_reconcile
-- The month's sessions against core.events, independently of how they were built:
--   * their figures add up to the events that carry their keys (in this month or the next:
--     every session is there with all its events)
--   * every event of the month that has a session lies within the time span of a session row
--     of this month or of the previous one (no event is left out, and no session of the
--     previous month was built before this month's part of it arrived)
WITH keys AS (
    -- a previous month's session matters only if it reaches into this month
    SELECT user_session, start_time, end_time, start_time >= $start AS this_month
    FROM core.fact_sessions
    WHERE start_time >= $previous_start AND start_time < $end AND end_time >= $start
),
tagged AS (
    SELECT e.event_time >= $start AND e.event_time < $end AS in_month,
           k.this_month,
           e.event_time BETWEEN k.start_time AND k.end_time AS covered,
           e.event_type,
           e.price
    FROM core.events AS e
    LEFT JOIN keys AS k USING (user_session)
    WHERE e.event_time >= $start AND e.event_time < $next_end AND e.user_session IS NOT NULL
)
SELECT count(*) FILTER (WHERE this_month) AS events,
       count(*) FILTER (WHERE this_month AND event_type = 'view') AS views,
       count(*) FILTER (WHERE this_month AND event_type = 'cart') AS carts,
       count(*) FILTER (WHERE this_month AND event_type = 'purchase') AS purchases,
       coalesce(sum(price) FILTER (WHERE this_month AND event_type = 'purchase'), 0)
           AS revenue,
       count(*) FILTER (WHERE in_month) AS month_events_with_session,
       count(*) FILTER (WHERE in_month AND covered IS NOT TRUE) AS month_events_outside_sessions
FROM tagged

-- name: sessions_totals
SELECT count(*) AS sessions,
       coalesce(sum(events), 0) AS events,
       coalesce(sum(views), 0) AS views,
       coalesce(sum(carts), 0) AS carts,
       coalesce(sum(purchases), 0) AS purchases,
       coalesce(sum(revenue), 0) AS revenue
FROM core.fact_sessions
WHERE start_time >= $start AND start_time < $end

-- name: check_user_days
-- Keys never null and unique in the month; each row consistent; the month's user-days add up
-- to its core.events (sums of no rows are 0, as the events' counts are: an empty month passes).
WITH u AS (
    SELECT * FROM core.fact_user_days WHERE day >= $start AND day < $end
),
e AS (
    SELECT count(*) AS events,
           count(*) FILTER (WHERE event_type = 'view') AS views,
           count(*) FILTER (WHERE event_type = 'cart') AS carts,
           count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
           coalesce(sum(price) FILTER (WHERE event_type = 'purchase'), 0) AS revenue
    FROM core.events
    WHERE event_time >= $start AND event_time < $end
)
SELECT (SELECT count(*) FILTER (WHERE user_id IS NULL OR day IS NULL) FROM u) AS null_keys,
       (SELECT count(*) FROM (SELECT 1 FROM u GROUP BY user_id, day HAVING count(*) > 1))
           AS duplicated_keys,
       (SELECT count(*) FROM u
        WHERE NOT (events = views + carts + purchases + remove_from_carts
                   AND first_event <= last_event AND first_event::DATE = day
                   AND last_event::DATE = day AND carts_not_bought <= carts
                   AND (purchases > 0) = (first_purchase IS NOT NULL)
                   AND (carts > 0) = (last_cart IS NOT NULL)))
           AS inconsistent_rows,
       (SELECT coalesce(sum(events), 0) FROM u) AS day_events,
       (SELECT events FROM e) AS events,
       (SELECT coalesce(sum(views), 0) FROM u) AS day_views,
       (SELECT views FROM e) AS views,
       (SELECT coalesce(sum(carts), 0) FROM u) AS day_carts,
       (SELECT carts FROM e) AS carts,
       (SELECT coalesce(sum(purchases), 0) FROM u) AS day_purchases,
       (SELECT purchases FROM e) AS purchases,
       (SELECT coalesce(sum(revenue), 0) FROM u) AS day_revenue,
       (SELECT revenue FROM e) AS revenue

-- name: check_daily_kpis
-- Days unique; the month's daily figures add up to core.events and core.fact_sessions.
WITH k AS (
    SELECT * FROM core.fact_daily_kpis WHERE day >= $start AND day < $end
),
e AS (
    SELECT count(*) AS events,
           count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
           coalesce(sum(price) FILTER (WHERE event_type = 'purchase'), 0) AS revenue
    FROM core.events
    WHERE event_time >= $start AND event_time < $end
),
s AS (
    SELECT count(*) AS sessions FROM core.fact_sessions
    WHERE start_time >= $start AND start_time < $end
)
SELECT (SELECT count(*) - count(DISTINCT day) FROM k) AS duplicated_days,
       (SELECT count(*) FILTER (WHERE day IS NULL) FROM k) AS null_days,
       (SELECT coalesce(sum(events), 0) FROM k) AS kpi_events,
       (SELECT events FROM e) AS events,
       (SELECT coalesce(sum(purchases), 0) FROM k) AS kpi_purchases,
       (SELECT purchases FROM e) AS purchases,
       (SELECT coalesce(sum(revenue), 0) FROM k) AS kpi_revenue,
       (SELECT revenue FROM e) AS revenue,
       (SELECT coalesce(sum(sessions), 0) FROM k) AS kpi_sessions,
       (SELECT sessions FROM s) AS sessions

-- name: check_dim_products
SELECT (SELECT count(*) - count(DISTINCT product_id) FROM core.dim_products) AS duplicated_keys,
       (SELECT count(*) FROM core.dim_products WHERE product_id IS NULL) AS null_keys,
       (SELECT count(DISTINCT product_id) FROM core.events
        ANTI JOIN core.dim_products USING (product_id)) AS orphan_products,
       (SELECT count(*) FROM core.dim_products
        WHERE NOT (min_price <= latest_price AND latest_price <= max_price
                   AND first_seen <= last_seen)) AS inconsistent_rows

-- name: check_category_codes
-- Category ids whose products carry more than one category_code, or a code on some and none
-- on others. Sessions, user-days and dim_users find an event's top-level category through its
-- category_id (REES46 has one code per id): such an id would make theirs depend on which
-- events a build read.
SELECT count(*) AS category_ids_with_several_codes,
       coalesce(list(category_id ORDER BY category_id)[1:5], []) AS examples
FROM (
    SELECT category_id FROM core.dim_products
    GROUP BY category_id
    HAVING count(DISTINCT category_code) > 1 OR count(category_code) NOT IN (0, count(*))
)

-- name: check_dim_products_reconcile
SELECT (SELECT coalesce(sum(views), 0) FROM core.dim_products) AS dim_views,
       (SELECT count(*) FILTER (WHERE event_type = 'view') FROM core.events) AS views,
       (SELECT coalesce(sum(carts), 0) FROM core.dim_products) AS dim_carts,
       (SELECT count(*) FILTER (WHERE event_type = 'cart') FROM core.events) AS carts,
       (SELECT coalesce(sum(purchases), 0) FROM core.dim_products) AS dim_purchases,
       (SELECT count(*) FILTER (WHERE event_type = 'purchase') FROM core.events) AS purchases,
       (SELECT coalesce(sum(revenue), 0) FROM core.dim_products) AS dim_revenue,
       (SELECT coalesce(sum(price) FILTER (WHERE event_type = 'purchase'), 0)
        FROM core.events) AS revenue

-- name: check_dim_users
SELECT (SELECT count(*) - count(DISTINCT user_id) FROM core.dim_users) AS duplicated_keys,
       (SELECT count(*) FROM core.dim_users WHERE user_id IS NULL) AS null_keys,
       (SELECT count(DISTINCT user_id) FROM core.events
        ANTI JOIN core.dim_users USING (user_id)) AS orphan_event_users,
       (SELECT count(DISTINCT user_id) FROM core.fact_sessions
        ANTI JOIN core.dim_users USING (user_id)) AS orphan_session_users,
       (SELECT count(*) FROM core.dim_users
        WHERE NOT (first_seen <= last_seen AND tenure_days >= 0
                   AND (purchases > 0) = (first_purchase IS NOT NULL))) AS inconsistent_rows

-- name: check_dim_users_reconcile
SELECT (SELECT coalesce(sum(events), 0) FROM core.dim_users) AS dim_events,
       (SELECT count(*) FROM core.events) AS events,
       (SELECT coalesce(sum(purchases), 0) FROM core.dim_users) AS dim_purchases,
       (SELECT count(*) FILTER (WHERE event_type = 'purchase') FROM core.events) AS purchases,
       (SELECT coalesce(sum(revenue), 0) FROM core.dim_users) AS dim_revenue,
       (SELECT coalesce(sum(price) FILTER (WHERE event_type = 'purchase'), 0)
        FROM core.events) AS revenue,
       (SELECT coalesce(sum(sessions), 0) FROM core.dim_users) AS dim_sessions,
       (SELECT count(*) FROM core.fact_sessions) AS sessions
