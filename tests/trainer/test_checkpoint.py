"""Atomic checkpoints: sealed by a manifest, verified on resume, pruned, corrupt ones skipped."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from trainer import checkpoint, manifest


def fake_checkpoint(root, step, payload=b"x" * 1000):
    tmp = manifest.tmp_dir(root, step)
    os.makedirs(os.path.join(tmp, "engine"))
    with open(os.path.join(tmp, "engine", "model.pt"), "wb") as f:
        f.write(payload)
    with open(checkpoint.shared_file(tmp), "wb") as f:
        f.write(b"trainer state")
    return manifest.publish(str(root), step)


def test_publish_is_atomic_and_verified(tmp_path):
    path = fake_checkpoint(tmp_path, 5)
    assert os.path.basename(path) == "step_0000005"
    assert not os.path.exists(manifest.tmp_dir(tmp_path, 5))
    assert manifest.verify(path) is None


def test_unsealed_save_is_never_picked(tmp_path):
    fake_checkpoint(tmp_path, 2)
    os.makedirs(manifest.tmp_dir(tmp_path, 4))  # a save that crashed before publish
    assert checkpoint.find_resume(str(tmp_path), "auto", print).endswith("step_0000002")


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest"])
def test_damaged_checkpoint_falls_back_to_previous(tmp_path, damage):
    fake_checkpoint(tmp_path, 2)
    newest = fake_checkpoint(tmp_path, 4)
    target = os.path.join(newest, "engine", "model.pt")
    if damage == "truncate":
        os.truncate(target, 10)
    elif damage == "flip":
        with open(target, "r+b") as f:
            f.write(b"y")
    elif damage == "delete":
        os.remove(target)
    else:
        os.remove(os.path.join(newest, manifest.MANIFEST))
    warnings = []
    assert checkpoint.find_resume(str(tmp_path), "auto", warnings.append).endswith("step_0000002")
    assert len(warnings) == 1 and "step_0000004" in warnings[0] and "corrupt" in warnings[0]
    assert os.path.exists(newest)  # nothing already saved is deleted


def test_explicit_corrupt_checkpoint_is_a_one_line_error(tmp_path):
    path = fake_checkpoint(tmp_path, 3)
    os.truncate(os.path.join(path, "engine", "model.pt"), 1)
    with pytest.raises(ValueError, match=r"train.resume=.*truncated.*train.resume=auto") as e:
        checkpoint.find_resume(str(tmp_path), path, print)
    assert "\n" not in str(e.value)


def test_prune_keeps_the_newest(tmp_path):
    for step in (1, 2, 3, 4):
        fake_checkpoint(tmp_path, step)
    manifest.prune(str(tmp_path), keep_last=2)
    assert [s for s, _ in manifest.list_checkpoints(str(tmp_path))] == [4, 3]


@pytest.mark.parametrize("keep_last", [1, 2, 3])
def test_prune_never_deletes_the_step_just_saved(tmp_path, keep_last):
    """Steps above the one just saved are not this run's (an earlier run, or a timeline resumed from an
    older step): they neither push this run's newest out nor get deleted by it."""
    fake_checkpoint(tmp_path, 7)  # another run's, left in the directory
    fake_checkpoint(tmp_path, 8)
    for step in (1, 2, 3):
        fake_checkpoint(tmp_path, step)
        manifest.prune(str(tmp_path), keep_last=keep_last, newest=step)
    steps = [s for s, _ in manifest.list_checkpoints(str(tmp_path))]
    reference = [8, 7] + [s for s in (3, 2, 1)][:keep_last]  # the slow way: all above, then ours newest first
    assert steps == reference


def test_resume_never_and_empty(tmp_path):
    assert checkpoint.find_resume(str(tmp_path / "none"), "auto", print) is None
    fake_checkpoint(tmp_path, 1)
    assert checkpoint.find_resume(str(tmp_path), "never", print) is None


def test_unreadable_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "trainer.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot be read.*train.resume="):
        checkpoint.load_file(str(bad))


