"""StopRequest: signals and max_time set a stop reason; a stop (exit 75) is announced in files torchrun cannot hide."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.helpers import run_train
from trainer.signals import (
    EXIT_PREEMPTED,
    REQUEUE_FILE,
    STOP_MARKER_ENV,
    StopRequest,
    announce_preempted,
    clear_preempted,
)


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM, signal.SIGHUP])
def test_signal_sets_the_reason_and_writes_the_marker(tmp_path, monkeypatch, sig):
    marker = tmp_path / "stop"
    monkeypatch.setenv(STOP_MARKER_ENV, str(marker))
    before = signal.getsignal(sig)
    with StopRequest() as stop:
        assert not stop.requested()
        os.kill(os.getpid(), sig)
        assert stop.requested() and stop.reason == sig.name
    assert signal.getsignal(sig) is before  # handlers restored
    assert marker.read_text().startswith(sig.name)


def test_max_time(tmp_path, monkeypatch):
    monkeypatch.setenv(STOP_MARKER_ENV, str(tmp_path / "stop"))
    with StopRequest(max_time_s=0.05) as stop:
        assert not stop.requested()
        time.sleep(0.1)
        assert stop.requested() and stop.reason == "max_time"
    assert (tmp_path / "stop").exists()


def test_no_marker_without_a_stop_or_after_an_error(tmp_path, monkeypatch):
    marker = tmp_path / "stop"
    monkeypatch.setenv(STOP_MARKER_ENV, str(marker))
    with StopRequest():
        pass
    with pytest.raises(RuntimeError), StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.requested()
        raise RuntimeError("crashed while stopping")  # a crash is not a clean stop: no requeue
    assert not marker.exists()


def test_second_ctrl_c_interrupts():
    with pytest.raises(KeyboardInterrupt), StopRequest():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)


def test_a_stop_is_announced_in_files(tmp_path, monkeypatch):
    """Exit code 75 does not get through torchrun, so the run directory (rank 0) and the launcher's marker say it."""
    marker = tmp_path / "stop"
    monkeypatch.setenv(STOP_MARKER_ENV, str(marker))
    announce_preempted(str(tmp_path), is_main=False, step=7)
    assert not (tmp_path / REQUEUE_FILE).exists() and marker.read_text().startswith(f"exit {EXIT_PREEMPTED} step=7")
    announce_preempted(str(tmp_path), is_main=True, step=7)
    assert "stopped early at step 7" in (tmp_path / REQUEUE_FILE).read_text()
    clear_preempted(str(tmp_path))
    clear_preempted(str(tmp_path))  # nothing to clear: fine
    assert not (tmp_path / REQUEUE_FILE).exists()


@pytest.mark.slow
def test_under_torchrun_resume_me_is_a_file_and_errors_are_one_line(tmp_path, monkeypatch):
    marker = tmp_path / "stop"
    monkeypatch.setenv(STOP_MARKER_ENV, str(marker))
    run_dir = tmp_path / "runs" / "run"
    bad = run_train(tmp_path, ["train.steps=4", "train.save_every=0"], nproc=2, check=False)
    assert bad.returncode != 0 and not run_dir.exists()
    assert [line for line in bad.stderr.splitlines() if line.startswith("error:")] == [
        "error: train.save_every=0: must be a positive number of steps (to do it only at the end, set it to "
        "train.steps)"
    ]
    stopped = run_train(tmp_path, ["train.steps=4", "train.stop_at=2"], nproc=2, check=False)
    assert stopped.returncode == 1, stopped.stderr[-3000:]  # torchrun's code for any failed worker, 75 included
    assert (run_dir / REQUEUE_FILE).read_text().startswith("stopped early at step 2")
    assert marker.read_text().count(f"exit {EXIT_PREEMPTED} step=2") == 2  # each process
    run_train(tmp_path, ["train.steps=4"], nproc=2)
    assert not (run_dir / REQUEUE_FILE).exists()
