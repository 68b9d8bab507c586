"""Checkpoint save and resume time, one process, through the trainer's own save() and maybe_resume().

    python benchmarks/checkpoint_io.py [--size 350m] [--vocab 32000] [--out DIR] [--verify sizes full off]

Builds the model and engine as train.py does (param=full, optim=adamw, ZeRO-0, fp32), takes one training
step so the AdamW moments exist, then times Trainer.save() (write, hash, seal) and, for each
`train.verify_checkpoint` mode, a fresh Trainer's maybe_resume() (verify, load; the fastest of --repeats).
The resume reads what the save just wrote, so the file pages are in the page cache: an upper bound on read
speed. The save is timed to the page cache too (os.sync() before and after, untimed), as a run sees it. Writes
benchmarks/results/checkpoint_io.json. Runs against older trees too (modes they lack are skipped).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import torch

from harness import RESULTS, ROOT, compose  # noqa: F401  (puts the repository on sys.path)

import train  # noqa: E402
from launch.env import read_dist_env  # noqa: E402
from trainer import data, dist  # noqa: E402
from trainer.checkpoint import Checkpointer  # noqa: E402
from trainer.engine import Engine  # noqa: E402
from trainer.loop import Trainer  # noqa: E402
from trainer.metrics import MetricsLog  # noqa: E402
from trainer.registry import AGG, OPTIM, PARAM, config_name  # noqa: E402
from trainer.strategy import BuildContext  # noqa: E402


def build_trainer(cfg, run_dir: str, engine=None, corpus=None):
    corpus = corpus or data.prepare(cfg.data, True, dist.barrier)
    ctx = BuildContext(model_size=cfg.model.size)
    param = PARAM.build(config_name(cfg.param), cfg.param, ctx)
    agg = AGG.build(config_name(cfg.agg), cfg.agg, ctx)
    if engine is None:
        model = train.build_model(cfg, corpus.vocab_size)
        param.convert(model)
        engine = Engine(model=model, optimizer=OPTIM.build(config_name(cfg.optim), cfg.optim, model, ctx), aggregator=agg,
                        train=cfg.train, world_size=1, device=torch.device("cpu"))
    log = MetricsLog(run_dir, cfg.log, True, cfg.train.steps, {}, "bench")
    checkpointer = Checkpointer(engine=engine, cfg=cfg, run_dir=run_dir, vocab_size=corpus.vocab_size,
                                tokenizer_path=corpus.tokenizer_path, strategies={"param": param, "agg": agg},
                                rank=0, world_size=1, info=log.info)
    return Trainer(train=cfg.train, seq_len=cfg.data.seq_len, engine=engine, param=param, data=corpus,
                   checkpointer=checkpointer, log=log, rank=0, world_size=1), corpus


def checkpoint_bytes(root: str) -> int:
    return sum(os.path.getsize(os.path.join(b, n)) for b, _, names in os.walk(root) for n in names)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="350m")
    parser.add_argument("--vocab", type=int, default=32000, help="model vocabulary (the papers' LLaMA tokenizer)")
    parser.add_argument("--out", default=None, help="run directory parent (default: a temporary folder)")
    parser.add_argument("--verify", nargs="+", default=["sizes", "full", "off"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="resumes per mode (the fastest is reported)")
    args = parser.parse_args(argv)
    out = args.out or tempfile.mkdtemp(prefix="ckpt-io-")
    overrides = [f"model.size={args.size}", f"model.vocab_size={args.vocab}", "data.seq_len=32", "data.vocab_size=512",
                 "train.global_batch_size=1", "train.micro_batch_size=1", "train.steps=1", "train.keep_last=1",
                 f"train.threads={args.threads}", "log.progress=lines", f"run.out_dir={out}", "run.name=bench"]
    cfg = compose(overrides)
    dist.set_threads(args.threads)
    dist.init_distributed(read_dist_env(), torch.device("cpu"))
    run_dir = os.path.join(out, "bench")
    os.makedirs(run_dir, exist_ok=True)
    trainer, corpus = build_trainer(cfg, run_dir)
    trainer.train_step(0)  # the AdamW moments exist from here on
    trainer.state.step = 1
    os.sync()  # no earlier writes left to flush inside the timed save
    start = time.perf_counter()
    trainer.save()
    save_s = time.perf_counter() - start
    os.sync()  # nor the save's own writes inside the timed resumes
    report = {"date": time.strftime("%Y-%m-%d"), "command": "python benchmarks/checkpoint_io.py " + " ".join(argv or sys.argv[1:]),
              "size": args.size, "vocab": args.vocab, "save_s": save_s,
              "checkpoint_bytes": checkpoint_bytes(trainer.checkpointer.root), "resume_s": {}}
    modes = args.verify if hasattr(cfg.train, "verify_checkpoint") else ["full (the only mode)"]  # an older tree
    times = {mode: [] for mode in modes}
    for _ in range(args.repeats):  # modes interleaved, so none is always the first read after the save
        for mode in modes:
            if hasattr(cfg.train, "verify_checkpoint"):
                cfg.train.verify_checkpoint = mode
            fresh, _ = build_trainer(cfg, run_dir, trainer.engine, corpus)
            start = time.perf_counter()
            fresh.maybe_resume()
            times[mode].append(time.perf_counter() - start)
            assert fresh.state.step == 1
    report["resume_s"] = {mode: min(t) for mode, t in times.items()}
    print(json.dumps(report, indent=1))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "checkpoint_io.json").write_text(json.dumps(report, indent=1))
    if args.out is None:
        shutil.rmtree(out, ignore_errors=True)
    dist.destroy()
    return report


if __name__ == "__main__":
    main()
