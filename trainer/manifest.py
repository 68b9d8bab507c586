"""Checkpoint folders on disk, <run>/checkpoints/step_XXXXXXX/: written, sealed, verified, pruned.

The file side of trainer/checkpoint.py (whose Checkpointer decides what each rank writes and when).

Every rank writes into a hidden temporary folder and hashes its own files while writing them (HashingFile:
no second read); rank 0 gathers those hashes into MANIFEST.json (hashing itself only files nobody recorded)
and renames the folder into place. A crash mid-save leaves only the temporary folder, so the last good
checkpoint is never touched. Hashes are per 128 MiB chunk, so verifying one large file spreads over ranks
and threads. On resume (`train.verify_checkpoint`):

- `off`: the manifest must exist (the checkpoint was sealed); nothing else is read. Free.
- `sizes`: every file is there with its recorded size: one stat per file, milliseconds. Catches what
  happens to sealed checkpoints in practice: a copy or sync cut short, a truncated or deleted file.
- `full`: also every byte against its hash: reads the whole checkpoint once, shared by all ranks (about
  1.1 GB/s per rank and thread here). Catches silent corruption (a flipped bit) as well.

A checkpoint that fails is reported and skipped (never deleted). Re-saving a step that exists moves the
old folder aside (still found by resume) until the new one is in place. A full disk mid-save stops the run
with one line and removes the unfinished folder (`saving`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch

from trainer import diskfull

MANIFEST = "MANIFEST.json"
VERIFY_MODES = ("full", "sizes", "off")
STEP_DIR = re.compile(r"^step_(\d{7,})(\.prev)?$")
PREV = ".prev"  # a replaced checkpoint, kept (and resumable) until its successor is in place
CHUNK = 1 << 27  # bytes per hash: a 7B model's 84 GB file is ~630 units that ranks and threads share
MAX_HASH_THREADS = 4  # hashlib and file reads release the GIL; more threads than this process's CPUs only contend


def step_dir(root: str, step: int) -> str:
    return os.path.join(root, f"step_{step:07d}")


def tmp_dir(root: str, step: int) -> str:
    return os.path.join(root, f".tmp-step_{step:07d}")


# --- writing: hash while writing --------------------------------------------------------------------
class HashingFile:
    """A write-only file that hashes the bytes passing through it, chunk by chunk, in a second thread while
    the main one writes them."""

    def __init__(self, path: str):
        self.file, self.pool = open(path, "wb"), ThreadPoolExecutor(1)
        self.hashes, self.current, self.in_chunk, self.size = [], hashlib.sha256(), 0, 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        pending = self.pool.submit(self._hash, view)
        self.file.write(view)
        pending.result()  # torch may reuse the buffer once write returns
        return view.nbytes

    def _hash(self, view: memoryview) -> None:
        while view.nbytes:
            take = min(view.nbytes, CHUNK - self.in_chunk)
            self.current.update(view[:take])
            self.in_chunk, self.size, view = self.in_chunk + take, self.size + take, view[take:]
            if self.in_chunk == CHUNK:
                self.hashes.append(self.current.hexdigest())
                self.current, self.in_chunk = hashlib.sha256(), 0

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> dict:
        """Close the file; its manifest entry."""
        try:
            self.file.close()  # flushes: may raise ENOSPC itself
        finally:
            self.pool.shutdown()
        if self.in_chunk or not self.hashes:
            self.hashes.append(self.current.hexdigest())
        return {"bytes": self.size, "sha256_chunks": self.hashes}


def save_object(obj, path: str, zipfile: bool = True) -> dict:
    """torch.save through a HashingFile; returns the file's manifest entry."""
    f = HashingFile(path)
    try:
        torch.save(obj, f, _use_new_zipfile_serialization=zipfile)
    finally:
        entry = f.close()
    return entry


def hash_file(path: str) -> dict:
    """The manifest entry of a file already on disk (for files no rank recorded while writing)."""
    size = os.path.getsize(path)
    starts = range(0, max(size, 1), CHUNK)
    return {"bytes": size, "sha256_chunks": [_hash_range(path, start, min(CHUNK, size - start)) for start in starts]}


