"""`python -m trainer.prepare` fills the cache train.py reads; a torchrun start waits for a long preparation
on the cache files, not in a collective that would time out."""

import subprocess
import sys
import textwrap

import pytest

from tests.helpers import FAST, ROOT, free_port, train_env
from trainer import data, prepare
from trainer.config import DataConfig

DOCS = "\n\n".join(f"Paragraph {i}: the quick brown fox\n  jumps over  the lazy dog {i % 13}." for i in range(400))


def test_prepare_fills_the_cache_train_reads(tmp_path, monkeypatch, capsys):
    (tmp_path / "c.txt").write_text(DOCS)
    args = [
        f"data.source={tmp_path / 'c.txt'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.vocab_size=300",
        "data.seq_len=16",
    ]
    assert prepare.main(args) == 0
    out = capsys.readouterr().out
    assert "tokenizer trained in" in out and "M tokens/s" in out and "tokens in" in out

    def rebuilt(*a, **k):
        raise AssertionError("train.py rebuilt what prepare made")

    monkeypatch.setattr(data, "train_tokenizer", rebuilt)
    monkeypatch.setattr(data, "tokenize_corpus", rebuilt)
    cfg = DataConfig(source=str(tmp_path / "c.txt"), cache_dir=str(tmp_path / "cache"), vocab_size=300, seq_len=16)
    assert data.prepare(cfg, True, lambda: None).num_train > 0


@pytest.mark.parametrize(
    "args, message",
    [(["data.nope=1"], "nope"), (["source"], "not an override"), (["data.source=/no/such/file.txt"], "no such file")],
)
def test_bad_arguments_are_one_line(args, message, capsys):
    assert prepare.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


SLOW_START = """
import sys, time
sys.path.insert(0, {root!r})
from trainer import data, dist
init = dist.init_distributed
dist.init_distributed = lambda env, device, timeout_s=600: init(env, device, timeout_s={timeout})
tokenize = data.tokenize_corpus
def slow_tokenize(*args, **kwargs):
    time.sleep({delay})  # a corpus that takes longer to tokenize than the process group's timeout
    return tokenize(*args, **kwargs)
data.tokenize_corpus = slow_tokenize
import runpy
sys.argv = [{root!r} + "/train.py", *{overrides!r}]
runpy.run_path(sys.argv[0], run_name="__main__")  # as `python train.py`, so Hydra finds conf/ beside it
"""


@pytest.mark.slow
def test_torchrun_start_during_a_long_preparation_does_not_time_out(tmp_path):
    """2 processes, a 4 s collective timeout, rank 0 tokenizing for 12 s: rank 1 waits on the cache file."""
    overrides = [
        *FAST,
        "train.steps=2",
        "data.max_tokens=60000",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"run.out_dir={tmp_path / 'runs'}",
        "run.name=slow",
    ]
    script = tmp_path / "slow_start.py"
    script.write_text(textwrap.dedent(SLOW_START.format(root=str(ROOT), timeout=4, delay=12, overrides=overrides)))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        "--max-restarts=0",
        str(script),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "done: validation loss" in proc.stdout
