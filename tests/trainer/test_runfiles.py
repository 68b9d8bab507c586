"""A run owns its tokenizer and resolved config: a cleaned cache changes nothing, a mismatched resume changes no
file."""

import hashlib
import shutil

import pytest
import yaml

from tests.helpers import losses_by_step, metrics, run_train
from tools import export
from trainer import runfiles


def tree_digest(root) -> dict:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_resume_and_export_survive_a_cleaned_cache(tmp_path):
    cache = tmp_path / "private-cache"
    run_train(tmp_path, ["param=sltrain", "train.steps=4", "train.stop_at=2", f"data.cache_dir={cache}"], check=False)
    ckpt = tmp_path / "runs" / "run" / "checkpoints" / "step_0000002"
    saved = yaml.safe_load((ckpt / "config.yaml").read_text())
    assert saved["param"]["rank"] == 16 and saved["model"]["vocab_size"] == 512  # per-size default filled in
    assert (ckpt / "tokenizer.model").read_bytes() == (tmp_path / "runs" / "run" / "tokenizer.model").read_bytes()
    shutil.rmtree(cache)
    proc = run_train(tmp_path, ["param=sltrain", "train.steps=4", f"data.cache_dir={cache}"])
    assert (
        "resumed from" in proc.stdout and "training a" not in proc.stdout
    )  # the checkpoint's tokenizer, not a new one
    assert not list(cache.glob("tokenizer-*.model"))
    assert sorted(losses_by_step(metrics(tmp_path))) == [1, 2, 3, 4]
    shutil.rmtree(cache)
    assert export.main([str(ckpt.parent / "step_0000004"), "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "tokenizer.model").read_bytes() == (ckpt / "tokenizer.model").read_bytes()


@pytest.mark.parametrize(
    "change, key",
    [
        (["param=sst"], "param.name=sst"),
        (["param=sltrain", "param.rank=8"], "param.rank=8"),
        (["param=sltrain", "model.size=20m"], "model.size=20m"),
    ],
)
def test_a_resume_with_another_shape_or_strategy_stops_and_changes_nothing(tmp_path, change, key):
    run_train(tmp_path, ["param=sltrain", "train.steps=2"])
    run_dir = tmp_path / "runs" / "run"
    before = tree_digest(run_dir)
    proc = run_train(tmp_path, [*change, "train.steps=4"], check=False)
    assert proc.returncode == 2
    error = proc.stderr.strip().splitlines()
    assert len(error) == 1 and key in error[0] and "step_0000002" in error[0], proc.stderr
    assert tree_digest(run_dir) == before


def test_a_foreign_tokenizer_on_resume_is_refused(tmp_path):
    run_train(tmp_path, ["train.steps=2"])
    other = tmp_path / "other.model"
    other.write_bytes(b"not the run's tokenizer")
    proc = run_train(tmp_path, ["train.steps=4", f"data.tokenizer={other}"], check=False)
    assert proc.returncode == 2 and "is not the tokenizer" in proc.stderr


def test_resolved_config_fills_strategy_defaults():
    from tests.helpers import compose
    from train import load_config

    cfg = load_config(compose(["param=sltrain", "model.size=60m"]))
    out = runfiles.resolved_config(cfg, vocab_size=777)
    assert out["param"]["rank"] == 128 and out["param"]["alpha"] == 32.0 and out["model"]["vocab_size"] == 777


def test_resolved_config_loads_back_for_every_strategy(tmp_path):
    from omegaconf import OmegaConf

    from tests.helpers import compose
    from train import load_config
    from trainer.registry import PARAM

    for name in PARAM.names():
        cfg = load_config(compose([f"param={name}", "model.size=debug"]))
        path = tmp_path / f"{name}.yaml"
        path.write_text(OmegaConf.to_yaml(OmegaConf.create(runfiles.resolved_config(cfg, vocab_size=512))))
        again = runfiles.load_config(str(path))
        assert runfiles.resolved_config(again, 512) == runfiles.resolved_config(cfg, 512)
        assert None not in (getattr(again.param, "rank", 0), getattr(again.param, "alpha", 0))
