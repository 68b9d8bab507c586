"""Shared test helpers: compose configs, run train.py for real (one process or torchrun), run gloo workers."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from benchmarks.processes import free_port, run_distributed, train_command  # noqa: F401  (one copy: benchmarks must not import tests)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Small, fast settings for end-to-end runs of the debug model on the built-in corpus.
FAST = [
    "model.size=debug",
    "data.seq_len=32",
    "data.vocab_size=512",
    "train.global_batch_size=8",
    "train.micro_batch_size=2",
    "train.eval_every=1000",
    "train.eval_batches=2",
    "train.log_every=1000",
    "train.threads=1",
    "train.warmup_fraction=0.2",
    "log.progress=lines",
]


def compose(overrides: list[str] | None = None):
    """The composed DictConfig for these overrides, exactly as train.py sees it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import train  # noqa: F401  (registers the schema and the strategies)

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides or [])


def train_env(cache_dir: str | os.PathLike | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true"}
    for key in ("SLURM_JOB_ID", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # a child must not join a process group the test process (or its launcher) set up
    return env


def run_train(
    tmp_path, overrides: list[str], nproc: int = 1, name: str = "run", check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run train.py for real in a subprocess; the run directory is tmp_path/runs/<name>."""
    args = [
        *FAST,
        f"run.out_dir={tmp_path / 'runs'}",
        f"run.name={name}",
        f"data.cache_dir={cache_dir(tmp_path)}",
        *overrides,
    ]
    proc = subprocess.run(
        train_command(args, nproc), cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"train.py exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


def cache_dir(tmp_path) -> Path:
    """One data cache per test session, so the tokenizer is trained once."""
    shared = os.environ.get("SLIMTRAIN_TEST_CACHE")
    return Path(shared) if shared else Path(tmp_path) / "cache"


def metrics(tmp_path, name: str = "run") -> list[dict]:
    path = Path(tmp_path) / "runs" / name / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def losses_by_step(records: list[dict]) -> dict[int, float]:
    """The last logged training loss of each step (a resumed run may re-log a step)."""
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def train_sentencepiece(lines, prefix: str, vocab_size: int = 400, model_type: str = "bpe", **options) -> str:
    """A small sentencepiece model on `lines` with the project's special ids (unk 0, bos 1, eos 2, no pad);
    returns its .model path."""
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=prefix, vocab_size=vocab_size, model_type=model_type,
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2, **options,
    )  # fmt: skip
    return prefix + ".model"
