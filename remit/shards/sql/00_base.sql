-- remit views, file 0 of 5: the base views the other files build on.
--
-- Before running these files, name the output folder (an absolute path works from any directory):
--     SET VARIABLE remit_output = '/path/to/output';
-- The views read the variable each time they are queried, so setting it again switches outputs.
-- Optional knobs, read the same way (defaults in brackets): remit_bins (40), remit_top_k (20),
-- remit_min_count (20). See docs/duckdb.md.

-- Memory: DuckDB otherwise prefetches every projected column of a row group at once; with four
-- token-list columns of ~16 MB each that doubles the memory a thread needs. Read them page by page.
SET disable_parquet_prefetching = true;

-- One row per training sequence, straight from the shards. The glob matches the top level only, so
-- an unfinished run's `_work/` folder and `*.parquet.tmp` files are never read.
CREATE OR REPLACE VIEW remit_rows AS
SELECT *
FROM read_parquet(getvariable('remit_output') || '/*.parquet');

-- The run's manifest as JSON, plus the values the statistics need. read_text keeps the JSON as it
-- is written instead of inferring a table schema from it.
CREATE OR REPLACE VIEW remit_manifest AS
SELECT
    content::JSON AS manifest,
    (content::JSON ->> '$.run_id') AS run_id,
    (content::JSON ->> '$.weights.eps')::DOUBLE AS eps,
    (content::JSON ->> '$.weights.center') AS center,
    (content::JSON ->> '$.packing.seq_len')::BIGINT AS seq_len
FROM read_text(getvariable('remit_output') || '/manifest.json');

-- One row per *scored* token: those with both log-probs. The first token of every segment has none
-- (NaN) and weight 1.0 by convention; counting it would pull every statistic towards 1.
-- discrepancy is the raw logp_rl - logp_base (before the per-row or per-segment centring of the
-- weight rule), computed in DOUBLE like the writer's summaries.
-- token_index: the offset inside the row; pos_in_segment: the offset from the start of the token's
-- segment (1 for the first scored token). pos_in_segment is built per row from its few segments
-- (a range per segment, concatenated), which is much cheaper than a search per token.
--
-- Memory: the unnest runs row by row as the scan streams, and remit_token_stats below folds it into
-- a bounded number of groups. Do not ORDER BY or window over this view on a large output: that
-- would hold every token at once.
CREATE OR REPLACE VIEW remit_tokens AS
SELECT
    sample_id,
    source,
    token_index,
    pos_in_segment,
    token_id,
    logp_base,
    logp_rl,
    logp_rl::DOUBLE - logp_base::DOUBLE AS discrepancy,
    weight
FROM (
    SELECT
        sample_id,
        source,
        unnest(range(n_tokens)) AS token_index,
        unnest(flatten(list_transform(
            segment_starts,
            lambda start, k: range(coalesce(segment_starts[k + 1], n_tokens) - start)
        ))) AS pos_in_segment,
        unnest(token_ids) AS token_id,
        unnest(logp_base) AS logp_base,
        unnest(logp_rl) AS logp_rl,
        unnest(weight) AS weight
    FROM remit_rows
)
WHERE NOT isnan(logp_base) AND NOT isnan(logp_rl);

-- One streaming pass over the scored tokens, folded into five groupings whose size does not grow
-- with the output: weight on a 1e-4 grid (quantiles), discrepancy on a 1e-3 grid (quantiles),
-- histogram bin, position bucket (powers of two) and token id (at most the vocabulary).
-- The summary, histogram, position and token views all read this one view, so a client that wants
-- several of them can compute it once (it holds some thousands of rows):
--     CREATE OR REPLACE TEMP TABLE remit_token_stats AS FROM remit_token_stats;
-- The temp table then shadows this view for every view that reads it; DROP TABLE temp.remit_token_stats
-- after switching outputs or changing remit_bins.
CREATE OR REPLACE VIEW remit_token_stats AS
WITH spec AS (
    SELECT
        (1 - eps)::FLOAT AS low,
        (1 + eps)::FLOAT AS high,
        1 - eps AS lo,
        coalesce(getvariable('remit_bins'), 40)::BIGINT AS bins,
        -- eps = 0 means every weight is 1: one bin of any width holds them all.
        greatest(2 * eps, 1e-9) / coalesce(getvariable('remit_bins'), 40) AS width
    FROM remit_manifest
),
keyed AS (
    -- The token side streams through this join; spec is a single row.
    SELECT
        round(t.weight * 10000)::BIGINT AS weight_cell,
        -- Clamped so that an infinite log-prob cannot overflow the cell number.
        round(least(greatest(t.discrepancy, -1e6), 1e6) * 1000)::BIGINT AS discrepancy_cell,
        least(greatest(floor((t.weight - s.lo) / s.width), 0), s.bins - 1)::BIGINT AS weight_bin,
        floor(log2(t.pos_in_segment))::BIGINT AS position_bucket,
        t.token_id::BIGINT AS token_id,
        t.weight::DOUBLE AS weight,
        t.discrepancy,
        -- Same test as the writer's frac_at_low / frac_at_high: float32 weight against float32 bound.
        t.weight <= s.low AS at_low,
        t.weight >= s.high AS at_high
    FROM remit_tokens AS t, spec AS s
)
SELECT
    CASE
        WHEN grouping(weight_cell) = 0 THEN 'weight_cell'
        WHEN grouping(discrepancy_cell) = 0 THEN 'discrepancy_cell'
        WHEN grouping(weight_bin) = 0 THEN 'weight_bin'
        WHEN grouping(position_bucket) = 0 THEN 'position_bucket'
        ELSE 'token_id'
    END AS kind,
    coalesce(weight_cell, discrepancy_cell, weight_bin, position_bucket, token_id) AS key,
    count(*) AS tokens,
    sum(weight) AS sum_weight,
    sum(discrepancy) AS sum_discrepancy,
    count(*) FILTER (WHERE at_low) AS tokens_at_low,
    count(*) FILTER (WHERE at_high) AS tokens_at_high
FROM keyed
GROUP BY GROUPING SETS ((weight_cell), (discrepancy_cell), (weight_bin), (position_bucket), (token_id));
