"""The run directory's lock: one holder, named when refused; stale locks taken over; only the main rank touches it."""

import json
import os
import socket
import subprocess
import sys

import psutil
import pytest

from trainer import lock


def write_lock(run_dir, **fields):
    run_dir.mkdir(parents=True, exist_ok=True)
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": psutil.Process().create_time(), "job": None}
    holder.update(fields)
    (run_dir / lock.LOCK).write_text(json.dumps(holder))
    return holder


@pytest.fixture
def other_process():
    """A live process that is not this one (a second run holding the lock)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture(autouse=True)
def _no_job(monkeypatch):
    for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(key, raising=False)


def test_acquire_writes_pid_and_host_and_release_removes_it(tmp_path):
    run_dir = tmp_path / "runs" / "x"
    held = lock.RunLock.acquire(str(run_dir))
    holder = json.loads((run_dir / lock.LOCK).read_text())
    assert (holder["pid"], holder["host"]) == (os.getpid(), socket.gethostname())
    assert sorted(os.listdir(run_dir)) == [lock.LOCK]  # no temporary file left beside it
    held.release()
    assert not run_dir.exists()  # this start made the directory and wrote nothing else into it


def test_a_second_holder_is_refused_with_one_line_naming_the_first(tmp_path, other_process):
    holder = write_lock(tmp_path, pid=other_process.pid, started=psutil.Process(other_process.pid).create_time())
    before = (tmp_path / lock.LOCK).read_text()
    with pytest.raises(ValueError) as e:
        lock.RunLock.acquire(str(tmp_path))
    message = str(e.value)
    assert f"pid {other_process.pid}@{holder['host']}" in message and "\n" not in message
    assert (tmp_path / lock.LOCK).read_text() == before


@pytest.mark.parametrize("case", ["dead pid", "pid reused", "unreadable", "own slurm job", "own torchrun job"])
def test_a_stale_lock_is_taken_over_with_a_log_line(tmp_path, monkeypatch, other_process, case):
    if case == "dead pid":
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        write_lock(tmp_path, pid=dead.pid)
    elif case == "pid reused":  # the pid is alive but started after the lock was written
        write_lock(tmp_path, pid=other_process.pid, started=psutil.Process(other_process.pid).create_time() - 100)
    elif case == "unreadable":
        (tmp_path / lock.LOCK).write_text("{not json")
    else:  # a requeued job on another node: the old node's process cannot be checked, but the job is this one
        env = {"own slurm job": "SLURM_JOB_ID", "own torchrun job": "TORCHELASTIC_RUN_ID"}[case]
        monkeypatch.setenv(env, "4242")
        write_lock(tmp_path, pid=other_process.pid, host="another-node", job="4242")
    lines = []
    held = lock.RunLock.acquire(str(tmp_path), log=lines.append)
    assert len(lines) == 1 and "stale lock" in lines[0], lines
    assert json.loads((tmp_path / lock.LOCK).read_text())["pid"] == os.getpid()
    held.release()
    assert not (tmp_path / lock.LOCK).exists()


@pytest.mark.parametrize("job", [None, "1111"])
def test_a_live_looking_lock_on_another_host_is_not_taken(tmp_path, monkeypatch, job):
    """It cannot be checked from here; another job's lock is never this one's either."""
    monkeypatch.setenv("SLURM_JOB_ID", "2222")
    write_lock(tmp_path, pid=1, host="another-node", job=job)
    with pytest.raises(ValueError, match="in use by pid 1@another-node"):
        lock.RunLock.acquire(str(tmp_path))


def test_release_leaves_a_lock_that_is_not_its_own(tmp_path):
    held = lock.RunLock.acquire(str(tmp_path))
    write_lock(tmp_path, pid=12345)  # e.g. deleted by hand and retaken by another run
    held.release()
    assert json.loads((tmp_path / lock.LOCK).read_text())["pid"] == 12345


def test_only_the_main_rank_touches_the_file_and_all_ranks_get_its_answer(tmp_path, other_process):
    with lock.hold(str(tmp_path / "a"), is_main=False, broadcast=lambda error: None) as held:
        assert not held.held and not (tmp_path / "a").exists()
    write_lock(tmp_path, pid=other_process.pid, started=psutil.Process(other_process.pid).create_time())
    refusal = "run directory is in use by pid 7@h"
    with pytest.raises(ValueError, match=refusal):  # a non-main rank raises rank 0's error
        with lock.hold(str(tmp_path), is_main=False, broadcast=lambda error: refusal):
            pass
    with pytest.raises(ValueError, match=f"pid {other_process.pid}@"):
        with lock.hold(str(tmp_path), is_main=True, broadcast=lambda error: error):
            pass


def test_hold_releases_on_any_exit(tmp_path):
    with pytest.raises(KeyError):
        with lock.hold(str(tmp_path), is_main=True, broadcast=lambda error: error):
            assert (tmp_path / lock.LOCK).exists()
            raise KeyError("boom")
    assert not (tmp_path / lock.LOCK).exists()


def test_removing_a_stale_lock_puts_back_one_that_changed_meanwhile(tmp_path):
    """Two starts that both judged the lock stale: the second must not delete the first one's new lock."""
    path = tmp_path / lock.LOCK
    path.write_text("the new holder's")
    lock._remove_stale(str(path), raw="the stale holder's")
    assert path.read_text() == "the new holder's" and os.listdir(tmp_path) == [lock.LOCK]
    lock._remove_stale(str(path), raw="the new holder's")
    assert os.listdir(tmp_path) == []


def test_check_free_only_reads(tmp_path, other_process):
    lock.check_free(str(tmp_path / "none"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_lock(tmp_path, pid=dead.pid)
    lock.check_free(str(tmp_path))  # stale: the start goes on and takes it over later
    holder = write_lock(tmp_path, pid=other_process.pid, started=psutil.Process(other_process.pid).create_time())
    with pytest.raises(ValueError, match=f"in use by pid {other_process.pid}@{holder['host']}"):
        lock.check_free(str(tmp_path))
    assert json.loads((tmp_path / lock.LOCK).read_text()) == holder and not (tmp_path / "none").exists()
