"""`run_command`: every way a command can fail ends in one line on stderr and a distinct exit status."""

from __future__ import annotations

import errno

import pytest

from remit.common.errors import run_command


def _raise(e: BaseException):
    def fn() -> None:
        raise e

    return fn


def test_success_and_explicit_status() -> None:
    assert run_command("p", lambda: None) == 0
    assert run_command("p", lambda: 3) == 3


def test_user_error_is_one_line_status_2(capsys) -> None:
    assert run_command("remit-x", _raise(ValueError("a.json: bad value 3; use 4"))) == 2
    err = capsys.readouterr().err
    assert err == "remit-x: error: a.json: bad value 3; use 4\n"


def test_os_errors_name_file_cause_and_fix(capsys, tmp_path) -> None:
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "shard.parquet"))
    assert run_command("p", _raise(full)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "shard.parquet: No space left on device; free disk space" in err
    assert run_command("p", _raise(PermissionError(errno.EACCES, "Permission denied", "/ro/out"))) == 1
    assert "/ro/out: Permission denied; make the path writable" in capsys.readouterr().err
    assert run_command("p", _raise(IsADirectoryError(errno.EISDIR, "Is a directory", "page"))) == 1
    assert "page: Is a directory; the path is a folder: give a file name" in capsys.readouterr().err


def test_unexpected_error_is_one_line_naming_the_debug_switch(capsys, monkeypatch) -> None:
    monkeypatch.delenv("REMIT_DEBUG", raising=False)
    assert run_command("p", _raise(KeyError("x\ny"))) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: KeyError" in err and "REMIT_DEBUG=1" in err


def test_extra_user_errors_and_debug_reraises(capsys, monkeypatch) -> None:
    monkeypatch.delenv("REMIT_DEBUG", raising=False)
    assert run_command("p", _raise(RuntimeError("model/: engine failed; fix")), (RuntimeError,)) == 2
    assert capsys.readouterr().err == "p: error: model/: engine failed; fix\n"
    monkeypatch.setenv("REMIT_DEBUG", "1")
    with pytest.raises(ValueError):
        run_command("p", _raise(ValueError("shown with its traceback")))


def test_interrupt_exits_130(capsys, monkeypatch) -> None:
    monkeypatch.delenv("REMIT_DEBUG", raising=False)
    assert run_command("p", _raise(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err == "p: interrupted\n"


# --- a full disk, wherever the writer hides it -------------------------------------------------------


class _WrappedLikeACheckpointWriter(BaseException):
    """Like torch's CheckpointException: a BaseException keeping each rank's error in `failures`."""

    def __init__(self, failures: dict) -> None:
        super().__init__("checkpointing failed")
        self.failures = failures


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError("IOError: No space left on device. Detail: [errno 28]"),  # pyarrow: no errno, no file
        RuntimeError("PytorchStreamWriter failed writing file data/0: [Errno 28] No space left on device"),
        _WrappedLikeACheckpointWriter({1: (RuntimeError("x"), "tb"), 0: (OSError(errno.ENOSPC, "full"), "tb")}),
    ],
)
def test_a_full_disk_is_found_behind_any_wrapper(error) -> None:
    from remit.common.errors import os_error_in

    found = os_error_in(error)
    assert found is not None and found.errno == errno.ENOSPC


def test_an_atomic_write_on_a_full_disk_names_its_file_and_leaves_the_old_content(tmp_path, capsys) -> None:
    from remit.common.atomic import atomic_path, leftovers

    target = tmp_path / "shard-00000.parquet"
    target.write_bytes(b"old")

    def write() -> None:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise OSError("IOError: No space left on device")  # as pyarrow's writer raises it

    assert run_command("remit-annotate", write) == 1
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"remit-annotate: error: {target}: No space left on device; free disk space (or point the output elsewhere) and run the same command again"
    )
    assert target.read_bytes() == b"old" and not leftovers(target)


def test_a_checkpoint_save_on_a_full_disk_names_the_folder(tmp_path, capsys) -> None:
    pytest.importorskip("torch")
    from remit.train.checkpoint import _saving_errors

    def save() -> None:
        with _saving_errors(tmp_path / "iter_0000010"):
            raise _WrappedLikeACheckpointWriter({0: (RuntimeError("file write failed: No space left on device"), "tb")})

    assert run_command("remit-train", save) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"remit-train: error: {tmp_path / 'iter_0000010'}: No space left on device")
    assert "internal error" not in err and "free disk space" in err
