"""Training samples from an annotation output: one row of the shards is one sample.

A row holds ``seq_len + 1`` tokens (the output's last row may be shorter). Like Megatron's GPTDataset,
``tokens = row[:-1]`` and ``labels = row[1:]``, so everything per label is shifted by one position:
``loss_weight[i] = weight[i + 1]`` and ``logp_rl[i] = logp_rl_row[i + 1]``. Each document segment of a
row was scored as its own prompt, so the attention is block-diagonal causal by segment and the
position ids restart at 0 at every segment start: the training context equals the scoring context.

Alignment is keyed by the row (its global ``sample_id``) alone: data-parallel size, micro-batch size
and tensor-parallel size only decide which rank reads which whole row, never which weight goes with
which token.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from remit.shards import ShardError, open_output
from remit.shards.external import check_folder, external_file, read_external
from remit.shards.manifest import repair_command
from remit.shards.schema import schema_mismatch

#: Columns the trainer needs; the summaries and logp_base are never read.
TRAIN_COLUMNS = ["sample_id", "token_ids", "logp_rl", "weight", "segment_starts", "n_tokens"]


@dataclass
class _ShardArrays:
    """One shard's training columns, flat, so that a sample is a few slices."""

    first_sample_id: int
    row_offsets: np.ndarray  # int64 [rows + 1]
    token_ids: np.ndarray  # int32 [T]
    logp_rl: np.ndarray  # float32 [T]
    weight: np.ndarray  # float32 [T]
    seg_offsets: np.ndarray  # int64 [rows + 1] into seg_starts
    seg_starts: np.ndarray  # int32 [segments]


def make_sample(
    row_tokens: np.ndarray,
    row_weight: np.ndarray,
    row_logp_rl: np.ndarray,
    segment_starts: np.ndarray,
    seq_len: int,
    create_attention_mask: bool = True,
) -> dict[str, np.ndarray]:
    """The training fields of one row (length <= seq_len + 1), padded to `seq_len` positions.

    A one-token row (the output's last row can be one) has no label: an all-masked sample.

    Padding (only on the output's last, short row) has loss_mask 0, its own segment id -1 and
    position ids continuing from 0; `logp_rl` and `loss_weight` are 0 wherever loss_mask is 0.
    """
    n = len(row_tokens)
    if not 1 <= n <= seq_len + 1:
        raise ValueError(f"row of {n} tokens cannot make a sample of seq_len {seq_len}")
    used = n - 1  # input positions that have a label
    is_start = np.zeros(n, dtype=bool)
    is_start[segment_starts] = True
    seg_of_pos = np.cumsum(is_start) - 1  # segment of each row position
    start_of_pos = np.asarray(segment_starts, np.int64)[seg_of_pos]

    tokens = np.zeros(seq_len, np.int64)
    labels = np.zeros(seq_len, np.int64)
    tokens[:used] = row_tokens[:-1]
    labels[:used] = row_tokens[1:]
    # A label has a loss only inside its segment: the first token of a segment has no context there.
    loss_mask = np.zeros(seq_len, np.float32)
    loss_mask[:used] = ~is_start[1:]
    valid = loss_mask > 0
    loss_weight = np.zeros(seq_len, np.float32)
    loss_weight[:used] = row_weight[1:]
    loss_weight[~valid] = 0.0
    logp_rl = np.zeros(seq_len, np.float32)
    logp_rl[:used] = row_logp_rl[1:]
    logp_rl[~valid] = 0.0  # NaN at segment starts; zero so masked arithmetic stays finite
    position_ids = np.arange(seq_len, dtype=np.int64)
    position_ids[:used] -= start_of_pos[:used]
    position_ids[used:] -= used
    segment_ids = np.full(seq_len, -1, np.int64)
    segment_ids[:used] = seg_of_pos[:used]

    sample: dict[str, np.ndarray] = {
        "tokens": tokens,
        "labels": labels,
        "loss_mask": loss_mask,
        "loss_weight": loss_weight,
        "logp_rl": logp_rl,
        "position_ids": position_ids,
        "segment_ids": segment_ids,
    }
    if create_attention_mask:
        sample["attention_mask"] = attention_mask(segment_ids[None])[0]
    return sample


