"""Stop requests: a preemption signal or the run's own time limit.

torchrun forwards SIGTERM/SIGINT/SIGHUP/SIGQUIT to its workers, and Slurm can send SIGUSR1 to
srun's tasks, so those set a flag; the loop agrees on it across ranks at a step boundary,
saves a checkpoint and exits with EXIT_PREEMPTED, which the Slurm script takes as "requeue me".
"""
from __future__ import annotations

import signal
import time

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped early with a checkpoint; run again to continue
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP)


class StopRequest:
    def __init__(self, max_time_s: float = 0.0):
        self.reason: str | None = None
        self.deadline = time.monotonic() + max_time_s if max_time_s > 0 else None
        self._previous = {}

    def __enter__(self):
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
        self.reason = signal.Signals(signum).name

    def requested(self) -> bool:
        if self.reason is None and self.deadline is not None and time.monotonic() >= self.deadline:
            self.reason = "max_time"
        return self.reason is not None
