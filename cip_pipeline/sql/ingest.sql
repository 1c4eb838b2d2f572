-- Ingest: from the month's validated Parquet to the warehouse.

-- name: hashed_copy_rows
-- The rows of a part that may be exact duplicates (all nine fields equal), by file_row_number:
-- those whose hash repeats. For a part the write could not check (reader._CopyFinder).
WITH hashed AS (
    SELECT file_row_number,
           hash(event_time, event_type, product_id, category_id, category_code, brand,
                price, user_id, user_session) AS h
    FROM read_parquet({events_parquet}, file_row_number = true)
)
SELECT file_row_number FROM hashed
WHERE h IN (SELECT h FROM hashed GROUP BY h HAVING count(*) > 1)

-- name: duplicate_candidates
-- The rows of a part that may be exact duplicates, for later_copies: those whose
-- file_row_number copy_rows lists, as the write found them (reader._CopyFinder) or as
-- hashed_copy_rows does.
-- The exact comparison is left to later_copies, over these few rows.
SELECT 1 AS source, e.*
FROM read_parquet({events_parquet}, file_row_number = true) AS e
SEMI JOIN {copy_rows} AS c USING (file_row_number)

-- name: appended_duplicate_candidates
-- The same for a part read from bytes appended to the raw file, whose rows may also copy a
-- row of an earlier part of the month ({earlier_parquet}; source 0). Exact copies share the
-- event time, so the earlier parts are read over the part's time range only, from the few
-- row groups that cover it.
WITH part AS (
    SELECT *,
           hash(event_time, event_type, product_id, category_id, category_code, brand,
                price, user_id, user_session) AS h
    FROM read_parquet({events_parquet}, file_row_number = true)
),
earlier AS (
    SELECT *,
           hash(event_time, event_type, product_id, category_id, category_code, brand,
                price, user_id, user_session) AS h
    FROM read_parquet({earlier_parquet})
    WHERE event_time BETWEEN {first_time} AND {last_time}
)
SELECT 0 AS source, -1::BIGINT AS file_row_number, * EXCLUDE (h)
FROM earlier
WHERE h IN (SELECT h FROM part)
UNION ALL
SELECT 1, file_row_number, * EXCLUDE (h, file_row_number)
FROM part
WHERE h IN (SELECT h FROM earlier)
   OR h IN (SELECT h FROM part GROUP BY h HAVING count(*) > 1)

-- name: later_copies
-- Exact duplicates among the candidates (rows of the part, source 1, after those of earlier
-- parts, source 0; a statement above), compared on their nine typed values (so a price of 7
-- and one of 7.00 are equal): every copy of the part after the first, by Parquet row, with a
-- line rebuilt from those values (the raw line and its number are not kept with a valid row).
WITH ranked AS (
    SELECT *, row_number() OVER (
        PARTITION BY event_time, event_type, product_id, category_id, category_code, brand,
                     price, user_id, user_session
        ORDER BY source, file_row_number) AS copy_number
    FROM ({candidates})
)
SELECT file_row_number AS parquet_row,
       concat_ws(',', strftime(event_time, '%Y-%m-%d %H:%M:%S UTC'), event_type,
                 product_id, category_id, coalesce(category_code, ''), coalesce(brand, ''),
                 price, user_id, coalesce(user_session::UUID::VARCHAR, '')) AS raw_line
FROM ranked
WHERE source = 1 AND copy_number > 1

-- name: load_events
-- The rows of one lake part in [{since}, {until}) as the warehouse stores them, duplicates (as
-- its quarantine file lists them) left out. Only the part's row groups that cover the span
-- are read.
SELECT event_time,
       event_type::event_type AS event_type,
       product_id,
       category_id,
       category_code,
       brand,
       price,
       user_id,
       user_session::UUID AS user_session
FROM read_parquet({events_parquet}, file_row_number = true)
ANTI JOIN (
    SELECT parquet_row FROM read_parquet({quarantine_parquet}) WHERE reason = 'duplicate'
) AS d ON d.parquet_row = file_row_number
WHERE event_time >= {since} AND event_time < {until}

-- name: events_profile
-- What the row checks need of a month's events, in one scan of {events}: the lake's Parquet,
-- or the month's partition of core.events. A null event type counts as a null key only.
SELECT count(*) AS rows,
       count(*) FILTER (WHERE event_time IS NULL OR event_type IS NULL OR product_id IS NULL
                        OR category_id IS NULL OR user_id IS NULL OR price IS NULL)
           AS null_keys,
       count(*) FILTER (WHERE outside) AS rows_outside_domain,
       coalesce(list(DISTINCT type ORDER BY type) FILTER (WHERE outside), []) AS outside_domain,
       count(*) FILTER (WHERE price < 0) AS negative_prices,
       min(event_time) AS min_time,
       max(event_time) AS max_time
FROM (
    SELECT *, event_type::VARCHAR AS type,
           event_type::VARCHAR NOT IN ('view', 'cart', 'purchase', 'remove_from_cart') AS outside
    FROM {events}
)

-- name: parquet_time_range
-- The time range of the rows a month's load came from (answered from Parquet statistics).
SELECT min(event_time), max(event_time) FROM read_parquet({events_parquet})

-- name: events_columns
SELECT column_name, data_type
FROM information_schema.columns
WHERE table_schema = 'core' AND table_name = 'events'
ORDER BY ordinal_position
