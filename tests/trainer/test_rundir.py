"""A run directory holds one run: an earlier run's files are moved aside, never pruned in favour of it.

The unit tests call rundir.claim in a world of one; the fault table (test_rundir_faults.py) runs train.py.
"""

import hashlib
import os
from pathlib import Path

import pytest

from trainer import manifest, rundir


def contents(root: Path) -> dict[str, str]:
    """Every file under root by relative path -> sha256 (moves keep both; mtimes are not compared)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def previous_dirs(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob(rundir.PREVIOUS + "*"))


def sealed(run_dir: Path, step: int) -> str:
    """A small sealed checkpoint of `step` in run_dir/checkpoints (with its own tokenizer)."""
    root = run_dir / "checkpoints"
    tmp = Path(manifest.tmp_dir(str(root), step))
    tmp.mkdir(parents=True)
    (tmp / "trainer.pt").write_bytes(f"state {step}".encode())
    (tmp / "tokenizer.model").write_bytes(b"tokenizer")
    return manifest.publish(str(root), step)


@pytest.fixture
def cfg():
    from tests.helpers import compose
    from train import load_config

    return load_config(compose(["model.size=debug"]))


def claim(run_dir, cfg, resume="auto"):
    cfg.train.resume = resume
    lines = []
    found = rundir.claim(str(run_dir), cfg, 0, 1, log=lines.append)
    return found, lines


# --- claim, in one process -----------------------------------------------------------------------------
def test_resume_auto_keeps_the_run_and_uses_the_checkpoint_tokenizer(tmp_path, cfg):
    sealed(tmp_path, 3)
    newest = sealed(tmp_path, 4)
    before = contents(tmp_path)
    found, lines = claim(tmp_path, cfg)
    assert found == newest and lines == [] and contents(tmp_path) == before
    assert cfg.data.tokenizer == os.path.join(newest, "tokenizer.model")


@pytest.mark.parametrize("case", ["never", "all corrupt", "another directory's checkpoint"])
def test_a_fresh_run_moves_everything_earlier_aside(tmp_path, cfg, case):
    run_dir = tmp_path / "x"
    for step in (3, 4):
        path = sealed(run_dir, step)
        if case == "all corrupt":
            os.truncate(os.path.join(path, "trainer.pt"), 1)
    (run_dir / "metrics.jsonl").write_text('{"step": 4}\n')
    (run_dir / "config.yaml").write_text("earlier: true\n")
    before = contents(run_dir)
    resume = {"never": "never", "all corrupt": "auto", "another directory's checkpoint": sealed(tmp_path / "y", 9)}[
        case
    ]
    found, lines = claim(run_dir, cfg, resume)
    assert found == (resume if case.startswith("another") else None)
    [previous] = previous_dirs(run_dir)
    assert contents(previous) == before and os.listdir(run_dir) == [previous.name]
    assert len(lines) == (3 if case == "all corrupt" else 1)  # each corrupt one is reported, then the move
    assert previous.name in lines[-1] and "checkpoints" in lines[-1]


def test_a_resume_from_an_older_step_moves_the_newer_checkpoints_aside(tmp_path, cfg):
    older = sealed(tmp_path, 2)
    sealed(tmp_path, 3)
    sealed(tmp_path, 4)
    (tmp_path / "metrics.jsonl").write_text('{"step": 4}\n')
    before = contents(tmp_path)
    found, lines = claim(tmp_path, cfg, older)
    [previous] = previous_dirs(tmp_path)
    assert found == older and "resumes step 2" in lines[0] and "step_0000004" in lines[0]
    assert [s for s, _ in manifest.list_checkpoints(str(tmp_path / "checkpoints"))] == [2]
    assert [s for s, _ in manifest.list_checkpoints(str(previous / "checkpoints"))] == [4, 3]
    assert contents(previous)["metrics.jsonl"] == before["metrics.jsonl"]  # the resumed run trims its own copy


@pytest.mark.parametrize("files", [[], ["config.yaml", "tokenizer.model"]])
def test_nothing_worth_keeping_is_not_moved(tmp_path, cfg, files):
    for name in files:  # rewritten by every start: a start that failed before its first step left only these
        (tmp_path / name).write_text("x")
    assert claim(tmp_path, cfg, "never") == (None, [])
    assert sorted(os.listdir(tmp_path)) == files


def test_previous_folders_stay_side_by_side(tmp_path, cfg):
    for _ in range(3):
        sealed(tmp_path, 1)
        claim(tmp_path, cfg, "never")
    assert len(previous_dirs(tmp_path)) == 3 and not (tmp_path / "checkpoints").exists()
    assert all((p / "checkpoints" / "step_0000001").is_dir() for p in previous_dirs(tmp_path))


# --- the fault table: train.py for real, nothing lost ----------------------------------------------------
