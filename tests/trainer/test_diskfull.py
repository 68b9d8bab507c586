"""A full disk is recognised however torch reports it, and becomes one ValueError naming the path."""

import errno
import os
import shutil

import pytest
import torch

from trainer import diskfull, manifest


def enospc():
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FullDisk:
    """A file object whose writes fail as on a full disk."""

    def write(self, data):
        raise enospc()

    def flush(self):
        pass


def test_torch_save_into_a_full_file_is_recognised(tmp_path):
    with pytest.raises((RuntimeError, OSError)) as e:  # an enforce failure with the OSError as context, or that again
        torch.save({"x": torch.zeros(1000)}, FullDisk())
    assert diskfull.disk_full_reason(e.value, str(tmp_path)) == os.strerror(errno.ENOSPC)


@pytest.mark.parametrize(
    "error, full",
    [
        (enospc(), True),
        (OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)), True),
        (OSError(errno.EACCES, "Permission denied"), False),
        (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"), False),  # disk has room
        (RuntimeError("CUDA out of memory"), False),
    ],
)
def test_disk_full_reason(tmp_path, error, full):
    assert (diskfull.disk_full_reason(error, str(tmp_path)) is not None) == full


def test_a_torch_write_failure_on_a_disk_with_nothing_left_counts(tmp_path, monkeypatch):
    """torch wrote the file itself: no OSError to read, so the free space decides."""
    monkeypatch.setattr(diskfull.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1 << 30, 1 << 30, 4096))
    error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    assert "4096 bytes left" in diskfull.disk_full_reason(error, str(tmp_path / "not" / "yet"))


def test_stops_the_run_cleans_up_and_names_the_path(tmp_path):
    cleaned = []
    with pytest.raises(ValueError) as e:
        with diskfull.stops_the_run("/some/where/file", "doing it", cleanup=lambda: cleaned.append(True)):
            raise enospc()
    assert cleaned == [True]
    message = str(e.value)
    assert (
        message.startswith("disk full (No space left on device) at /some/where/file while doing it")
        and "\n" not in message
    )
    assert e.value.__cause__ is None and e.value.__suppress_context__  # one line, no chained traceback


def test_the_file_the_error_names_is_the_place(tmp_path):
    with pytest.raises(
        ValueError, match=r"^disk full \(No space left on device\) at /cache/tokens.bin while training;"
    ):
        with diskfull.stops_the_run("/runs/x", "training"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/cache/tokens.bin")


def test_other_errors_pass_through_without_cleanup(tmp_path):
    cleaned = []
    with pytest.raises(PermissionError):
        with diskfull.stops_the_run(str(tmp_path), "x", cleanup=lambda: cleaned.append(True)):
            raise PermissionError(errno.EACCES, "Permission denied")
    assert cleaned == []


def test_a_save_that_fills_the_disk_publishes_nothing(tmp_path, monkeypatch):
    """manifest.saving around a save whose writes fail: one line, the unfinished folder gone."""
    root = tmp_path / "checkpoints"
    monkeypatch.setattr(manifest.HashingFile, "write", lambda self, data: FullDisk().write(data))
    with pytest.raises(ValueError, match=r"disk full .*\.tmp-step_0000003 while saving the checkpoint of step 3"):
        with manifest.saving(str(root), 3) as tmp:
            os.makedirs(tmp)
            manifest.save_object({"x": torch.zeros(10)}, os.path.join(tmp, "trainer.pt"))
    assert os.listdir(root) == []
