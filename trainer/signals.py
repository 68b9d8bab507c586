"""Stop requests: a preemption signal or the run's own time limit.

torchrun forwards SIGTERM/SIGINT/SIGHUP/SIGQUIT to its workers, and Slurm can send SIGUSR1 to
every process of a job step, so those set a flag; the loop agrees on it across ranks at a step
boundary, saves a checkpoint and exits with EXIT_PREEMPTED, which the Slurm script takes as
"requeue me". torchrun reports any failed worker as exit code 1, so the code alone does not reach
the script. Two files say it instead (announce_preempted):
- runs/NAME/REQUEUE, written by rank 0 when the run stops early with a checkpoint (the step, and that
  the same command resumes it) and removed when the run starts again: for a user or any job script;
- where SLIMTRAIN_STOP_MARKER names a file, every process that stopped early appends to it
  (slurm/train.sbatch sets it, since it cannot know the run directory, and requeues when it appears).
"""

from __future__ import annotations

import os
import signal
import time

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped early with a checkpoint; run again to continue
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP)
STOP_MARKER_ENV = "SLIMTRAIN_STOP_MARKER"
REQUEUE_FILE = "REQUEUE"  # in the run directory: present while the run waits to be resumed


class StopRequest:
    def __init__(self, max_time_s: float = 0.0):
        self.reason: str | None = None
        self.deadline = time.monotonic() + max_time_s if max_time_s > 0 else None
        self._previous = {}

    def __enter__(self):
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type, exc, tb):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if exc_type is None and self.reason is not None:
            write_stop_marker(self.reason)

    def _handle(self, signum, frame):
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
        self.reason = signal.Signals(signum).name

    def requested(self) -> bool:
        if self.reason is None and self.deadline is not None and time.monotonic() >= self.deadline:
            self.reason = "max_time"
        return self.reason is not None


def write_stop_marker(reason: str, environ: dict[str, str] | None = None) -> None:
    """Tell the launcher this process stopped early (with a checkpoint); a no-op outside one that asks."""
    path = (os.environ if environ is None else environ).get(STOP_MARKER_ENV)
    if not path:
        return
    try:
        with open(path, "a") as f:
            f.write(f"{reason} pid={os.getpid()}\n")
    except OSError:
        pass  # the exit code still says it; never fail a clean stop over a marker


def announce_preempted(run_dir: str, is_main: bool, step: int) -> None:
    """This process exits EXIT_PREEMPTED after saving at `step`: say so where torchrun's exit code 1 cannot."""
    write_stop_marker(f"exit {EXIT_PREEMPTED} step={step}")
    if is_main:
        with open(os.path.join(run_dir, REQUEUE_FILE), "w") as f:
            f.write(
                f"stopped early at step {step} with a checkpoint (exit code {EXIT_PREEMPTED}); "
                f"run the same command again to resume\n"
            )


def clear_preempted(run_dir: str) -> None:
    """Main rank, at start: the run is going again, so an earlier REQUEUE no longer holds."""
    try:
        os.remove(os.path.join(run_dir, REQUEUE_FILE))
    except FileNotFoundError:
        pass