# --- hashes made while writing, chunked, shared on verification -------------------------------------
def test_hash_while_writing_equals_a_reread(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest, "CHUNK", 1000)  # many chunks, boundaries inside torch's writes
    path = str(tmp_path / "x.pt")
    entry = manifest.save_object({"w": torch.randn(3000), "step": 7}, path)
    assert entry == manifest.hash_file(path)
    assert entry["bytes"] == os.path.getsize(path) and len(entry["sha256_chunks"]) == -(-entry["bytes"] // 1000)
    assert torch.load(path, weights_only=False)["step"] == 7


def test_manifest_uses_recorded_hashes_and_hashes_only_the_rest(tmp_path, monkeypatch):
    tmp = manifest.tmp_dir(tmp_path, 1)
    os.makedirs(tmp)
    recorded = {"model.pt": manifest.save_object(torch.zeros(10), os.path.join(tmp, "model.pt"))}
    (Path(tmp) / "script.py").write_text("print()")  # written by someone who did not record it
    hashed = []
    real = manifest.hash_file
    monkeypatch.setattr(manifest, "hash_file", lambda p: hashed.append(os.path.basename(p)) or real(p))
    path = manifest.publish(str(tmp_path), 1, recorded)
    assert hashed == ["script.py"]
    assert manifest.verify(path, "full") is None


@pytest.mark.parametrize(
    "damage, caught_by",
    [
        ("flip", {"full"}),
        ("truncate", {"full", "sizes"}),
        ("delete", {"full", "sizes"}),
        ("manifest", {"full", "sizes", "off"}),
    ],
)
def test_each_verify_mode_catches_what_it_promises(tmp_path, damage, caught_by):
    path = fake_checkpoint(tmp_path, 4)
    target = os.path.join(path, "engine", "model.pt")
    if damage == "flip":
        with open(target, "r+b") as f:
            f.seek(500)
            f.write(b"y")
    elif damage == "truncate":
        os.truncate(target, 10)
    elif damage == "delete":
        os.remove(target)
    else:
        os.remove(os.path.join(path, manifest.MANIFEST))
    caught = {mode for mode in manifest.VERIFY_MODES if manifest.verify(path, mode) is not None}
    assert caught == caught_by


@pytest.mark.parametrize("flipped", [0, 2500, 4999])
def test_full_verification_is_shared_between_ranks(tmp_path, monkeypatch, flipped):
    monkeypatch.setattr(manifest, "CHUNK", 1000)
    path = fake_checkpoint(tmp_path, 1, payload=bytes(5000))
    assert all(manifest.verify(path, "full", rank, 3) is None for rank in range(3))
    read = []
    real = manifest._hash_range
    monkeypatch.setattr(manifest, "_hash_range", lambda p, start, n: read.append((p, start)) or real(p, start, n))
    with open(os.path.join(path, "engine", "model.pt"), "r+b") as f:
        f.seek(flipped)
        f.write(b"y")
    problems = [manifest.verify(path, "full", rank, 3) for rank in range(3)]
    assert sum(p is not None for p in problems) == 1  # exactly one rank hashed the damaged chunk
    assert len(read) == len(set(read)) == 5 + 1  # every chunk of both files once, over all ranks


def test_a_manifest_with_whole_file_hashes_still_verifies(tmp_path):
    path = fake_checkpoint(tmp_path, 2)
    sealed = manifest.read_manifest(path)
    for rel, meta in sealed["files"].items():
        meta.pop("sha256_chunks")
        meta["sha256"] = hashlib.sha256((Path(path) / rel).read_bytes()).hexdigest()
    (Path(path) / manifest.MANIFEST).write_text(json.dumps(sealed))
    assert manifest.verify(path, "full") is None
    with open(os.path.join(path, "engine", "model.pt"), "r+b") as f:
        f.write(b"y")
    assert "checksum" in manifest.verify(path, "full")


# --- re-saving a step never leaves a moment without a good checkpoint --------------------------------
def resumable(root) -> bytes | None:
    """The payload of the checkpoint resume would pick (full verification), or None."""
    path = checkpoint.find_resume(str(root), "auto", lambda message: None)
    return None if path is None else (Path(path) / "engine" / "model.pt").read_bytes()


def test_publish_over_an_existing_step_keeps_a_good_checkpoint_at_every_moment(tmp_path, monkeypatch):
    fake_checkpoint(tmp_path, 5, payload=b"old" * 100)  # keep_last=1: the only checkpoint
    seen = []
    for name in ("replace", "rename"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda *a, _real=real: (seen.append(resumable(tmp_path)), _real(*a))[1])
    real_rmtree = shutil.rmtree
    monkeypatch.setattr(shutil, "rmtree", lambda *a, **kw: (seen.append(resumable(tmp_path)), real_rmtree(*a, **kw))[1])
    fake_checkpoint(tmp_path, 5, payload=b"new" * 100)
    monkeypatch.undo()
    assert seen and all(payload is not None for payload in seen), seen
    assert resumable(tmp_path) == b"new" * 100


@pytest.mark.parametrize("fail_at", range(4))
def test_a_publish_cut_short_at_any_point_leaves_a_good_checkpoint(tmp_path, monkeypatch, fail_at):
    fake_checkpoint(tmp_path, 5, payload=b"old" * 100)
    calls = []

    def crash_or(real):
        def op(*a, **kw):
            calls.append(real)
            if len(calls) - 1 == fail_at:
                raise OSError("injected crash")
            return real(*a, **kw)

        return op

    monkeypatch.setattr(os, "replace", crash_or(os.replace))
    monkeypatch.setattr(shutil, "rmtree", crash_or(shutil.rmtree))
    try:
        fake_checkpoint(tmp_path, 5, payload=b"new" * 100)
    except OSError:
        pass
    monkeypatch.undo()
    assert resumable(tmp_path) in (b"old" * 100, b"new" * 100)
    manifest.prune(str(tmp_path), keep_last=1)  # the next save's clean-up
    assert resumable(tmp_path) in (b"old" * 100, b"new" * 100)
    assert len(manifest.list_checkpoints(str(tmp_path))) == 1
