"""A full disk stops the run with one line that says so and where, instead of a traceback from deep in torch.

torch.save reports a failed write as `RuntimeError: [enforce fail at inline_container.cc:...]`: with the
OSError (ENOSPC) as its context when the file object is ours (manifest.HashingFile), with nothing when torch
opened the file itself; then the free space left on the file's disk decides.
"""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager

FULL = (errno.ENOSPC, errno.EDQUOT)
NEARLY_FULL_BYTES = 1 << 20  # a write that failed on a disk it filled leaves less than this free


def _chain(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _free_bytes(path: str) -> int | None:
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def disk_full_reason(exc: BaseException, path: str) -> str | None:
    """Why `exc` means the disk holding `path` is full ("No space left on device"), or None if it does not."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in FULL:
            return os.strerror(e.errno)
    if isinstance(exc, RuntimeError) and "inline_container" in str(exc):
        free = _free_bytes(path)
        if free is not None and free < NEARLY_FULL_BYTES:
            return f"a write failed with {free} bytes left free"
    return None


@contextmanager
def stops_the_run(path: str, doing: str, cleanup=None):
    """Turn a full disk while `doing` (writing `path`) into a ValueError (train.py: one line, exit code 2),
    after `cleanup()`; any other error passes through unchanged."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        reason = disk_full_reason(e, path)
        if reason is None:
            raise
        if cleanup is not None:
            cleanup()
        where = next(
            (e.filename for e in _chain(e) if isinstance(e, OSError) and e.filename), path
        )  # the file, if named
        raise ValueError(
            f"disk full ({reason}) at {where} while {doing}; free space on that disk or set run.out_dir to another one"
        ) from None
