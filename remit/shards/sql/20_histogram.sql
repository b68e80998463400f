-- remit views, file 2 of 5: histogram of the weights of scored tokens. Needs 00_base.sql.
--
-- remit_bins (default 40) equal bins span the clip range [1 - eps, 1 + eps] from the manifest; the
-- last bin includes its upper edge. The clip bounds fall in the first and the last bin (remit_summary
-- counts them exactly). Every bin is listed, empty ones with 0 tokens.
CREATE OR REPLACE VIEW remit_weight_histogram AS
WITH spec AS (
    SELECT
        1 - eps AS lo,
        coalesce(getvariable('remit_bins'), 40)::BIGINT AS bins,
        greatest(2 * eps, 1e-9) / coalesce(getvariable('remit_bins'), 40) AS width
    FROM remit_manifest
),
counts AS (SELECT key AS bin, tokens FROM remit_token_stats WHERE kind = 'weight_bin'),
total AS (SELECT sum(tokens) AS n FROM counts)
SELECT
    b.bin,
    s.lo + b.bin * s.width AS lower,
    s.lo + (b.bin + 1) * s.width AS upper,
    coalesce(c.tokens, 0) AS tokens,
    coalesce(c.tokens, 0) / nullif(total.n, 0) AS share
FROM spec AS s
CROSS JOIN range(s.bins) AS b(bin)
CROSS JOIN total
LEFT JOIN counts AS c ON c.bin = b.bin
ORDER BY b.bin;
