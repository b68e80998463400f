-- remit views, file 5 of 5: which token ids the weights push up or down. Needs 00_base.sql.
--
-- remit_token_weights has one row per token id seen at a scored position (at most the vocabulary
-- size, whatever the output size). The top lists keep ids seen at least remit_min_count (20) times,
-- so that one lucky occurrence does not top the list, and return remit_top_k (20) ids each.
CREATE OR REPLACE VIEW remit_token_weights AS
SELECT
    key AS token_id,
    tokens AS count,
    sum_weight / tokens AS mean_weight,
    sum_discrepancy / tokens AS mean_discrepancy,
    tokens_at_low / tokens AS share_at_low,
    tokens_at_high / tokens AS share_at_high
FROM remit_token_stats
WHERE kind = 'token_id';

CREATE OR REPLACE VIEW remit_top_up_tokens AS
SELECT *
FROM remit_token_weights
WHERE count >= coalesce(getvariable('remit_min_count'), 20)
ORDER BY mean_weight DESC, count DESC, token_id
LIMIT coalesce(getvariable('remit_top_k'), 20);

CREATE OR REPLACE VIEW remit_top_down_tokens AS
SELECT *
FROM remit_token_weights
WHERE count >= coalesce(getvariable('remit_min_count'), 20)
ORDER BY mean_weight ASC, count DESC, token_id
LIMIT coalesce(getvariable('remit_top_k'), 20);
