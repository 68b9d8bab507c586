"""StopRequest: signals and max_time set a stop reason; a stop tells the launcher through the marker file."""
from __future__ import annotations

import os
import signal
import time

import pytest

from trainer.signals import STOP_MARKER_ENV, StopRequest


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
