"""A run directory holds one run: what an earlier run left there is moved aside before this one writes.

Pruning keeps the highest steps in checkpoints/, so checkpoints of an earlier run with a higher step would
outlive this run's own, and the next start would silently resume the earlier run. So at start, under the
run's lock (trainer/lock.py) and before anything is written, `claim` picks the checkpoint to resume from
(verified once, the hashing shared by the ranks) and moves the earlier run's files to

    runs/NAME/previous-<YYYYmmdd-HHMMSS>/     (the same layout: checkpoints/, metrics.jsonl, config.yaml, ...)

- a fresh start (train.resume=never, every checkpoint corrupt or none, or a checkpoint of another
  directory): everything in the run directory;
- a resume from an older step of this directory: the checkpoints above that step (a run that went on from
  there and is being redone), with a copy of metrics.jsonl (which the resume trims to its step).

Moved, not deleted, and not refused: a rerun with train.resume=never is what a user types to start over,
and starting over must not cost the earlier run. Kept inside runs/NAME rather than beside it so that the
runs/ listing shows runs, not leftovers, and deleting runs/NAME deletes all of it. Each previous-* folder is
itself a run directory: `train.resume=runs/NAME/previous-.../checkpoints/step_N` continues it.
"""

from __future__ import annotations

import os
import shutil
import time

from trainer import checkpoint, dist, manifest
from trainer.config import Config
from trainer.lock import LOCK

PREVIOUS = "previous-"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
REWRITTEN = {"config.yaml", "tokenizer.model"}  # written afresh by every start: alone, they hold nothing to keep


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder + os.sep)


def earlier_files(run_dir: str, resume_from: str | None, resume: str) -> tuple[list[str], str]:
    """The paths in `run_dir` that are not this run's, and why (for the log line)."""
    root = os.path.join(run_dir, CHECKPOINTS)
    if not os.path.isdir(run_dir):
        return [], ""
    if resume_from is not None and _inside(resume_from, root):
        step = manifest.read_manifest(resume_from)["step"]
        newer = [path for s, path in manifest.list_checkpoints(root) if s > step]
        return newer, f"this run resumes step {step}; the newer ones are not part of it"
    names = [n for n in sorted(os.listdir(run_dir)) if not (n.startswith(LOCK) or n.startswith(PREVIOUS))]
    paths = [
        os.path.join(run_dir, n)
        for n in names
        if resume_from is None or not _inside(resume_from, os.path.join(run_dir, n))
    ]
    if set(names) <= REWRITTEN:
        return [], ""
    if resume_from is not None:
        why = f"this run continues {resume_from}"
    elif resume == "never":
        why = "train.resume=never starts a new run"
    else:
        why = "no checkpoint there can be resumed, so this run starts anew"
    return paths, why


def _new_previous_dir(run_dir: str) -> str:
    base = os.path.join(run_dir, PREVIOUS + time.strftime("%Y%m%d-%H%M%S"))
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    os.makedirs(path)
    return path


def move_aside(run_dir: str, paths: list[str]) -> str:
    """Move `paths` (entries of run_dir, or checkpoints in run_dir/checkpoints) into a new previous-* folder,
    keeping their place in the layout; returns the folder. Each move is one rename: nothing is copied
    except metrics.jsonl beside moved checkpoints (the resumed run keeps and trims its own)."""
    target = _new_previous_dir(run_dir)
    for path in paths:
        dst = os.path.join(target, os.path.relpath(path, run_dir))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.replace(path, dst)
    metrics = os.path.join(run_dir, METRICS)
    if os.path.isfile(metrics):
        shutil.copy2(metrics, os.path.join(target, METRICS))
    return target


def _point_tokenizer(cfg: Config, ckpt: str) -> None:
    """A resume trains on the checkpoint's own tokenizer (runfiles.check_resume refused a different one)."""
    own = os.path.join(ckpt, "tokenizer.model")
    if os.path.isfile(own):
        cfg.data.tokenizer = own


def claim(run_dir: str, cfg: Config, rank: int, world_size: int, log=print) -> str | None:
    """Every rank, holding the lock, before this start writes anything: the checkpoint to resume (None: a
    fresh run), with the run directory cleared of every earlier run's files (moved aside, see above)."""
    warn = log if rank == 0 else (lambda message: None)
    mode = cfg.train.verify_checkpoint
    found = checkpoint.find_resume(
        os.path.join(run_dir, CHECKPOINTS),
        cfg.train.resume,
        warn,
        lambda path: checkpoint.verify_shared(path, mode, rank, world_size),
    )
    found = dist.broadcast_object(found)  # rank 0's answer, should a rank have seen another folder listing
    if rank == 0:
        paths, why = earlier_files(run_dir, found, cfg.train.resume)
        if paths:
            target = move_aside(run_dir, paths)
            shown = ", ".join(os.path.relpath(p, run_dir) for p in paths)
            log(f"run directory {run_dir}: moved an earlier run's {shown} to {target} ({why})")
    dist.barrier()
    if found is not None:
        _point_tokenizer(cfg, found)
    return found
