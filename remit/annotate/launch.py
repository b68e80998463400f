"""Workers and their ranks: `remit-annotate launch` on one machine, and rank detection for every launcher.

    remit-annotate launch --workers 2 --base DIR --rl DIR --input PATH --output DIR [job flags]

- `rank_from_env`: a worker's rank and world size from --rank/--world-size or the environment a
  Slurm array, `srun` or `torchrun` sets (the levels compose).
- The local launcher has no scheduling of its own. It runs `remit-annotate plan` once (a plan failure
  is reported before any worker starts), then N plain `remit-annotate run --rank i --world-size N`
  processes with the same job flags, each with its own log file.
- With GPUs, worker i sees only its own GPUs (--tensor-parallel-size of them); without, the workers
  are pinned to disjoint sets of the allowed CPU cores, so that the engines' thread pools do not fight.
- When every worker has succeeded it finalizes; when one has failed it names the worker, its exit
  status and log, and exits non-zero. Rerunning the same command resumes, with any number of workers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from remit.annotate.claim import claim_folder
from remit.annotate.config import AnnotateConfig
from remit.annotate.workdir import WorkDir
from remit.common.flags import add_arguments as add_config_arguments
from remit.common.flags import config_from_args, option, to_argv

_LAUNCH = "launch"


@dataclass(frozen=True)
class LaunchFlags:
    """The launcher's own flags; the job's flags (`AnnotateConfig`) come with it and go to every worker."""

    workers: int = option(
        0,
        help="worker processes (default 0: one per --tensor-parallel-size GPUs; 1 without GPUs)",
        group=_LAUNCH,
    )
    """Worker processes; 0: one per --tensor-parallel-size visible GPUs, or 1 without GPUs."""
    gpus: str | None = option(
        None,
        help="comma-separated GPU ids to use (default: CUDA_VISIBLE_DEVICES, else every GPU nvidia-smi "
        "lists); 'none' runs on the CPU",
        group=_LAUNCH,
    )
    """GPU ids to hand out, comma-separated; None: CUDA_VISIBLE_DEVICES or nvidia-smi's list."""
    no_pin: bool = option(False, help="do not pin CPU workers to disjoint sets of cores", group=_LAUNCH)
    """Leave CPU workers unpinned (by default each gets a disjoint set of the allowed cores)."""
    log_dir: Path | None = option(
        None,
        help="folder for plan.log and worker-R.log (default OUTPUT/_work/logs, removed with _work/ "
        "after a successful finalize unless --keep-work)",
        group=_LAUNCH,
    )
    """Where the logs go; None: the work folder's logs/ (removed with it)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, AnnotateConfig)
    add_config_arguments(parser, LaunchFlags)


# -- rank and world size -------------------------------------------------------------------------------


@dataclass
class WorkerFlags:
    """The flags that place one worker among many (`remit-annotate run`)."""

    rank: int | None = option(
        None,
        help="this worker's rank (default: from SLURM_ARRAY_TASK_ID, SLURM_PROCID or RANK; else 0)",
        group="workers",
    )
    """This worker's rank: it scores the units u with u % world_size == rank. None: from the environment."""
    world_size: int | None = option(
        None,
        help="number of workers (default: from SLURM_ARRAY_TASK_COUNT, SLURM_NTASKS or WORLD_SIZE; else 1)",
        group="workers",
    )
    """How many workers share the units. None: from the environment."""


def _env_pair(env: dict[str, str], rank_key: str, size_key: str) -> tuple[int, int] | None:
    if rank_key in env and size_key in env:
        return int(env[rank_key]), int(env[size_key])
    return None


def rank_from_env(rank: int | None, world_size: int | None, env: dict[str, str] | None = None) -> tuple[int, int]:
    """This worker's rank and the world size: explicit values first, then the launcher's environment.

    Launchers nest, so the levels compose (outer index x inner size + inner index):
      * a Slurm array task (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT) is the
        outer level;
      * inside it, torchrun (RANK of WORLD_SIZE) or else srun (SLURM_PROCID of SLURM_NTASKS) is the
        inner level. torchrun wins over srun because under `srun torchrun` SLURM_PROCID numbers the
        nodes while RANK already numbers every process.
    Nothing set: rank 0 of 1.
    """
    env = dict(os.environ if env is None else env)
    if rank is None or world_size is None:
        outer = None
        if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
            outer = (
                int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0)),
                int(env["SLURM_ARRAY_TASK_COUNT"]),
            )
        inner = _env_pair(env, "RANK", "WORLD_SIZE") or _env_pair(env, "SLURM_PROCID", "SLURM_NTASKS") or (0, 1)
        r, w = inner
        if outer is not None:
            r, w = outer[0] * inner[1] + inner[0], outer[1] * inner[1]
        rank = r if rank is None else rank
        world_size = w if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"rank {rank} / world size {world_size}: need 0 <= rank < world size (check --rank/--world-size "
            "or the SLURM_ARRAY_TASK_*, SLURM_PROCID/SLURM_NTASKS, RANK/WORLD_SIZE environment)"
        )
    return rank, world_size


