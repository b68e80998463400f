"""Finalize: check every unit is complete and consistent, then write manifest.json (last).

Checks: every planned unit has a completion record of this run; all units were scored with the same
engine, version, dtype and settings (and the base pass with the same as the RL pass); each shard's
file hash, row count, token count and token checksum match its record and the plan; sample ids are
contiguous from 0. Missing units are listed with the command that finishes them.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path
from typing import Any

from remit.annotate.plan import PLAN_FILE, RUN_FILE, read_plan, work_dir
from remit.annotate.worker import done_path
from remit.shards.checksum import file_sha256
from remit.shards.manifest import MANIFEST_NAME, ShardError, assemble_manifest, read_manifest, write_json_atomic

_SHARD_KEYS = ("file", "rows", "tokens", "first_sample_id", "token_checksum", "file_sha256", "bytes")


class IncompleteOutput(ShardError):
    pass


def resume_command(config: dict[str, Any], output: Path) -> str:
    """The `remit-annotate run` command line that continues this run (any rank/world size works)."""
    args = ["remit-annotate", "run", "--base", config["base"], "--rl", config["rl"], "--input", *config["inputs"],
            "--output", str(output), "--engine", config["engine"], "--seq-len", str(config["seq_len"]),
            "--eps", str(config["eps"]), "--center", config["center"], "--dtype", config["dtype"],
            "--rows-per-shard", str(config["rows_per_shard"]), "--bos", config["bos"], "--eos", config["eos"]]
    if config.get("token_field"):
        args += ["--token-field", config["token_field"]]
    else:
        args += ["--text-field", config["text_field"]]
    if config.get("id_field") != "id":
        args += ["--id-field", config["id_field"]]
    return shlex.join(args)


def finalize(output: str | Path, *, keep_work: bool = False) -> dict[str, Any]:
    out = Path(output)
    if (out / MANIFEST_NAME).exists():
        return read_manifest(out).data
    run_file, plan = work_dir(out) / RUN_FILE, read_plan(out)
    if not run_file.exists() or plan is None:
        raise IncompleteOutput(
            f"{out}: no finished plan in {work_dir(out)}; start the annotation with `remit-annotate run ...` "
            "(or the one-shot `remit-annotate --base ... --output ...`) first."
        )
    run = json.loads(run_file.read_text())
    missing = [u["unit"] for u in plan["units"] if not done_path(out, u["unit"]).exists()]
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        raise IncompleteOutput(
            f"{out}: {len(missing)} of {len(plan['units'])} units are not finished: {shown}.\n"
            f"Finish them with any number of workers, e.g.:\n  {resume_command(run['config'], out)}\n"
            "(with --world-size W, unit u is scored by --rank u % W), then run "
            f"`remit-annotate finalize {out}` again."
        )
    shards, engine = [], None
    next_sample = 0
    for u in plan["units"]:
        record = json.loads(done_path(out, u["unit"]).read_text())
        where = done_path(out, u["unit"])
        if record.get("run_id") != run["run_id"]:
            raise ShardError(f"{where}: completion record of another run; delete it and re-run its unit")
        if record["engine"] != record["engine_base"]:
            raise ShardError(
                f"{where}: the base and RL passes used different engine settings ({record['engine_base']} vs "
                f"{record['engine']}); delete the record and re-run the unit"
            )
        if engine is None:
            engine = record["engine"]
        elif record["engine"] != engine:
            raise ShardError(
                f"{where}: scored with {record['engine']}, other units with {engine}. Weights from different "
                "engines, versions or settings are not comparable: delete the odd units' records and shards "
                "and re-run them with the same engine set-up."
            )
        for key in ("rows", "tokens", "first_sample_id", "token_checksum"):
            if record[key] != u[key]:
                raise ShardError(f"{where}: {key} = {record[key]}, the plan says {u[key]}; re-run the unit")
        if u["first_sample_id"] != next_sample:
            raise ShardError(f"{where}: first sample id {u['first_sample_id']}, expected {next_sample}")
        next_sample += u["rows"]
        shard = out / record["file"]
        if not shard.exists():
            raise ShardError(f"{shard}: missing although its unit is marked done; delete {where} and re-run")
        if file_sha256(shard) != record["file_sha256"]:
            raise ShardError(
                f"{shard}: content differs from what was written (sha256 mismatch); delete it and {where}, "
                "then re-run the unit"
            )
        shards.append({k: record[k] for k in _SHARD_KEYS})
    run_out = {k: v for k, v in run.items() if k != "engine_request"}
    run_out["engine"] = engine
    run_out["input"] = {**run["input"], **{k: plan["totals"][k] for k in (
        "documents", "tokens", "last_row_tokens", "skipped", "skip_examples")}}
    manifest = assemble_manifest(run_out, shards)
    write_json_atomic(out / MANIFEST_NAME, manifest)
    for stray in out.glob("*.tmp"):
        stray.unlink()
    if not keep_work:
        shutil.rmtree(work_dir(out), ignore_errors=True)
    return manifest


__all__ = ["IncompleteOutput", "finalize", "resume_command", "PLAN_FILE"]
