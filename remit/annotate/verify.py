"""`remit-annotate verify OUTPUT`: re-score a sample of rows with the `hf` engine and report the error.

- A seeded sample of rows is re-scored with an independent transformers forward pass, with the model
  folders and dtype recorded in the manifest (and refused when their weights are not the recorded ones).
- Each segment of a row is its own prompt, as when the output was made.
- Reported: the distribution of |stored - recomputed| for both log-probs and for the weight
  recomputed from them with the manifest's eps and centring.
- Exit status 1 when the largest difference exceeds the tolerance or the two disagree on which
  positions have no log-prob; 2 when the check cannot run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

DEFAULT_ROWS = 64
#: fp32 engines agree to ~1e-5 on log-probs; 1e-3 leaves room for long sequences and peaked models.
DEFAULT_TOLERANCE = 1e-3
COLUMNS = ["sample_id", "token_ids", "logp_base", "logp_rl", "weight", "segment_starts"]


@dataclass(frozen=True)
class ErrorStats:
    """Distribution of |stored - recomputed| over the positions where both have a value."""

    count: int
    mean: float
    p50: float
    p99: float
    max: float

    @classmethod
    def of(cls, stored: np.ndarray, recomputed: np.ndarray) -> ErrorStats:
        both = ~(np.isnan(stored) | np.isnan(recomputed))
        d = np.abs(stored[both].astype(np.float64) - recomputed[both].astype(np.float64))
        if d.size == 0:
            return cls(0, 0.0, 0.0, 0.0, 0.0)
        p50, p99 = np.percentile(d, [50, 99])
        return cls(int(d.size), float(d.mean()), float(p50), float(p99), float(d.max()))


@dataclass(frozen=True)
class VerifyReport:
    rows: int
    sample_ids: list[int]
    tokens: int
    dtype: str
    tolerance: float
    nan_mismatches: int
    """Positions where exactly one of stored and recomputed log-probs is NaN (should be 0)."""
    logp_base: ErrorStats
    logp_rl: ErrorStats
    weight: ErrorStats

    @property
    def max_error(self) -> float:
        return max(self.logp_base.max, self.logp_rl.max, self.weight.max)

    @property
    def passed(self) -> bool:
        return self.nan_mismatches == 0 and self.max_error <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(max_error=self.max_error, passed=self.passed)
        return d


def sample_rows(shard_rows: list[int], n: int, seed: int) -> list[tuple[int, int]]:
    """(shard index, row inside the shard) of `n` distinct rows drawn with `seed`, in output order."""
    total = int(sum(shard_rows))
    n = min(n, total)
    picks = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
    starts = np.concatenate([[0], np.cumsum(shard_rows)])
    shard = np.searchsorted(starts, picks, side="right") - 1
    return [(int(s), int(p - starts[s])) for s, p in zip(shard, picks)]


def model_path(manifest_data: dict, role: str, override: str | Path | None) -> Path:
    if override is not None:
        path = Path(override)
    else:
        try:
            path = Path(manifest_data["models"][role]["path"])
        except (KeyError, TypeError):
            raise ValueError(f"the manifest records no {role} model path; pass --{role} DIR") from None
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{role} model folder {path} (recorded in the manifest) is missing or holds no config.json; "
            f"pass --{role} DIR pointing at the same checkpoint."
        )
    return path


def check_same_model(manifest_data: dict, role: str, path: Path) -> None:
    """Refuse a model folder whose weights differ from the ones that scored the output: the comparison
    would then measure the change of model, not the engine's error."""
    from remit.annotate.models import legacy_weights_sha256, model_info

    recorded = (manifest_data.get("models", {}).get(role) or {}).get("weights_sha256")
    if recorded:
        actual = model_info(path)["weights_sha256"]
        # Outputs written before the per-file weights hash recorded a hash streamed over all the files.
        if actual != recorded and legacy_weights_sha256(path) != recorded:
            raise ValueError(
                f"{role} model {path}: its weights hash {actual} differs from the manifest's {recorded}; it is "
                f"not the checkpoint that scored this output. Pass --{role} DIR with that checkpoint."
            )


