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
