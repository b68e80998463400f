-- remit views, file 4 of 5: weight against the position inside a segment. Needs 00_base.sql.
--
-- Positions are grouped in powers of two (1, 2-3, 4-7, ...): early positions, where the models have
-- little context, get their own rows, and there are never more than ~log2(seq_len) groups.
-- Position 0 (a segment's first token) has no log-prob and never appears.
CREATE OR REPLACE VIEW remit_weight_by_position AS
SELECT
    key AS bucket,
    (2 ** key)::BIGINT AS pos_from,
    (2 ** (key + 1))::BIGINT - 1 AS pos_to,
    tokens,
    sum_weight / tokens AS mean_weight,
    sum_discrepancy / tokens AS mean_discrepancy,
    tokens_at_low / tokens AS share_at_low,
    tokens_at_high / tokens AS share_at_high
FROM remit_token_stats
WHERE kind = 'position_bucket'
ORDER BY bucket;
