-- Experiments: what the data says about each RFM segment's next window.

-- name: segment_outcomes
-- Buyers segmented as of the cutoff (the RFM rules over events before it), and what each did
-- in the next window [cutoff, end): bought or not, revenue, and revenue before the cutoff
-- (the CUPED covariate). The cutoff and end are TIMESTAMP literals.
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
       {cutoff} AS cutoff,
       {end} AS window_end
FROM segments AS s
LEFT JOIN next_window AS n USING (user_id)