# -- devices --------------------------------------------------------------------------------------------


def visible_gpus(spec: str | None, env: dict[str, str] | None = None) -> list[str]:
    """GPU ids to hand out: --gpus, else CUDA_VISIBLE_DEVICES, else nvidia-smi's list; [] for none."""
    env = dict(os.environ if env is None else env)
    if spec is not None:
        return [] if spec.strip().lower() in ("", "none", "cpu") else [g.strip() for g in spec.split(",") if g.strip()]
    if "CUDA_VISIBLE_DEVICES" in env:
        return [g.strip() for g in env["CUDA_VISIBLE_DEVICES"].split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def cpu_sets(n_workers: int, allowed: list[int]) -> list[list[int]] | None:
    """Split the allowed cores into n contiguous, disjoint, near-equal sets; None when there are too few."""
    if n_workers < 1 or len(allowed) < n_workers:
        return None
    size, extra = divmod(len(allowed), n_workers)
    sets, start = [], 0
    for i in range(n_workers):
        stop = start + size + (1 if i < extra else 0)
        sets.append(allowed[start:stop])
        start = stop
    return sets


@dataclass
class WorkerSpec:
    rank: int
    env: dict[str, str]
    cpus: list[int] | None = None
    gpus: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.gpus:
            return f"GPUs {','.join(self.gpus)}"
        if self.cpus:
            return f"CPUs {_ranges(self.cpus)}"
        return "unpinned"


def _ranges(cpus: list[int]) -> str:
    """[0, 1, 2, 3, 6] -> "0-3,6"."""
    parts: list[str] = []
    start = cpus[0]
    for a, b in zip(cpus, [*cpus[1:], None]):
        if b is None or b != a + 1:
            parts.append(str(start) if start == a else f"{start}-{a}")
            start = a if b is None else b
    return ",".join(parts)


def worker_specs(
    n_workers: int, gpus: list[str], tp: int, pin: bool, base_env: dict[str, str] | None = None
) -> list[WorkerSpec]:
    """One spec per worker: its environment and the devices it may use."""
    base_env = dict(os.environ if base_env is None else base_env)
    # The launcher's own place in a Slurm/torchrun job must not leak into the workers: they get
    # explicit --rank/--world-size, and the environment would otherwise also be read by libraries.
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        base_env.pop(key, None)
    base_env["PYTHONUNBUFFERED"] = "1"
    specs = []
    if gpus:
        if n_workers * tp > len(gpus):
            raise ValueError(
                f"--workers {n_workers} x --tensor-parallel-size {tp} needs {n_workers * tp} GPUs; "
                f"{len(gpus)} are visible ({','.join(gpus)}). Lower --workers."
            )
        for r in range(n_workers):
            mine = gpus[r * tp : (r + 1) * tp]
            specs.append(WorkerSpec(r, {**base_env, "CUDA_VISIBLE_DEVICES": ",".join(mine)}, gpus=mine))
        return specs
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    sets = cpu_sets(n_workers, allowed) if pin else None
    if pin and sets is None and n_workers > 1:
        print(f"[launch] {n_workers} workers on {len(allowed)} cores: not pinning", file=sys.stderr)
    for r in range(n_workers):
        env = {**base_env, "CUDA_VISIBLE_DEVICES": ""}
        cpus = sets[r] if sets else None
        if cpus:
            # torch sizes its thread pool from this, not from the affinity mask.
            env["OMP_NUM_THREADS"] = str(len(cpus))
        specs.append(WorkerSpec(r, env, cpus=cpus))
    return specs


# -- processes ------------------------------------------------------------------------------------------


def job_flags(args: argparse.Namespace) -> list[str]:
    """The job flags of `args` as a command line, for `remit-annotate plan/run` (every value explicit)."""
    return to_argv(AnnotateConfig, vars(args))


def _child_setup(cpus: list[int] | None) -> Any:
    def setup() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)
        try:  # Linux: the worker gets SIGTERM if the launcher dies, instead of scoring on unobserved
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    return setup


