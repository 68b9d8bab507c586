"""Corpus preparation speed: `python -m trainer.prepare`'s tokenization (one worker per core, and one process)
against the plain serial sentencepiece loop over the same documents, whose tokens prepare's must equal.

    python -m benchmarks prepare_speed [--mb 200] [--repeats 1]

The text is the shared corpora repeated, which flatters prepare (each worker encodes a distinct word once).
CPU microseconds per token say what a core does, whatever the load on a shared machine.
"""

from __future__ import annotations

import os
import resource
import tempfile
from itertools import islice
from pathlib import Path

import numpy as np
import sentencepiece as spm

from benchmarks.harness import ROOT, command, parser, timed, write_json
from trainer import corpus, data, tokenizing
from trainer.config import DataConfig

SHARED = ROOT.parent / "shared" / "data"


def serial(docs, sp: spm.SentencePieceProcessor, out_path: str) -> int:
    """The former data.tokenize_corpus loop, verbatim but for the source of documents."""
    dtype, num_tokens, eos = np.uint16, 0, sp.eos_id()
    with open(out_path, "wb") as out:
        while batch := list(islice(docs, 2000)):
            for ids in sp.encode(batch):
                ids.append(eos)
                out.write(np.asarray(ids, dtype=dtype).tobytes())
                num_tokens += len(ids)
    return num_tokens


def cpu_seconds() -> float:
    usage = map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return sum(r.ru_utime + r.ru_stime for r in usage)


def one_round(runs: dict, cfg, tok_path: str, workdir: Path) -> None:
    sp = spm.SentencePieceProcessor(model_file=tok_path)
    for name, fn in (
        ("serial", lambda: serial(corpus.documents(cfg), sp, str(workdir / "serial.bin"))),
        ("prepare", lambda: tokenizing.write_tokens(cfg, tok_path, str(workdir / "prepare.bin"), os.cpu_count())),
        ("prepare_1_process", lambda: tokenizing.write_tokens(cfg, tok_path, str(workdir / "prepare_1.bin"), 1)),
    ):
        cpu0 = cpu_seconds()
        n, seconds = timed(fn)
        cpu = cpu_seconds() - cpu0
        r = dict(tokens=n, seconds=seconds, tokens_per_s=n / seconds, cpu_s=cpu, cpu_us_per_token=cpu / n * 1e6)
        runs[name].append(r)
        print(f"{name}: {r['tokens_per_s'] / 1e6:.2f} M tokens/s, {r['cpu_us_per_token']:.3f} CPU us/token", flush=True)
    first = np.fromfile(workdir / "serial.bin", dtype=np.uint16)  # the same tokens, not merely as many
    for name in ("prepare.bin", "prepare_1.bin"):
        if not np.array_equal(first, np.fromfile(workdir / name, dtype=np.uint16)):
            raise SystemExit(f"{name} differs from serial.bin: prepare's tokens are not sentencepiece's")


def main(argv=None) -> dict:
    args = parser(__doc__, "prepare_speed", mb=200, repeats=1).parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="prepare-speed-"))
    text = workdir / f"corpus-{args.mb}mb.txt"
    parts = [(SHARED / name).read_text() for name in ("wikitext103_valid.txt", "tinyshakespeare.txt")]
    block = "\n\n".join(parts) + "\n\n"
    with open(text, "w") as f:
        for _ in range(args.mb * 10**6 // len(block.encode()) + 1):
            f.write(block)
    cfg = DataConfig(source=str(text), cache_dir=str(workdir / "cache"))
    tok_path = data.tokenizer_path(cfg)
    tokenizer_s = timed(data.train_tokenizer, cfg, tok_path)[1]  # timed apart: the cache dir is new
    print(f"tokenizer training: {tokenizer_s:.1f} s", flush=True)
    runs = {"serial": [], "prepare": [], "prepare_1_process": []}
    for _ in range(args.repeats):
        one_round(runs, cfg, tok_path, workdir)
    best = {k: max(r["tokens_per_s"] for r in v) for k, v in runs.items()}
    result = {
        "command": command("prepare_speed", argv),
        "megabytes": text.stat().st_size / 1e6,
        "workers": os.cpu_count(),  # prepare's: one per core
        "tokenizer_training_s": tokenizer_s,
        "runs": runs,
        "best_tokens_per_s": best,
        "best_cpu_us_per_token": {k: min(r["cpu_us_per_token"] for r in v) for k, v in runs.items()},
        "speedup_vs_serial": best["prepare"] / best["serial"],
    }
    return write_json(args, result, lambda r: f"prepare is {r['speedup_vs_serial']:.2f}x the serial loop")
