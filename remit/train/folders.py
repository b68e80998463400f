"""The folders remit-train writes, and the rules that keep it from writing over anything else.

- A run folder (`--save`) and an export folder (`--export-hf`, `export-hf --out`) carry a marker
  (`.remit-run`, `.remit-export`) written before anything else, so resuming or exporting into them again
  is allowed. Folders written by earlier remit versions count as remit's too: a run folder by its
  checkpoint tracker or metrics.jsonl, an export folder by holding only what an export writes (config,
  tokenizer files and model.safetensors, with both of the first and last).
- Neither may lie inside an annotation output (its `.remit-output` marker or remit manifest in the folder
  or above it), be or lie inside the `--init-hf` folder, or be a non-empty folder that is not remit's of
  that kind. An export folder may not be the run folder or its template either.
- One job per run folder: rank 0 holds a lease on it for the whole run (`remit.common.lease`: host, pid,
  job id, heartbeat). A second job is refused in one line naming the holder; a lease whose holder is gone
  (its heartbeat stopped, e.g. after a requeue onto another node) is taken over with a note.
"""

from __future__ import annotations

import json
from pathlib import Path

from remit.common.atomic import write_json_atomic
from remit.common.lease import Leases
from remit.shards.manifest import MANIFEST_NAME, OWNERSHIP_MARKER
from remit.shards.schema import FORMAT_NAME
from remit.train.architecture import TEMPLATE_FILES
from remit.train.config import TRACKER_FILE

RUN_MARKER = ".remit-run"
EXPORT_MARKER = ".remit-export"
LEASE_FILE = ".remit-run.lease"
_LEGACY_RUN_FILES = (TRACKER_FILE, "metrics.jsonl")
_EXPORT_FILES = {*TEMPLATE_FILES, "model.safetensors", EXPORT_MARKER}


class FolderError(ValueError):
    """A folder remit-train was asked to write is not one it may write into."""


def _resolved(path: Path) -> Path:
    return Path(path).expanduser().resolve()


def _within(path: Path, folder: Path) -> bool:
    path, folder = _resolved(path), _resolved(folder)
    return path == folder or folder in path.parents


def annotation_output_around(path: Path) -> Path | None:
    """The annotation output folder that is `path` or holds it, if any."""
    for folder in (_resolved(path), *_resolved(path).parents):
        if (folder / OWNERSHIP_MARKER).exists():
            return folder
        manifest = folder / MANIFEST_NAME
        try:
            if manifest.is_file() and json.loads(manifest.read_text()).get("format") == FORMAT_NAME:
                return folder
        except (OSError, ValueError, AttributeError):
            continue
    return None


def _entries(folder: Path) -> list[str]:
    try:
        return sorted(p.name for p in folder.iterdir())
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise FolderError(f"{folder}: is a file, not a folder; pass a folder path") from None


def _refuse_common(folder: Path, flag: str, init_hf: Path | None) -> None:
    output = annotation_output_around(folder)
    if output is not None:
        raise FolderError(
            f"{folder}: {flag} lies inside the annotation output {output}; remit never writes into an output "
            f"folder (its files are the data): pass a folder outside it"
        )
    if init_hf is not None and _within(folder, init_hf):
        raise FolderError(
            f"{folder}: {flag} is (or lies inside) the --init-hf folder {init_hf}, whose model it would "
            f"overwrite; pass another folder"
        )


def check_run_folder(save: Path, init_hf: Path | None) -> None:
    """Refuse a --save folder remit may not write into (see the module docstring)."""
    _refuse_common(save, "--save", init_hf)
    names = _entries(save)
    # A lease alone: another job is claiming the folder right now (the lease refuses or takes it over next).
    if not names or RUN_MARKER in names or LEASE_FILE in names or any(n in names for n in _LEGACY_RUN_FILES):
        return
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    raise FolderError(
        f"{save}: --save is a folder that remit-train did not create (it holds {shown}); pass a new or empty "
        f"folder, or the --save folder of an earlier remit-train run to resume it"
    )


def claim_run_folder(save: Path) -> None:
    """Mark `save` as a remit-train run folder (before anything else is written into it)."""
    save.mkdir(parents=True, exist_ok=True)
    if not (save / RUN_MARKER).exists():
        write_json_atomic(save / RUN_MARKER, {"created_by": "remit-train"})


def check_export_folder(out: Path, init_hf: Path | None, run_dir: Path | None) -> None:
    """Refuse an export folder remit may not write into (see the module docstring)."""
    _refuse_common(out, "the export folder", init_hf)
    if run_dir is not None and _within(run_dir, out):
        raise FolderError(
            f"{out}: the export folder is (or holds) the run folder {run_dir}; pass a folder of its own, e.g. "
            f"{Path(run_dir) / 'hf'}"
        )
    if run_dir is not None and _within(out, Path(run_dir) / "hf_template"):
        raise FolderError(f"{out}: the export folder lies inside the run's template {run_dir / 'hf_template'}")
    names = set(_entries(out))
    legacy = {"config.json", "model.safetensors"} <= names and names <= _EXPORT_FILES
    if not names or EXPORT_MARKER in names or legacy:
        return
    shown = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
    raise FolderError(
        f"{out}: the export folder holds files remit did not write ({shown}); pass a new or empty folder, "
        "or one an earlier export wrote"
    )


def claim_export_folder(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if not (out / EXPORT_MARKER).exists():
        write_json_atomic(out / EXPORT_MARKER, {"created_by": "remit-train export"})


def run_lease(save: Path) -> Leases[str]:
    """The lease of one run folder (key "run"), held by rank 0."""
    return Leases(lambda _key: save / LEASE_FILE, rank=0, what=lambda _key: f"{save}", holder="training job")


def hold_run_folder(save: Path) -> Leases[str]:
    """Take the run folder's lease (refusing in one line when a live job holds it); the caller releases it
    with `__exit__` when the run ends."""
    leases = run_lease(save).__enter__()
    holder = leases.acquire("run")
    if holder is not None:
        leases.__exit__(None, None, None)
        raise FolderError(
            f"{save}: another training job holds this run folder ({holder.describe()}); wait for it to end, "
            "or pass another --save"
        )
    return leases