def _hash_range(path: str, start: int, length: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        while length > 0 and (block := f.read(min(length, 1 << 22))):
            h.update(block)
            length -= len(block)
    return h.hexdigest()


def write_manifest(directory: str, step: int, recorded: dict[str, dict] | None = None) -> None:
    """Seal `directory`: every file's entry, from `recorded` (relative path -> entry) or hashed here."""
    recorded, files = recorded or {}, {}
    for base, _, names in os.walk(directory):
        for name in names:
            rel = os.path.relpath(os.path.join(base, name), directory)
            files[rel] = recorded.get(rel) or hash_file(os.path.join(directory, rel))
    tmp = os.path.join(directory, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"step": step, "chunk_bytes": CHUNK, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(directory, MANIFEST))


@contextmanager
def saving(root: str, step: int):
    """Around one save, on every rank: a full disk stops the run with one line (diskfull) after removing the
    unfinished folder, so no half-written step is ever published and the earlier checkpoints stay as they were."""
    tmp = tmp_dir(root, step)
    doing = f"saving the checkpoint of step {step} (its unfinished folder was removed; earlier checkpoints are intact)"
    with diskfull.stops_the_run(tmp, doing, cleanup=lambda: shutil.rmtree(tmp, ignore_errors=True)):
        yield tmp


def publish(root: str, step: int, recorded: dict[str, dict] | None = None) -> str:
    """Rank 0: seal the temporary folder with a manifest and move it into place. A checkpoint already at this
    step (a re-save after falling back past a corrupt one) is moved aside first and deleted only once the new
    one is in place, so a resumable checkpoint exists at every moment."""
    src, dst = tmp_dir(root, step), step_dir(root, step)
    write_manifest(src, step, recorded)
    if not os.path.exists(dst):
        os.replace(src, dst)
        return dst
    aside = dst + PREV
    if os.path.exists(aside):
        shutil.rmtree(aside)  # left by a crash after the swap below: dst is its successor
    os.replace(dst, aside)
    os.replace(src, dst)
    shutil.rmtree(aside)
    return dst


# --- reading: verify what resume will load -----------------------------------------------------------
def read_manifest(directory: str) -> dict | None:
    try:
        with open(os.path.join(directory, MANIFEST)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _hash_units(manifest: dict) -> list[tuple[str, int, int, str]]:
    """(file, start, length, expected sha256) for every hashed range, in a fixed order on every rank."""
    units = []
    for rel, meta in sorted(manifest["files"].items()):
        if "sha256" in meta:  # a manifest written before chunked hashes: one hash of the whole file
            units.append((rel, 0, meta["bytes"], meta["sha256"]))
            continue
        chunk = manifest.get("chunk_bytes", CHUNK)
        units += [
            (rel, i * chunk, min(chunk, meta["bytes"] - i * chunk), h) for i, h in enumerate(meta["sha256_chunks"])
        ]
    return units


def verify(directory: str, mode: str = "full", rank: int = 0, world_size: int = 1) -> str | None:
    """None if the checkpoint passes `mode`'s checks, else why not. With world_size > 1 each rank hashes a
    share of the bytes (`full`) and the callers combine the answers."""
    manifest = read_manifest(directory)
    if manifest is None:
        return "missing or unreadable MANIFEST.json"
    if mode == "off":
        return None
    for rel, meta in manifest["files"].items():
        full = os.path.join(directory, rel)
        if not os.path.isfile(full):
            return f"missing file {rel}"
        if os.path.getsize(full) != meta["bytes"]:
            return f"{rel} has {os.path.getsize(full)} bytes, expected {meta['bytes']} (truncated?)"
    if mode == "sizes":
        return None
    mine = _hash_units(manifest)[rank::world_size]
    with ThreadPoolExecutor(max(1, min(MAX_HASH_THREADS, torch.get_num_threads()))) as pool:
        actual = pool.map(lambda u: _hash_range(os.path.join(directory, u[0]), u[1], u[2]), mine)
        bad = [rel for (rel, _, _, want), got in zip(mine, actual) if got != want]
    return f"{bad[0]} does not match its checksum" if bad else None


def list_checkpoints(root: str) -> list[tuple[int, str]]:
    """(step, path) of every sealed checkpoint, newest first; a folder moved aside by `publish` comes right
    after its successor (it is resumable only while a re-save of its step is under way or was cut short)."""
    if not os.path.isdir(root):
        return []
    found = [
        (int(m.group(1)), bool(m.group(2)), os.path.join(root, name))
        for name in os.listdir(root)
        if (m := STEP_DIR.match(name))
    ]
    return [(step, path) for step, _, path in sorted(found, key=lambda f: (-f[0], f[1]))]


def prune(root: str, keep_last: int, newest: int | None = None) -> None:
    """Keep the newest `keep_last` steps up to `newest`, the step this run just saved (default: the highest
    there), which is never deleted; steps above it are not this run's and are left alone (train.py moves an
    earlier run's checkpoints aside at start: trainer/rundir.py). Also drops unsealed saves and folders
    moved aside whose successor exists."""
    checkpoints = list_checkpoints(root)
    newest = max((step for step, _ in checkpoints), default=0) if newest is None else newest
    keep = set(sorted({step for step, _ in checkpoints if step <= newest}, reverse=True)[:keep_last]) | {newest}
    for step, path in checkpoints:
        superseded = path.endswith(PREV) and os.path.isdir(step_dir(root, step))
        if superseded or (step < newest and step not in keep):
            shutil.rmtree(path, ignore_errors=True)
    for name in os.listdir(root):
        if name.startswith(".tmp-step_"):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
