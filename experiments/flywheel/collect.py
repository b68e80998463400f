"""Copy the small files the results page is made from out of experiment folders into the repository.

`python -m experiments.flywheel.collect OUT [OUT ...] --into docs/results/data` writes, per folder,
`base{base_seed}/` (the layout `study.py` reads): config.json, data_stats.json (the generator's
statistics with those of the added splits), stages/*.json, eval/refs/*.json, eval/mid/*.json,
weights/{rl,sft,clean,oracle}.json and the RL and SFT training summaries. Absolute paths inside the files
are written relative to their experiment folder. Kilobytes per run: no model, shard or checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from experiments.flywheel.config import recorded
from remit.common.atomic import write_json_atomic
from remit.common.errors import run_command

#: Source (relative to the experiment folder) -> destination (relative to base{b}/), for single files.
FILES = {
    "config.json": "config.json",
    "weights_by_token_kind.json": "weights/rl.json",
    "weights_by_token_kind-sft.json": "weights/sft.json",
    "weights_by_token_kind-clean.json": "weights/clean.json",
    "weights_oracle.json": "weights/oracle.json",
    "models/rl/grpo.json": "rl/grpo.json",
    "models/sft/sft.json": "sft/sft.json",
}
#: Folders whose every *.json is copied.
FOLDERS = ("stages", "eval/refs", "eval/mid")


def _relative(obj: Any, root: str) -> Any:
    """`obj` with every string that starts with the folder `root` made relative to it."""
    if isinstance(obj, dict):
        return {k: _relative(v, root) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_relative(v, root) for v in obj]
    if isinstance(obj, str) and obj.startswith(root + "/"):
        return obj[len(root) + 1 :]
    return obj


def _copy(src: Path, dst: Path, root: str) -> None:
    try:
        data = json.loads(src.read_text())
    except ValueError as e:
        raise ValueError(f"{src}: not JSON ({e}); is the stage that writes it still running?") from None
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(dst, _relative(data, root))


def collect(out: Path, into: Path) -> Path:
    """Copy one experiment folder's files into `into`/base{b}/; return that folder."""
    out = out.resolve()
    cfg = recorded(out)["config"]
    dest = into / f"base{cfg['base_seed']}"
    root = str(out)
    for src, dst in FILES.items():
        if (out / src).exists():
            _copy(out / src, dest / dst, root)
    stats = json.loads((out / "data" / "stats.json").read_text())
    extra = out / "data" / "stats_extra.json"
    if extra.exists():
        stats["splits"].update(json.loads(extra.read_text()))
    dest.mkdir(parents=True, exist_ok=True)
    write_json_atomic(dest / "data_stats.json", stats)
    for folder in FOLDERS:
        for path in sorted((out / folder).glob("*.json")):
            _copy(path, dest / folder / path.name, root)
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.flywheel.collect", description=__doc__.split("\n")[0])
    p.add_argument("outs", type=Path, nargs="+", help="experiment output folders")
    p.add_argument("--into", type=Path, required=True, help="e.g. docs/results/data")
    args = p.parse_args(argv)

    def run() -> None:
        for out in args.outs:
            if not (out / "config.json").is_file():
                raise ValueError(f"{out}: not an experiment folder (no config.json)")
            print(f"collect: {out} -> {collect(out, args.into)}", flush=True)

    return run_command("collect", run, (ValueError, OSError))


if __name__ == "__main__":
    raise SystemExit(main())
