"""Atomic checkpoints: sealed by a manifest, verified on resume, pruned, corrupt ones skipped."""
import os

import pytest

from trainer import checkpoint


def fake_checkpoint(root, step, payload=b"x" * 1000):
    tmp = checkpoint.tmp_dir(root, step)
    os.makedirs(os.path.join(tmp, "engine"))
    with open(os.path.join(tmp, "engine", "model.pt"), "wb") as f:
        f.write(payload)
    with open(checkpoint.shared_file(tmp), "wb") as f:
        f.write(b"trainer state")
    return checkpoint.publish(str(root), step)


def test_publish_is_atomic_and_verified(tmp_path):
    path = fake_checkpoint(tmp_path, 5)
    assert os.path.basename(path) == "step_0000005"
    assert not os.path.exists(checkpoint.tmp_dir(tmp_path, 5))
    assert checkpoint.verify(path) is None


def test_unsealed_save_is_never_picked(tmp_path):
    fake_checkpoint(tmp_path, 2)
    os.makedirs(checkpoint.tmp_dir(tmp_path, 4))  # a save that crashed before publish
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
        os.remove(os.path.join(newest, checkpoint.MANIFEST))
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
    checkpoint.prune(str(tmp_path), keep_last=2)
    assert [s for s, _ in checkpoint.list_checkpoints(str(tmp_path))] == [4, 3]


def test_resume_never_and_empty(tmp_path):
    assert checkpoint.find_resume(str(tmp_path / "none"), "auto", print) is None
    fake_checkpoint(tmp_path, 1)
    assert checkpoint.find_resume(str(tmp_path), "never", print) is None


def test_unreadable_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "trainer.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot be read.*train.resume="):
        checkpoint.load_file(str(bad))
