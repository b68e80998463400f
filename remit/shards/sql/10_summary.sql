-- remit views, file 1 of 5: one-row run summary. Needs 00_base.sql.
--
-- Counts, means and clip shares come from the per-row and per-segment summary columns (exact: the
-- segment sums are float64), over scored tokens only. Quantiles come from remit_token_stats' grids:
-- the value of the first grid cell whose running count reaches q * n, i.e. numpy's "inverted_cdf"
-- on the values rounded to the grid (weights 1e-4, discrepancy 1e-3 nats). Levels 0 and 1 give the
-- minimum and the maximum. A document is counted at its first segment (document offset 0), so documents
-- that share an id (a corpus may repeat one) count apart; duplicate_doc_ids is the number of ids that
-- more than one document carries (its aggregate grows with the corpus and spills under a memory limit).
CREATE OR REPLACE VIEW remit_summary AS
WITH first_segments AS (
    SELECT doc_id
    FROM (
        SELECT unnest(segment_doc_ids) AS doc_id, unnest(segment_doc_offsets) AS doc_offset FROM remit_rows
    )
    WHERE doc_offset = 0
),
documents AS (
    SELECT
        coalesce(sum(n), 0)::BIGINT AS documents,
        count(*) FILTER (WHERE n > 1) AS duplicate_doc_ids
    FROM (SELECT doc_id, count(*) AS n FROM first_segments GROUP BY doc_id)
),
per_row AS (
    SELECT
        count(*) AS rows,
        sum(len(segment_starts)) AS segments,
        sum(n_tokens) AS tokens,
        sum(n_scored) AS scored_tokens,
        sum(list_sum(segment_sum_weight)) AS sum_weight,
        sum(list_sum(segment_sum_discrepancy)) AS sum_discrepancy,
        -- frac_at_* are float32 fractions of n_scored (<= a few thousand): rounding restores the count.
        sum(round(frac_at_low::DOUBLE * n_scored))::BIGINT AS tokens_at_low,
        sum(round(frac_at_high::DOUBLE * n_scored))::BIGINT AS tokens_at_high
    FROM remit_rows
),
cumulative AS (
    SELECT
        kind,
        key,
        sum(tokens) OVER (PARTITION BY kind ORDER BY key) AS running,
        sum(tokens) OVER (PARTITION BY kind) AS total
    FROM remit_token_stats
    WHERE kind IN ('weight_cell', 'discrepancy_cell')
),
levels AS (SELECT unnest([0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0]::DOUBLE[]) AS q),
quantiles AS (
    SELECT
        list(key / 10000 ORDER BY q) FILTER (WHERE kind = 'weight_cell') AS weight_quantiles,
        list(key / 1000 ORDER BY q) FILTER (WHERE kind = 'discrepancy_cell') AS discrepancy_quantiles
    FROM (
        SELECT l.q, c.kind, min(c.key) AS key
        FROM levels AS l JOIN cumulative AS c ON c.running >= l.q * c.total
        GROUP BY l.q, c.kind
    )
)
SELECT
    m.run_id,
    m.eps,
    m.center,
    r.rows,
    r.segments,
    docs.documents,
    docs.duplicate_doc_ids,
    r.tokens,
    r.scored_tokens,
    r.sum_weight / nullif(r.scored_tokens, 0) AS mean_weight,
    r.sum_discrepancy / nullif(r.scored_tokens, 0) AS mean_discrepancy,
    r.tokens_at_low,
    r.tokens_at_high,
    r.tokens_at_low / nullif(r.scored_tokens, 0) AS share_at_low,
    r.tokens_at_high / nullif(r.scored_tokens, 0) AS share_at_high,
    [0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0]::DOUBLE[] AS quantile_levels,
    q.weight_quantiles,
    q.discrepancy_quantiles
FROM per_row AS r, quantiles AS q, remit_manifest AS m, documents AS docs;