def score_segments(model_dir: Path, prompts: list[np.ndarray], settings: Any, label: str) -> list[np.ndarray]:
    from remit.annotate.engines import open_scorer

    start = time.perf_counter()
    scorer = open_scorer("hf", model_dir, settings)
    try:
        scores = scorer.score(prompts)
    finally:
        scorer.close()
    tokens = sum(len(p) for p in prompts)
    elapsed = time.perf_counter() - start
    print(
        f"verify: {label}: {len(prompts)} segments, {tokens} tokens in {elapsed:.1f} s "
        f"({tokens / max(elapsed, 1e-9):,.0f} tok/s)",
        file=sys.stderr,
    )
    return scores


def verify_output(
    output: str | Path,
    *,
    rows: int = DEFAULT_ROWS,
    seed: int = 0,
    tolerance: float = DEFAULT_TOLERANCE,
    dtype: str | None = None,
    base: str | Path | None = None,
    rl: str | Path | None = None,
    max_batch_tokens: int = 0,
) -> VerifyReport:
    """Re-score `rows` sampled rows of a finished output with the hf engine and compare."""
    from remit.annotate.engines import Dtype, EngineSettings
    from remit.annotate.packing import unit_prompts
    from remit.shards import open_output, remit_weights

    out = open_output(output)
    out.verify()  # every column of every shard against the manifest's checksums, before any model is read
    m = out.manifest
    if m.passes == "none":
        raise ValueError(f"{output}: the output holds token ids only (no scoring): there is nothing to verify")
    rl_only = m.passes == "rl"  # RL pass only: its log-probs are checked, there are no weights
    rl_dir = model_path(m.data, "rl", rl)
    check_same_model(m.data, "rl", rl_dir)
    if not rl_only:
        base_dir = model_path(m.data, "base", base)
        check_same_model(m.data, "base", base_dir)
    dtype = dtype or m.data.get("engine", {}).get("dtype", "float32")

    picks = sample_rows([int(s["rows"]) for s in m.shards], rows, seed)
    tables = []
    for shard in sorted({s for s, _ in picks}):
        table = out.read(shard, columns=COLUMNS, verify=False)  # verified just above
        tables.append(table.take([r for s, r in picks if s == shard]))

    sample_ids: list[int] = []
    lengths: list[int] = []
    starts: list[np.ndarray] = []
    prompts: list[np.ndarray] = []
    stored: dict[str, list[np.ndarray]] = {name: [] for name in ("logp_base", "logp_rl", "weight")}
    for table in tables:
        for name in stored:
            stored[name].extend(np.asarray(v, np.float32) for v in table.column(name).to_pylist())
        layout = unit_prompts(table)
        prompts.extend(layout.prompts)
        sample_ids.extend(int(x) for x in table.column("sample_id").to_pylist())
        lengths.extend(int(n) for n in layout.lengths)
        starts.extend(layout.starts)

    longest = max((len(p) for p in prompts), default=2)
    # EngineSettings checks the dtype (a manifest's value is data, not yet a Dtype).
    settings = EngineSettings(
        dtype=cast(Dtype, dtype), max_model_len=max(2, longest), max_batch_tokens=max_batch_tokens
    )
    # Segments are concatenated back in row order, so the flat arrays line up with the stored ones.
    new_rl = np.concatenate(score_segments(rl_dir, prompts, settings, "rl") or [np.zeros(0, np.float32)])
    flat = {name: np.concatenate(v) if v else np.zeros(0, np.float32) for name, v in stored.items()}
    row_lengths = np.asarray(lengths, np.int64)
    if rl_only:
        new_base = np.full(len(new_rl), np.nan, np.float32)
        new_weight = np.ones(len(new_rl), np.float32)
    else:
        new_base = np.concatenate(score_segments(base_dir, prompts, settings, "base") or [np.zeros(0, np.float32)])
        new_weight = remit_weights(new_rl, new_base, row_lengths, starts, eps=m.eps, center=m.center)

    nan_mismatches = int(
        np.sum(np.isnan(flat["logp_base"]) != np.isnan(new_base))
        + np.sum(np.isnan(flat["logp_rl"]) != np.isnan(new_rl))
    )
    return VerifyReport(
        rows=len(sample_ids),
        sample_ids=sample_ids,
        tokens=int(row_lengths.sum()),
        dtype=dtype,
        tolerance=tolerance,
        nan_mismatches=nan_mismatches,
        logp_base=ErrorStats.of(flat["logp_base"], new_base),
        logp_rl=ErrorStats.of(flat["logp_rl"], new_rl),
        weight=ErrorStats.of(flat["weight"], new_weight),
    )


