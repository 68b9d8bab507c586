"""One run per run directory: runs/NAME/.lock, held by the main rank from start to exit.

Two runs with one run.name would append to one metrics.jsonl and write into the same .tmp-step_* folders
(a published checkpoint could mix files of both). The lock file records who holds it:

    {"pid": 1234, "host": "node7", "started": 1717000000.0, "job": "5501"}

and a second run stops with one line naming the holder (pid@host). A lock whose holder is gone is stale and
taken over with a log line: on this host, when its pid is dead or now belongs to a younger process (pid
reuse); on any host, when it names this process's own job (SLURM_JOB_ID, or torchrun's run id): a job
requeued onto another node after its first node died finds its own lock and goes on. A lock held by a
live-looking pid on another host cannot be checked from here; the error says which file to delete.

The file appears complete or not at all (written beside it, then hard-linked into place: atomic and
exclusive also on NFS), so a reader never sees half a lock.
"""

from __future__ import annotations

import json
import os
import socket
from contextlib import contextmanager

import psutil

from launch.env import slurm_job_id
from trainer import diskfull

LOCK = ".lock"


def _job_id() -> str | None:
    """This process's job: the same across a Slurm requeue or a torchrun restart, None outside both."""
    elastic = os.environ.get("TORCHELASTIC_RUN_ID")
    return slurm_job_id() or (elastic if elastic and elastic != "none" else None)


def _me() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": psutil.Process().create_time(),
        "job": _job_id(),
    }


def describe(holder: dict | None) -> str:
    if not holder:
        return "an unreadable lock"
    job = f" (job {holder['job']})" if holder.get("job") else ""
    return f"pid {holder.get('pid')}@{holder.get('host')}{job}"


def _read(path: str) -> tuple[str | None, dict | None]:
    """The lock's raw text (None: no lock) and its fields (None: unreadable)."""
    try:
        with open(path) as f:
            raw = f.read()
    except FileNotFoundError:
        return None, None
    try:
        holder = json.loads(raw)
        return raw, holder if isinstance(holder, dict) else None
    except ValueError:
        return raw, None


def stale_reason(holder: dict | None) -> str | None:
    """Why `holder` no longer holds the lock, or None while it may."""
    if holder is None:
        return "it is unreadable"
    if holder.get("job") and holder["job"] == _job_id():
        return f"it is this job's own ({holder['job']}), left by an earlier attempt"
    if holder.get("host") != socket.gethostname():
        return None
    try:
        started = psutil.Process(int(holder["pid"])).create_time()
    except (psutil.NoSuchProcess, KeyError, TypeError, ValueError):
        return f"pid {holder.get('pid')} is not running"
    if abs(started - float(holder.get("started") or started)) > 1.0:
        return f"pid {holder['pid']} is now another process"
    return None


def _in_use(run_dir: str, holder: dict | None) -> str:
    return (
        f"run directory {run_dir} is in use by {describe(holder)} (lock {os.path.join(run_dir, LOCK)}); "
        f"pick another run.name, wait for it to end, or delete the lock if that process is gone"
    )


def check_free(run_dir: str) -> None:
    """Any rank, early: refuse at once if a live run holds the directory. Only reads; `hold` is the real
    check, this one fails before the expensive start and before the resume checks read that run's files."""
    raw, holder = _read(os.path.join(run_dir, LOCK))
    if raw is not None and stale_reason(holder) is None:
        raise ValueError(_in_use(run_dir, holder))


def _try_create(path: str, text: str) -> bool:
    """Create the lock holding `text` unless one exists; atomic and exclusive (a hard link never replaces)."""
    tmp = f"{path}.{socket.gethostname()}.{os.getpid()}"
    with diskfull.stops_the_run(path, "writing the run's lock file"):
        try:
            with open(tmp, "w") as f:
                f.write(text)
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def _remove_stale(path: str, raw: str) -> None:
    """Remove the lock if it still holds `raw`. Moved aside first, so a lock another process created in the
    meantime is put back rather than deleted."""
    aside = f"{path}.stale.{socket.gethostname()}.{os.getpid()}"
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    with open(aside) as f:
        if f.read() != raw:
            try:
                os.link(aside, path)
            except FileExistsError:
                pass
    os.remove(aside)


class RunLock:
    """The lock on one run directory, or a stand-in (`held=False`) on ranks that do not take it."""

    def __init__(self, run_dir: str, held: bool = False, created_dir: bool = False):
        self.path, self.held, self.created_dir = os.path.join(run_dir, LOCK), held, created_dir
        self.text = None  # the lock file's content while this process holds it

    @classmethod
    def acquire(cls, run_dir: str, log=print) -> RunLock:
        """Take the lock (creating the run directory), or raise ValueError naming the live holder."""
        created = not os.path.isdir(run_dir)
        os.makedirs(run_dir, exist_ok=True)
        lock, text = cls(run_dir, created_dir=created), json.dumps(_me())
        for _ in range(5):  # each round either creates the lock or removes a stale one a racing start left
            if _try_create(lock.path, text):
                lock.held, lock.text = True, text
                return lock
            raw, holder = _read(lock.path)
            if raw is None:
                continue
            reason = stale_reason(holder)
            if reason is None:
                lock.remove_dir_if_unused()
                raise ValueError(_in_use(run_dir, holder))
            log(f"lock: taking over the stale lock {lock.path} of {describe(holder)}: {reason}")
            _remove_stale(lock.path, raw)
        raise ValueError(f"could not take the lock {lock.path}: other starts keep racing for it; start again")

    def release(self) -> None:
        """Remove the lock if it is still this process's; then the run directory, if this start made it
        and left nothing in it (an error before the first file)."""
        if self.held and _read(self.path)[0] == self.text:
            os.remove(self.path)
        self.held = False
        self.remove_dir_if_unused()

    def remove_dir_if_unused(self) -> None:
        if self.created_dir:
            try:
                os.rmdir(os.path.dirname(self.path))
            except OSError:
                pass  # not empty: the run wrote something


@contextmanager
def hold(run_dir: str, is_main: bool, broadcast, log=print):
    """Every rank, around the whole run: the main one takes the lock and tells the others whether it got it,
    so all stop together with the same one-line error; only it touches the file (ranks would race)."""
    lock, error = RunLock(run_dir), None
    if is_main:
        try:
            lock = RunLock.acquire(run_dir, log)
        except ValueError as e:
            error = str(e)
        except OSError as e:  # before the broadcast, or the other ranks would wait for it forever
            error = f"cannot lock the run directory {run_dir}: {e.strerror or e}; set run.out_dir to a writable folder"
    error = broadcast(error)
    if error:
        raise ValueError(error)
    try:
        yield lock
    finally:
        lock.release()
