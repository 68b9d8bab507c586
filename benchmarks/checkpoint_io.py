"""Checkpoint save and resume time, one process, through the trainer's own save() and maybe_resume().

    python -m benchmarks checkpoint_io --size 350m --rev d83f4ee^ --script-rev d83f4ee --out checkpoint_io_main

The resume reads what the save just wrote, from the page cache: an upper bound on read speed; the save too is
timed to the page cache (os.sync() around it, untimed). --rev measures that git revision's tree, running this
script as at --script-rev (the first revision that has it; default: --rev).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import train
from benchmarks.harness import ROOT, VOCAB, command, make_engine, parser, timed, write_json
from launch.env import read_dist_env
from trainer import data, dist
from trainer.cli import compose_config
from trainer.metrics import MetricsLog

THREADS = 2
MODES = ["sizes", "full", "off"]  # train.verify_checkpoint
REPEATS = 2  # resumes per mode, the fastest reported


def at_revision(args, argv) -> dict:
    with tempfile.TemporaryDirectory(prefix="ckpt-io-rev-") as tree:
        archive = subprocess.check_output(["git", "archive", args.rev], cwd=ROOT)
        subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
        script = Path(tree, "benchmarks", "checkpoint_io.py")
        show = ["git", "show", f"{args.script_rev or args.rev}:benchmarks/checkpoint_io.py"]
        script.write_bytes(subprocess.check_output(show, cwd=ROOT))
        subprocess.run([sys.executable, str(script), "--size", args.size], cwd=tree, check=True)  # its defaults: ours
        report = json.loads(Path(tree, "benchmarks", "results", "checkpoint_io.json").read_text())
    return write_json(args, report | {"command": command("checkpoint_io", argv)})


def main(argv=None) -> dict:
    args = parser(__doc__, "checkpoint_io", size="350m", rev=None, script_rev=None).parse_args(argv)
    if args.rev:
        return at_revision(args, argv)
    with tempfile.TemporaryDirectory(prefix="ckpt-io-") as out:
        return write_json(args, {"command": command("checkpoint_io", argv), **measure(args, out)})


def measure(args, out: str) -> dict:
    """fp32 AdamW on the CPU: the trainer's save, then its resumes in each mode."""
    settings = f"model.size={args.size} model.vocab_size={VOCAB} data.seq_len=32 data.vocab_size=512 train.steps=1"
    settings += f" train.global_batch_size=1 train.micro_batch_size=1 train.keep_last=1 train.threads={THREADS}"
    cfg = compose_config([*settings.split(), "log.progress=lines", "run.name=bench", f"run.out_dir={out}"])
    dist.set_threads(THREADS)
    run_dir = os.path.join(out, "bench")
    os.makedirs(run_dir, exist_ok=True)
    env, corpus = read_dist_env(), data.prepare(cfg.data, True, dist.barrier)
    model, param, optimizer, agg = train.build_parts(cfg, env, torch.device("cpu"), corpus.vocab_size)
    engine = make_engine(model, optimizer, cfg, torch.device("cpu"), agg)

    def new_trainer():  # a trainer over this engine: every resume loads into the same tensors
        log = MetricsLog(run_dir, cfg.log, True, cfg.train.steps, {}, "bench")
        return train.make_trainer(cfg, env, engine, param, agg, corpus, run_dir, log)

    trainer = new_trainer()
    trainer.train_step(0)  # the AdamW moments exist from here on
    trainer.state.step = 1
    os.sync()  # no earlier writes left to flush inside the timed save
    save_s = timed(trainer.save)[1]
    os.sync()  # nor the save's own writes inside the timed resumes
    walk = os.walk(trainer.checkpointer.root)
    size = sum(os.path.getsize(os.path.join(b, n)) for b, _, names in walk for n in names)
    times = {mode: [] for mode in MODES}
    for _ in range(REPEATS):  # modes interleaved, so none is always the first read after the save
        for mode in MODES:
            cfg.train.verify_checkpoint = mode
            fresh = new_trainer()
            times[mode].append(timed(fresh.maybe_resume)[1])
            assert fresh.state.step == 1
    dist.destroy()
    resume_s = {mode: min(t) for mode, t in times.items()}
    return {"size": args.size, "vocab": VOCAB, "save_s": save_s, "checkpoint_bytes": size, "resume_s": resume_s}