def attention_mask(segment_ids: np.ndarray) -> np.ndarray:
    """Megatron's bool mask [b, 1, S, S], True = masked: causal and within one segment only."""
    s = segment_ids.shape[-1]
    causal_blocked = np.triu(np.ones((s, s), dtype=bool), k=1)
    other_segment = segment_ids[:, :, None] != segment_ids[:, None, :]
    return (causal_blocked[None] | other_segment)[:, None]


class RemitDataset:
    """Map-style dataset over the rows of an annotation output, indexed by global ``sample_id``.

    Opening checks the manifest (format, sequence length, tokenizer, consecutive sample ids) and, with
    `check_footers`, every shard's Parquet footer (present, schema, row count). A shard is read whole,
    with its schema, row count and token checksum verified, the first time one of its samples is asked
    for; `cache_shards` shards stay in memory.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        seq_len: int | None = None,
        tokenizer_hash: str | None = None,
        cache_shards: int = 8,
        create_attention_mask: bool = True,
        check_footers: bool = True,
        validate: bool = False,
        external_weights: str | Path | None = None,
    ) -> None:
        self.output = open_output(root)
        m = self.output.manifest
        where = self.output.root / "manifest.json"
        if seq_len is not None and m.seq_len != seq_len:
            raise ShardError(
                f"{where}: sequence length {m.seq_len}, but this run trains with {seq_len}. Re-annotate with "
                f"--seq-len {seq_len}, or train this output on its own length."
            )
        if tokenizer_hash is not None and m.tokenizer_hash != tokenizer_hash:
            raise ShardError(
                f"{where}: scored with tokenizer {m.tokenizer_hash}, but the model uses {tokenizer_hash}. "
                "Token ids would mean different tokens; annotate the corpus with this model's tokenizer."
            )
        self.seq_len = m.seq_len
        self.create_attention_mask = create_attention_mask
        self.cache_shards = max(1, cache_shards)
        self._cache: OrderedDict[int, _ShardArrays] = OrderedDict()
        self.shard_rows = np.array([int(s["rows"]) for s in m.shards], np.int64)
        self.shard_first = np.concatenate([[0], np.cumsum(self.shard_rows)])
        if self.shard_first[-1] == 0:
            raise ShardError(f"{self.output.root}: the output holds no rows; nothing to train on.")
        #: Shard indices in the order they were read (each read is a whole shard, checksum verified).
        self.shard_reads: list[int] = []
        #: With `validate`, each shard gets `validate`'s checks the first time it is read: a rank checks
        #: only the shards it trains on, and no rank reads the whole output at start.
        self.validate = validate
        self.shards_validated: list[int] = []
        self._check_shards(read_footers=check_footers)
        #: With `external_weights`, the weights come from that folder (`remit.shards.external`), one file per
        #: shard, checked against the shard when it is read; the output's own weights are not used.
        self.external_weights = Path(external_weights) if external_weights is not None else None
        if self.external_weights is not None:
            check_folder(self.external_weights, [self.output.path(i) for i in range(self.num_shards)], root)

    def _check_shards(self, read_footers: bool) -> None:
        for i, entry in enumerate(self.output.manifest.shards):
            path = self.output.path(i)
            if int(entry["first_sample_id"]) != int(self.shard_first[i]):
                raise ShardError(
                    f"{path}: first_sample_id {entry['first_sample_id']} in the manifest, expected "
                    f"{int(self.shard_first[i])} (shards must hold consecutive sample ids); run "
                    f"`{repair_command(self.output.root)}` to write the manifest again."
                )
            if not read_footers:
                continue
            try:
                meta = pq.read_metadata(path)
                schema = pq.read_schema(path)
            except Exception as e:  # missing or truncated: pyarrow raises several types
                raise ShardError(
                    f"{path}: cannot be opened as Parquet ({type(e).__name__}: {e}). Run "
                    f"`{repair_command(self.output.root)}` to re-score it."
                ) from e
            mismatch = schema_mismatch(schema)
            if mismatch:
                raise ShardError(
                    f"{path}: wrong schema ({mismatch}); run `{repair_command(self.output.root)}` to re-score it."
                )
            if meta.num_rows != int(entry["rows"]):
                raise ShardError(
                    f"{path}: {meta.num_rows} rows, the manifest says {entry['rows']}; "
                    f"run `{repair_command(self.output.root)}` to re-score it."
                )

    def __len__(self) -> int:
        return int(self.shard_first[-1])

    @property
    def num_shards(self) -> int:
        return len(self.shard_rows)

    def shard_of(self, sample_id: int) -> int:
        return int(np.searchsorted(self.shard_first, sample_id, side="right") - 1)

    def _shard(self, index: int) -> _ShardArrays:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        if self.validate and index not in self.shards_validated:
            self._validate(index)
        # Every column is read and checked against the manifest, not only the ones training uses: a shard
        # whose data was changed is refused whole (also with --skip-validate), at ~1/3 more reading.
        table = self.output.read(index, verify=True).select(TRAIN_COLUMNS)
        self.shard_reads.append(index)
        path = self.output.path(index)
        first = int(self.shard_first[index])
        ids = table.column("sample_id").to_numpy()
        if not np.array_equal(ids, np.arange(first, first + len(ids))):
            bad = int(np.flatnonzero(ids != np.arange(first, first + len(ids)))[0])
            raise ShardError(
                f"{path}: row {bad} has sample_id {int(ids[bad])}, expected {first + bad}; "
                f"the shard does not match the manifest; run `{repair_command(self.output.root)}` to re-score it."
            )
        lengths = table.column("n_tokens").to_numpy().astype(np.int64)
        seg_col = table.column("segment_starts")
        arrays = _ShardArrays(
            first_sample_id=first,
            row_offsets=np.concatenate([[0], np.cumsum(lengths)]),
            token_ids=pc.list_flatten(table.column("token_ids")).to_numpy(),
            logp_rl=pc.list_flatten(table.column("logp_rl")).to_numpy(),
            weight=self._weights(index, table, ids, lengths),
            seg_offsets=np.concatenate(
                [[0], np.cumsum(pc.list_value_length(seg_col).to_numpy(zero_copy_only=False))]
            ).astype(np.int64),
            seg_starts=pc.list_flatten(seg_col).to_numpy(),
        )
        short = np.flatnonzero(lengths[:-1] != self.seq_len + 1)
        if len(short) or (index < self.num_shards - 1 and lengths[-1] != self.seq_len + 1):
            r = int(short[0]) if len(short) else len(lengths) - 1
            raise ShardError(
                f"{path}: row {r} has {int(lengths[r])} tokens; every row but the output's last must have "
                f"seq_len + 1 = {self.seq_len + 1}; run `{repair_command(self.output.root)}` to re-score it."
            )
        self._cache[index] = arrays
        while len(self._cache) > self.cache_shards:
            self._cache.popitem(last=False)
        return arrays

    def _weights(self, index: int, table, sample_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Shard `index`'s flat weights: its own column, or its external-weights file."""
        if self.external_weights is None:
            return pc.list_flatten(table.column("weight")).to_numpy()
        path = external_file(self.external_weights, self.output.path(index))
        return read_external(path, sample_ids, lengths)

    def _validate(self, index: int) -> None:
        from remit.shards.validate import validate_shard

        problems = validate_shard(self.output.root, self.output.manifest, index)
        if problems:
            more = f" (and {len(problems) - 1} more problems in this shard)" if len(problems) > 1 else ""
            raise ShardError(f"{problems[0]}{more}; `remit-annotate validate {self.output.root}` lists every problem")
        self.shards_validated.append(index)

    def row(self, sample_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(token_ids, weight, logp_rl, segment_starts) of one row, as stored."""
        if not 0 <= sample_id < len(self):
            raise IndexError(f"sample_id {sample_id} outside [0, {len(self)})")
        s = self._shard(self.shard_of(sample_id))
        r = sample_id - s.first_sample_id
        a, b = s.row_offsets[r], s.row_offsets[r + 1]
        segs = s.seg_starts[s.seg_offsets[r] : s.seg_offsets[r + 1]]
        return s.token_ids[a:b], s.weight[a:b], s.logp_rl[a:b], segs

    def __getitem__(self, sample_id: int) -> dict[str, np.ndarray]:
        tokens, weight, logp_rl, segs = self.row(int(sample_id))
        sample = make_sample(tokens, weight, logp_rl, segs, self.seq_len, self.create_attention_mask)
        sample["sample_id"] = np.int64(sample_id)
        return sample


def collate(samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack samples into a micro-batch (numpy; the trainer moves it to the device)."""
    return {key: np.stack([s[key] for s in samples]) for key in samples[0]}
