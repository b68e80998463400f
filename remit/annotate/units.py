"""The corpus cut into units: the one reading and packing pipeline behind `plan` and `pack`.

- `open_corpus`: the input files in reading order, checked (inside the output? the fields present?).
- `corpus_units`: inputs -> records -> token ids -> packed rows -> units of ``rows_per_shard`` rows,
  counting documents, tokens and skipped records as it goes (`CorpusStats`). `plan` writes each unit as
  a planned unit, `pack` as an unscored shard; the rows are the same.
- `packing_description` and `input_description`: the manifest's ``packing`` and ``input`` sections,
  for a scored and a pack-only output alike.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from remit.annotate.inputs import (
    Fields,
    InputScan,
    Skip,
    check_columns,
    check_inside,
    fingerprint,
    no_usable_documents,
    read_inputs,
    scan_inputs,
)
from remit.annotate.packing import Document, PackedRow, pack
from remit.annotate.progress import Progress
from remit.annotate.tokenize import SpecialTokens, tokenize_records

#: Files inside input folders that are not read, listed by name in the manifest (the rest are counted).
IGNORED_SHOWN = 20
#: Skipped records quoted in the manifest as examples.
SKIPS_SHOWN = 20


class StrictInputError(ValueError):
    pass


@dataclass
class CorpusStats:
    """What reading and packing the corpus found; the manifest's ``input`` totals."""

    documents: int = 0
    tokens: int = 0
    rows: int = 0
    units: int = 0
    last_row_tokens: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    skip_examples: list[str] = field(default_factory=list)
    ignored_files: int = 0
    ignored_examples: list[str] = field(default_factory=list)

    def skip(self, s: Skip, strict: bool) -> None:
        if strict:
            raise StrictInputError(f"{s.where()}: {s.reason} (--strict; drop --strict to skip and count such records)")
        self.skipped[s.kind] = self.skipped.get(s.kind, 0) + s.records
        if len(self.skip_examples) < SKIPS_SHOWN:
            self.skip_examples.append(f"{s.where()}: {s.reason}")


@dataclass(frozen=True)
class UnitRows:
    """One unit's packed rows."""

    unit: int
    first_sample_id: int
    rows: list[PackedRow]


def open_corpus(inputs: list[Path], output: Path, fields: Fields, splits: list[str]) -> InputScan:
    """The inputs' files in reading order (of a `datasets` DatasetDict, the `splits` asked for); refuse
    inputs inside the output or without the fields."""
    scan = scan_inputs(inputs, splits)
    check_inside(inputs, output)
    check_columns(scan.sources, fields)
    return scan


def corpus_units(
    scan: InputScan,
    fields: Fields,
    tokenizer: Any,
    special: SpecialTokens,
    *,
    seq_len: int,
    rows_per_shard: int,
    strict: bool,
    stats: CorpusStats,
    progress: Progress,
    label: str | None,
) -> Iterator[UnitRows]:
    """Read, tokenize and pack the corpus; yield its units in order. `stats` is filled in as the units go by
    (complete once the generator is exhausted). `label` prefixes the lines naming files that are not read
    (None: no such lines)."""
    stats.ignored_files = len(scan.ignored)
    stats.ignored_examples = [scan.not_read(p) for p in scan.ignored[:IGNORED_SHOWN]]
    if label is not None:
        for p in scan.ignored[:IGNORED_SHOWN]:
            print(f"[{label}] not an input file, not read: {scan.not_read(p)}", file=sys.stderr, flush=True)
        if len(scan.ignored) > IGNORED_SHOWN:
            print(f"[{label}] ... and {len(scan.ignored) - IGNORED_SHOWN} more files not read", file=sys.stderr)

    def documents() -> Iterator[Document]:
        for item in tokenize_records(read_inputs(scan.sources, fields, scan.names), tokenizer, special):
            if isinstance(item, Skip):
                stats.skip(item, strict)
                continue
            stats.documents += 1
            stats.tokens += len(item.tokens)
            progress.update(len(item.tokens))
            yield item

    pending: list[PackedRow] = []
    for row in pack(documents(), seq_len):
        pending.append(row)
        stats.rows += 1
        stats.last_row_tokens = len(row.tokens)
        if len(pending) == rows_per_shard:
            stats.units += 1
            yield UnitRows(stats.units - 1, stats.rows - len(pending), pending)
            pending = []
    if pending:
        stats.units += 1
        yield UnitRows(stats.units - 1, stats.rows - len(pending), pending)
    if not stats.units:
        raise ValueError(no_usable_documents(stats.skipped, stats.skip_examples))
    progress.close()


# -- the manifest's description ------------------------------------------------------------------------------


def packing_description(seq_len: int, rows_per_shard: int, scored: bool) -> dict[str, Any]:
    """The manifest's ``packing`` section: the row layout, and the context each segment's log-probs had."""
    return {
        "seq_len": seq_len,
        "row_tokens": seq_len + 1,
        "rows_per_shard": rows_per_shard,
        "rows": "consecutive, non-overlapping windows of seq_len + 1 tokens of the EOS-joined corpus; "
        "the last row may be shorter",
        "first_token_logp": "NaN at the first token of every segment (no context); weight 1.0 there"
        if scored
        else "not scored: every log-prob is NaN",
        "segment_context": "each segment scored as an independent prompt from its own first token"
        if scored
        else "each segment is its own document part (document-masked attention in training)",
    }


def input_description(scan: InputScan, fields: Fields) -> dict[str, Any]:
    """The manifest's ``input`` section before reading: the files (by fingerprint) and the fields read."""
    return {
        "paths": fingerprint(scan),
        "fields": {"text": fields.text, "id": fields.id, "tokens": fields.tokens},
    }


__all__ = [
    "IGNORED_SHOWN",
    "CorpusStats",
    "StrictInputError",
    "UnitRows",
    "corpus_units",
    "input_description",
    "open_corpus",
    "packing_description",
]
