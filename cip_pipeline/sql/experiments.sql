-- Experiments: what the data says about each RFM segment's next window.

-- name: segment_outcomes
-- Buyers segmented as of the cutoff (the RFM rules over events before it), and what each did
-- in the next window [cutoff, end): bought or not, revenue, the day of their first visit in
-- it (when a test enrolling members as they visit would meet them), and revenue before the
-- cutoff (the CUPED covariate). The cutoff and end are TIMESTAMP literals.
WITH segments AS ({segments}),
next_window AS (
    SELECT user_id,
           count(*) FILTER (WHERE event_type = 'purchase') > 0 AS bought,
           coalesce(sum(price) FILTER (WHERE event_type = 'purchase'), 0)::DOUBLE AS revenue,
           min(event_time::DATE) AS first_active_day
    FROM core.events
    WHERE event_time >= {cutoff} AND event_time < {end}
    GROUP BY user_id
)
SELECT s.user_id,
       s.segment,
       s.monetary::DOUBLE AS pre_revenue,
       coalesce(n.bought, false) AS bought,
       coalesce(n.revenue, 0) AS revenue,
       n.first_active_day IS NOT NULL AS active,
       n.first_active_day,
       {cutoff} AS cutoff,
       {end} AS window_end
FROM segments AS s
LEFT JOIN next_window AS n USING (user_id)

-- name: outcome_window
-- The outcomes' window [cutoff, window_end): what the planning tables divide traffic by.
SELECT min(cutoff) AS cutoff, max(window_end) AS window_end, count(*) AS buyers
FROM {outcomes}

-- name: segment_figures
-- Per segment, what a test enrolling its members as they visit would meet: the members who
-- visited in the window, their purchase rate and revenue per visitor (sample SD). `users`,
-- the whole segment as of the cutoff, is the most it can ever enrol. No visitor: no rate.
SELECT segment,
       count(*) AS users,
       count(*) FILTER (WHERE active) AS active_users,
       avg(bought::INTEGER) FILTER (WHERE active)::DOUBLE AS baseline_conversion,
       avg(revenue) FILTER (WHERE active)::DOUBLE AS revenue_per_user,
       stddev_samp(revenue) FILTER (WHERE active)::DOUBLE AS revenue_sd
FROM {outcomes}
GROUP BY segment
ORDER BY segment

-- name: segment_arrivals
-- Per segment and day 1..N of the N-day window (days with no new member included): the
-- members whose first visit in the window fell on that day, and the distinct members reached
-- by its end. A fixed group's new arrivals slow down as its members are reached: a test's
-- duration is read off this curve, not off a constant daily rate.
WITH o AS (SELECT segment, first_active_day, cutoff, window_end FROM {outcomes}),
days AS (
    SELECT unnest(range(1, date_diff('day', min(cutoff), max(window_end)) + 1)) AS day FROM o
),
new AS (
    SELECT segment, date_diff('day', cutoff::DATE, first_active_day) + 1 AS day,
           count(*) AS new_members
    FROM o
    WHERE first_active_day IS NOT NULL
    GROUP BY ALL
)
SELECT s.segment,
       d.day,
       coalesce(n.new_members, 0)::BIGINT AS new_members,
       sum(coalesce(n.new_members, 0)) OVER (
           PARTITION BY s.segment ORDER BY d.day
       )::BIGINT AS members_reached
FROM (SELECT DISTINCT segment FROM o) AS s
CROSS JOIN days AS d
LEFT JOIN new AS n ON n.segment = s.segment AND n.day = d.day
ORDER BY s.segment, d.day