def _start(cmd: list[str], env: dict[str, str], log: Path, cpus: list[int] | None) -> tuple[subprocess.Popen, IO]:
    fh = open(log, "ab")
    fh.write(f"$ {' '.join(cmd)}\n".encode())
    fh.flush()
    proc = subprocess.Popen(
        cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_child_setup(cpus)
    )
    return proc, fh


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    | " + line[-300:] for line in text[-lines:])


def _exit_reason(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit code {rc}"


class _Terminated(Exception):
    pass


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated(signum)


def run(args: argparse.Namespace) -> int:
    from remit.annotate.finalize import finalize

    cfg = config_from_args(AnnotateConfig, args)
    launch = config_from_args(LaunchFlags, args)
    output = cfg.output
    tp = cfg.tensor_parallel_size
    gpus = visible_gpus(launch.gpus)
    n = launch.workers or (len(gpus) // tp if gpus else 1)
    if n < 1:
        raise ValueError(f"--workers must be >= 1 (got {launch.workers}; {len(gpus)} GPUs at tensor parallel {tp})")
    specs = worker_specs(n, gpus, tp, pin=not launch.no_pin)
    work = WorkDir(output)
    claim_folder(work)  # before the logs go into it: a folder that is not remit's is refused untouched
    log_dir = launch.log_dir or work.logs_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    python = [sys.executable, "-m", "remit.annotate.cli"]
    flags = job_flags(args)
    t0 = time.perf_counter()

    # Plan (and claim) once, in one process: workers then find plan.json and never wait on each other; a
    # finished output with damaged shards is reopened there, once. On a resume the plan exists and this
    # step only checks the run; each worker still checks that the plan belongs to its run.
    plan_log = work.plan_log_path(log_dir)
    proc, fh = _start([*python, "plan", *flags], {**specs[0].env, "CUDA_VISIBLE_DEVICES": ""}, plan_log, None)
    rc = proc.wait()
    fh.close()
    if rc != 0:
        print(f"[launch] planning failed ({_exit_reason(rc)}); log: {plan_log}\n{_tail(plan_log)}", file=sys.stderr)
        return 1

    procs: dict[int, tuple[subprocess.Popen, IO, Path]] = {}
    old_term = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        for spec in specs:
            log = work.worker_log_path(spec.rank, log_dir)
            cmd = [*python, "run", *flags, "--rank", str(spec.rank), "--world-size", str(n)]
            proc, fh = _start(cmd, spec.env, log, spec.cpus)
            procs[spec.rank] = (proc, fh, log)
            print(f"[launch] worker {spec.rank}/{n} pid {proc.pid} ({spec.describe()}), log {log}", flush=True)
        failed = _wait(procs, work, cfg.progress_every_s)
    except (KeyboardInterrupt, _Terminated):
        for proc, _, _ in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc, _, _ in procs.values():
            proc.wait()
        print("[launch] stopped; finished units are kept. Rerun the same command to resume.", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old_term)
        for _, fh, _ in procs.values():
            fh.close()
    if failed:
        for rank, rc in failed:
            log = procs[rank][2]
            print(f"[launch] worker {rank} failed ({_exit_reason(rc)}); log: {log}\n{_tail(log)}", file=sys.stderr)
        print(
            f"[launch] {len(failed)} of {n} workers failed; the others' units are kept. Fix the cause and rerun "
            "the same command (any --workers) to finish the rest.",
            file=sys.stderr,
        )
        return 1
    manifest = finalize(work, keep_work=cfg.keep_work)
    t = manifest["totals"]
    print(
        f"[launch] {n} workers, {time.perf_counter() - t0:.1f} s; {output}: {t['shards']} shards, {t['rows']:,} rows, "
        f"{t['tokens']:,} tokens; manifest.json written",
        flush=True,
    )
    return 0


def _wait(procs: dict[int, tuple[subprocess.Popen, IO, Path]], work: WorkDir, every_s: float) -> list[tuple[int, int]]:
    """Wait for every worker; report each exit and, periodically, the units done. Returns failures."""
    running = dict(procs)
    failed: list[tuple[int, int]] = []
    last = time.monotonic()
    while running:
        for rank in list(running):
            rc = running[rank][0].poll()
            if rc is None:
                continue
            del running[rank]
            print(f"[launch] worker {rank} {'done' if rc == 0 else 'FAILED: ' + _exit_reason(rc)}", flush=True)
            if rc != 0:
                failed.append((rank, rc))
        if running and time.monotonic() - last >= every_s:
            last = time.monotonic()
            print(f"[launch] {work.count_records()} units done, {len(running)} workers running", flush=True)
        time.sleep(0.2)
    return sorted(failed)
