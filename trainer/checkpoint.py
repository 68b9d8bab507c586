"""Atomic, verified checkpoints: <run>/checkpoints/step_XXXXXXX/.

Every rank writes into a hidden temporary folder; rank 0 then records each file's size and
sha256 in MANIFEST.json and renames the folder into place. A crash mid-save leaves only the
temporary folder, so the last good checkpoint is never touched. On resume a checkpoint whose
files do not match its manifest is reported and skipped (never deleted).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil

import numpy as np
import torch

MANIFEST = "MANIFEST.json"
STEP_DIR = re.compile(r"^step_(\d{7,})$")


def step_dir(root: str, step: int) -> str:
    return os.path.join(root, f"step_{step:07d}")


def tmp_dir(root: str, step: int) -> str:
    return os.path.join(root, f".tmp-step_{step:07d}")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: str, step: int) -> None:
    files = {}
    for base, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(base, name)
            rel = os.path.relpath(path, directory)
            files[rel] = {"bytes": os.path.getsize(path), "sha256": _sha256(path)}
    tmp = os.path.join(directory, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"step": step, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(directory, MANIFEST))


def publish(root: str, step: int) -> str:
    """Rank 0: seal the temporary folder with a manifest and move it into place."""
    src, dst = tmp_dir(root, step), step_dir(root, step)
    write_manifest(src, step)
    if os.path.exists(dst):  # a re-save of the same step (e.g. after a resume)
        shutil.rmtree(dst)
    os.replace(src, dst)
    return dst


def verify(directory: str) -> str | None:
    """None if the checkpoint is intact, else why not."""
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return "missing or unreadable MANIFEST.json"
    for rel, meta in manifest["files"].items():
        full = os.path.join(directory, rel)
        if not os.path.isfile(full):
            return f"missing file {rel}"
        if os.path.getsize(full) != meta["bytes"]:
            return f"{rel} has {os.path.getsize(full)} bytes, expected {meta['bytes']} (truncated?)"
        if _sha256(full) != meta["sha256"]:
            return f"{rel} does not match its checksum"
    return None


def list_checkpoints(root: str) -> list[tuple[int, str]]:
    """(step, path) of every sealed checkpoint, newest first."""
    if not os.path.isdir(root):
        return []
    found = [(int(m.group(1)), os.path.join(root, name)) for name in os.listdir(root) if (m := STEP_DIR.match(name))]
    return sorted(found, reverse=True)


def check_resume_arg(resume: str) -> None:
    """Fail at start-up, before any expensive work, on an explicit checkpoint that cannot be used."""
    if resume not in ("auto", "never"):
        find_resume("", resume, print)


def find_resume(root: str, resume: str, warn) -> str | None:
    """The checkpoint to resume from (run on rank 0), per train.resume."""
    if resume == "never":
        return None
    if resume != "auto":
        problem = verify(resume) if os.path.isdir(resume) else "no such directory"
        if problem:
            raise ValueError(f"train.resume={resume!r} is not a usable checkpoint: {problem}; pick another or use train.resume=auto")
        return resume
    for step, path in list_checkpoints(root):
        problem = verify(path)
        if problem is None:
            return path
        warn(f"checkpoint {path} is corrupt ({problem}); falling back to an older one")
    return None


def prune(root: str, keep_last: int) -> None:
    for _, path in list_checkpoints(root)[keep_last:]:
        shutil.rmtree(path, ignore_errors=True)
    for name in os.listdir(root):
        if name.startswith(".tmp-step_"):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rank_file(directory: str, rank: int) -> str:
    return os.path.join(directory, f"trainer_rank{rank:05d}.pt")


def shared_file(directory: str) -> str:
    return os.path.join(directory, "trainer.pt")


def load_file(path: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a file that passed the manifest but still cannot be read
        raise ValueError(f"checkpoint file {path} cannot be read ({type(e).__name__}); resume from another with train.resume=<dir>") from None