def format_report(report: VerifyReport) -> str:
    lines = [
        f"verified {report.rows} rows, {report.tokens} tokens, re-scored with the hf engine in {report.dtype}",
        f"{'|stored - recomputed|':<22}{'count':>10}{'mean':>11}{'p50':>11}{'p99':>11}{'max':>11}",
    ]
    for name in ("logp_base", "logp_rl", "weight"):
        s: ErrorStats = getattr(report, name)
        lines.append(f"{name:<22}{s.count:>10}{s.mean:>11.2e}{s.p50:>11.2e}{s.p99:>11.2e}{s.max:>11.2e}")
    if report.nan_mismatches:
        lines.append(
            f"{report.nan_mismatches} positions are NaN in one of stored/recomputed but not the other: "
            "the segment boundaries or the first-token convention do not match"
        )
    verdict = "OK" if report.passed else "FAILED"
    lines.append(f"{verdict}: max difference {report.max_error:.2e} (tolerance {report.tolerance:.0e})")
    if not report.passed and report.max_error > report.tolerance:
        lines.append(
            "A large difference means the output was scored with another model, dtype or engine "
            "setting than the manifest says, or that the engine is wrong; a bf16 run needs a larger "
            "--tolerance (~0.2) or --dtype float32 to measure its error."
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUTPUT", help="a finished annotation output folder (with manifest.json)")
    # -- sample
    parser.add_argument(
        "--rows",
        type=int,
        default=DEFAULT_ROWS,
        help=f"rows to re-score, drawn at random (default {DEFAULT_ROWS}; more than the output holds = all)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the row sample (default 0)")
    # -- pass / fail
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f"largest allowed |stored - recomputed|, in nats for log-probs (default "
        f"{DEFAULT_TOLERANCE:g}, for fp32 outputs)",
    )
    # -- models and engine
    parser.add_argument("--base", default=None, help="base model folder (default: the path in the manifest)")
    parser.add_argument("--rl", default=None, help="RL model folder (default: the path in the manifest)")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=("float32", "bfloat16", "float16"),
        help="dtype of the re-scoring (default: the dtype the output was scored in)",
    )
    parser.add_argument(
        "--max-batch-tokens",
        type=int,
        default=0,
        help="padded tokens per forward pass of the hf engine (default 0 = automatic)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    """0 when every difference is within the tolerance, 1 when not, 2 when the check could not run."""
    from remit.shards import ShardError

    if args.rows < 1:
        print("verify: --rows must be >= 1", file=sys.stderr)
        return 2
    try:
        report = verify_output(
            args.output,
            rows=args.rows,
            seed=args.seed,
            tolerance=args.tolerance,
            dtype=args.dtype,
            base=args.base,
            rl=args.rl,
            max_batch_tokens=args.max_batch_tokens,
        )
    except (ShardError, FileNotFoundError, ValueError, ImportError) as e:
        print(f"verify: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0 if report.passed else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="remit-annotate verify", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
