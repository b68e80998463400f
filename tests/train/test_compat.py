"""The differences between megatron-core releases: the feature tests agree with the installed release, a
checkpoint of a newer format is refused in one line, and 0.19's deprecation notices are dropped only
when the libraries are quiet."""

from __future__ import annotations

import logging
from importlib.metadata import version

import pytest

from remit.train import compat

pytestmark = pytest.mark.megatron


def test_the_release_and_its_checkpoint_format_are_read_from_the_installed_package():
    assert compat.version_text() == version("megatron-core").split("+")[0]
    major, minor = map(int, compat.version_text().split(".")[:2])
    assert compat.reads_common_state_item() == ((major, minor) >= (0, 19))


def test_a_checkpoint_of_0_19_under_an_older_release_is_refused_in_one_line(tmp_path, monkeypatch):
    items = {"common_state/shard_0_1", "embedding.word_embeddings.weight"}
    monkeypatch.setattr(compat, "reads_common_state_item", lambda: False)
    with pytest.raises(ValueError) as e:
        compat.check_checkpoint_format(tmp_path, items)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{tmp_path}: written by megatron-core 0.19 or later"), msg
    assert "resume with megatron-core >= 0.19" in msg
    compat.check_checkpoint_format(tmp_path, {"embedding.word_embeddings.weight"})  # no common state at all
    (tmp_path / "common.pt").touch()
    compat.check_checkpoint_format(tmp_path, items)  # the older format
    monkeypatch.setattr(compat, "reads_common_state_item", lambda: True)
    (tmp_path / "common.pt").unlink()
    compat.check_checkpoint_format(tmp_path, items)  # a release that reads it


@pytest.mark.parametrize("quiet", [True, False])
def test_deprecation_notices_are_dropped_only_when_quiet(monkeypatch, caplog, quiet):
    monkeypatch.setenv("TQDM_DISABLE", "1" if quiet else "0")
    loggers = [logging.getLogger(name) for name in compat._NOTICES]
    for logger in loggers:
        monkeypatch.setattr(logger, "filters", [])
    compat.quiet_deprecation_notices()
    compat.quiet_deprecation_notices()  # once is enough
    assert all(len(logger.filters) == (1 if quiet else 0) for logger in loggers)
    with caplog.at_level(logging.WARNING):
        for name, prefix in compat._NOTICES.items():
            logging.getLogger(name).warning(f"{prefix} and will be removed")
            logging.getLogger(name).warning("something else")
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("something else") == 3
    assert len(messages) == (3 if quiet else 6)


def test_the_writers_logged_errors_are_collected_during_a_save_and_kept_off_stderr(monkeypatch, caplog):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    logger = logging.getLogger(compat._WRITER_LOGGER)
    with caplog.at_level(logging.DEBUG), compat.writer_errors() as logged:
        logger.error("Local worker 0 encountered an error: [Errno 28] No space left on device")
        logger.debug("FileSystemWriterAsync: collecting worker results...")
    logger.error("after the save")
    assert logged == ["Local worker 0 encountered an error: [Errno 28] No space left on device"]
    assert [r.getMessage() for r in caplog.records] == [
        "FileSystemWriterAsync: collecting worker results...",
        "after the save",
    ]
