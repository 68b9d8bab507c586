"""Checkpoint save and resume time, one process, through the trainer's own save() and maybe_resume().

    python -m benchmarks checkpoint_io --size 350m --rev d83f4ee^ --script-rev d83f4ee --out checkpoint_io_main

One training step first, so the AdamW moments exist. The resume reads what the save just wrote, from the page
cache: an upper bound on read speed; the save too is timed to the page cache (os.sync() around it, untimed).
--rev measures an older tree running this script as at --script-rev (the first revision that has it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import train
from benchmarks.harness import ROOT, command, compose, make_engine, parser, timed, write_json
from launch.env import read_dist_env
from trainer import data, dist
from trainer.metrics import MetricsLog
from trainer.registry import AGG, OPTIM, PARAM, config_name
from trainer.strategy import BuildContext


def build_trainer(cfg, run_dir: str, engine=None, corpus=None):
    corpus = corpus or data.prepare(cfg.data, True, dist.barrier)
    ctx = BuildContext(model_size=cfg.model.size)
    param = PARAM.build(config_name(cfg.param), cfg.param, ctx)
    agg = AGG.build(config_name(cfg.agg), cfg.agg, ctx)
    if engine is None:
        model = train.build_model(cfg, corpus.vocab_size)
        param.convert(model)
        optimizer = OPTIM.build(config_name(cfg.optim), cfg.optim, model, ctx)
        engine = make_engine(model, optimizer, cfg, torch.device("cpu"), agg)
    log = MetricsLog(run_dir, cfg.log, True, cfg.train.steps, {}, "bench")
    return train.make_trainer(cfg, read_dist_env(), engine, param, agg, corpus, run_dir, log), corpus


def at_revision(args, argv) -> dict:
    """This benchmark on an older tree: a checkout of --rev running the script of --script-rev."""

    def git(*cmd) -> bytes:
        return subprocess.run(["git", *cmd], cwd=ROOT, check=True, capture_output=True).stdout

    with tempfile.TemporaryDirectory(prefix="ckpt-io-rev-") as tree:
        subprocess.run(["tar", "-x", "-C", tree], input=git("archive", args.rev), check=True)
        script = Path(tree, "benchmarks", "checkpoint_io.py")
        script.write_bytes(git("show", f"{args.script_rev or args.rev}:benchmarks/checkpoint_io.py"))
        skip = {"--rev", args.rev, "--script-rev", args.script_rev, "--out", args.out}
        subprocess.run([sys.executable, str(script), *(a for a in argv if a not in skip)], cwd=tree, check=True)
        report = json.loads(Path(tree, "benchmarks", "results", "checkpoint_io.json").read_text())
    report["command"] = command("checkpoint_io", argv)
    return write_json(args, report)


def main(argv=None) -> dict:
    args = parser(
        __doc__,
        "checkpoint_io",
        size="350m",
        vocab=(32000, "model vocabulary (the papers' tokenizer)"),
        threads=2,
        verify=["sizes", "full", "off"],
        repeats=(2, "resumes per mode (the fastest is reported)"),
        rev=(None, "measure this git revision's tree instead"),
        script_rev=(None, "with --rev: the revision whose copy of this script runs"),
    ).parse_args(argv)
    if args.rev:
        return at_revision(args, list(sys.argv[2:] if argv is None else argv))
    out = tempfile.mkdtemp(prefix="ckpt-io-")
    cfg = compose(
        [
            f"model.size={args.size}",
            f"model.vocab_size={args.vocab}",
            "data.seq_len=32",
            "data.vocab_size=512",
            "train.global_batch_size=1",
            "train.micro_batch_size=1",
            "train.steps=1",
            "train.keep_last=1",
            f"train.threads={args.threads}",
            "log.progress=lines",
            f"run.out_dir={out}",
            "run.name=bench",
        ]
    )
    dist.set_threads(args.threads)
    run_dir = os.path.join(out, "bench")
    os.makedirs(run_dir, exist_ok=True)
    trainer, corpus = build_trainer(cfg, run_dir)
    report = {
        "command": command("checkpoint_io", argv),
        "size": args.size,
        "vocab": args.vocab,
        **time_save(trainer),
        "resume_s": time_resumes(args, cfg, run_dir, trainer, corpus),
    }
    write_json(args, report)
    shutil.rmtree(out, ignore_errors=True)
    dist.destroy()
    return report


def time_save(trainer) -> dict:
    trainer.train_step(0)  # the AdamW moments exist from here on
    trainer.state.step = 1
    os.sync()  # no earlier writes left to flush inside the timed save
    save_s = timed(trainer.save)[1]
    os.sync()  # nor the save's own writes inside the timed resumes
    walk = os.walk(trainer.checkpointer.root)
    size = sum(os.path.getsize(os.path.join(b, n)) for b, _, names in walk for n in names)
    return {"save_s": save_s, "checkpoint_bytes": size}


def time_resumes(args, cfg, run_dir, trainer, corpus) -> dict:
    times = {mode: [] for mode in args.verify}
    for _ in range(args.repeats):  # modes interleaved, so none is always the first read after the save
        for mode in args.verify:
            cfg.train.verify_checkpoint = mode
            fresh, _ = build_trainer(cfg, run_dir, trainer.engine, corpus)
            times[mode].append(timed(fresh.maybe_resume)[1])
            assert fresh.state.step == 1
    return {mode: min(t) for mode, t in times.items()}
