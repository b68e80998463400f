-- remit views, file 3 of 5: per-source and per-document breakdowns. Needs 00_base.sql.
--
-- Neither touches a token-level list. remit_by_source reads the per-row summary columns only.
-- A row's `source` is the input file of its first segment, so a row that packs documents from two
-- files counts under the first one; per-document figures are exact.
CREATE OR REPLACE VIEW remit_by_source AS
SELECT
    source,
    count(*) AS rows,
    sum(n_tokens) AS tokens,
    sum(n_scored) AS scored_tokens,
    sum(mean_weight::DOUBLE * n_scored) / nullif(sum(n_scored), 0) AS mean_weight,
    sum(mean_discrepancy::DOUBLE * n_scored) / nullif(sum(n_scored), 0) AS mean_discrepancy,
    sum(round(frac_at_low::DOUBLE * n_scored)) / nullif(sum(n_scored), 0) AS share_at_low,
    sum(round(frac_at_high::DOUBLE * n_scored)) / nullif(sum(n_scored), 0) AS share_at_high
FROM remit_rows
GROUP BY source
ORDER BY source;

-- One row per document, from the per-segment summary lists (a few entries per row, so this unnest
-- is cheap). A document cut across rows has one segment per row. Document ids need not be unique (a
-- corpus may repeat one): a document is its id plus where it starts in the corpus, its start_token
-- (every row but the last holds seq_len + 1 tokens, so a segment's document starts at token
-- sample_id * (seq_len + 1) + its start in the row - its offset in the document). Two documents with one
-- id are two rows. Not ordered: sort or LIMIT it as needed (DuckDB's top-N keeps only the N rows it
-- returns).
CREATE OR REPLACE VIEW remit_by_document AS
SELECT
    doc_id,
    count(*) AS segments,
    min(sample_id) AS first_sample_id,
    sum(seg_end - seg_start) AS tokens,
    sum(n_scored) AS scored_tokens,
    sum(sum_weight) / nullif(sum(n_scored), 0) AS mean_weight,
    sum(sum_discrepancy) / nullif(sum(n_scored), 0) AS mean_discrepancy,
    start_token
FROM (
    SELECT
        doc_id,
        sample_id,
        seg_start,
        seg_end,
        n_scored,
        sum_weight,
        sum_discrepancy,
        sample_id * (m.seq_len + 1) + seg_start - doc_offset AS start_token
    FROM (
        SELECT
            sample_id,
            unnest(segment_doc_ids) AS doc_id,
            unnest(segment_doc_offsets) AS doc_offset,
            unnest(segment_starts) AS seg_start,
            unnest(list_append(segment_starts[2:], n_tokens)) AS seg_end,
            unnest(segment_n_scored) AS n_scored,
            unnest(segment_sum_weight) AS sum_weight,
            unnest(segment_sum_discrepancy) AS sum_discrepancy
        FROM remit_rows
    ), remit_manifest AS m
)
GROUP BY doc_id, start_token;

-- Document ids that more than one document carries, with how many documents carry each (empty when
-- every id is unique). A document is counted at its first segment (document offset 0); only the
-- per-segment id and offset lists are read.
CREATE OR REPLACE VIEW remit_duplicate_doc_ids AS
SELECT doc_id, count(*) AS documents
FROM (
    SELECT unnest(segment_doc_ids) AS doc_id, unnest(segment_doc_offsets) AS doc_offset FROM remit_rows
)
WHERE doc_offset = 0
GROUP BY doc_id
HAVING count(*) > 1;
