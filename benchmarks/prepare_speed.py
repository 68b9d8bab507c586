"""Corpus preparation speed: `python -m trainer.prepare`'s parallel tokenization vs the single-process path
it replaced, on the same text file, back to back in one run (the tokenizer is trained once, timed apart).

    python -m benchmarks prepare_speed [--mb 200] [--repeats 1]

The text is the shared corpora repeated, which flatters prepare (it encodes each distinct word once per worker,
one worker per core). CPU microseconds per token say what a core does, whatever the load; each round first measures
the cores the workers actually get. `serial_lines` is the former path verbatim (HF datasets' text builder, a
document per line); `serial_paragraphs` the same loop over today's documents, whose tokens prepare's must equal.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from itertools import islice
from pathlib import Path

import numpy as np
import sentencepiece as spm

from benchmarks.harness import ROOT, command, parser, timed, write_json
from trainer import corpus, data, tokenizing
from trainer.config import DataConfig

SHARED = ROOT.parent / "shared" / "data"


def build_text(path: Path, megabytes: int) -> None:
    parts = [(SHARED / name).read_text() for name in ("wikitext103_valid.txt", "tinyshakespeare.txt")]
    block = "\n\n".join(parts) + "\n\n"
    with open(path, "w") as f:
        for _ in range(megabytes * 10**6 // len(block.encode()) + 1):
            f.write(block)


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


def former_documents(path: str):
    """The former .txt reading: HF datasets' text builder, one document per non-blank line."""
    import datasets

    for row in datasets.load_dataset("text", data_files=[path], split="train", streaming=True):
        if row["text"] and row["text"].strip():
            yield row["text"]


def _burn(n: int) -> None:
    x = 0
    for i in range(n):
        x += i


def free_cores(workers: int) -> float:
    """How many cores `workers` CPU-bound processes actually got just now (a shared machine may give fewer)."""
    import multiprocessing as mp

    one = timed(_burn, 20_000_000)[1]
    start = time.perf_counter()
    with mp.get_context("fork").Pool(workers) as pool:
        pool.map(_burn, [20_000_000] * workers)
    return workers * one / (time.perf_counter() - start)


def cpu_seconds() -> float:
    """This process's and its finished children's CPU seconds."""
    usage = map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return sum(r.ru_utime + r.ru_stime for r in usage)


def measured(fn) -> dict:
    """fn's tokens, wall and CPU seconds (what the work costs, whatever the load), and the load before it."""
    load, start, cpu0 = os.getloadavg()[0], time.perf_counter(), cpu_seconds()
    n = fn()
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
    return dict(
        tokens=n, seconds=seconds, tokens_per_s=n / seconds, cpu_s=cpu, cpu_us_per_token=cpu / n * 1e6, load_before=load
    )


def one_round(runs: dict, cfg, text: Path, tok_path: str, workdir: Path) -> None:
    workers = os.cpu_count()
    sp = spm.SentencePieceProcessor(model_file=tok_path)
    runs["free_cores"].append(free_cores(workers))
    print(f"free cores for {workers} processes right now: {runs['free_cores'][-1]:.2f}", flush=True)
    for name, fn in (
        ("serial_lines", lambda: serial(former_documents(str(text)), sp, str(workdir / "a.bin"))),
        ("serial_paragraphs", lambda: serial(corpus.documents(cfg), sp, str(workdir / "b.bin"))),
        ("prepare", lambda: tokenizing.write_tokens(cfg, tok_path, str(workdir / "c.bin"), workers)),
        ("prepare_1_process", lambda: tokenizing.write_tokens(cfg, tok_path, str(workdir / "d.bin"), 1)),
    ):
        r = measured(fn)
        runs[name].append(r)
        print(f"{name}: {r['tokens_per_s'] / 1e6:.2f} M tokens/s, {r['cpu_us_per_token']:.3f} CPU us/token", flush=True)
    first = np.fromfile(workdir / "b.bin", dtype=np.uint16)  # prepare's tokens are sentencepiece's, not merely as many
    for name in ("c.bin", "d.bin"):
        if not np.array_equal(first, np.fromfile(workdir / name, dtype=np.uint16)):
            raise SystemExit(f"{name} differs from b.bin: prepare's tokens are not sentencepiece's")


def main(argv=None) -> dict:
    args = parser(__doc__, "prepare_speed", mb=200, repeats=1).parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="prepare-speed-"))
    text = workdir / f"corpus-{args.mb}mb.txt"
    build_text(text, args.mb)
    cfg = DataConfig(source=str(text), cache_dir=str(workdir / "cache"))
    tok_path = data.tokenizer_path(cfg)
    tokenizer_s = timed(data.train_tokenizer, cfg, tok_path)[1]  # timed apart: the cache dir is new
    print(f"tokenizer training: {tokenizer_s:.1f} s", flush=True)
    runs = {"serial_lines": [], "serial_paragraphs": [], "prepare": [], "prepare_1_process": [], "free_cores": []}
    for _ in range(args.repeats):
        one_round(runs, cfg, text, tok_path, workdir)
    best = {k: max(r["tokens_per_s"] for r in v) for k, v in runs.items() if k != "free_cores"}
    cpu_per_token = {k: min(r["cpu_us_per_token"] for r in v) for k, v in runs.items() if k != "free_cores"}
    rounds = [p["tokens_per_s"] / s["tokens_per_s"] for p, s in zip(runs["prepare"], runs["serial_lines"])]
    result = {
        "command": command("prepare_speed", argv),
        "megabytes": text.stat().st_size / 1e6,
        "cpu_count": os.cpu_count(),
        "workers": os.cpu_count(),  # prepare's: one per core
        "tokenizer_training_s": tokenizer_s,
        "runs": runs,
        "best_tokens_per_s": best,
        "best_cpu_us_per_token": cpu_per_token,
        "speedup_vs_serial_lines": best["prepare"] / best["serial_lines"],
        "speedup_vs_serial_paragraphs": best["prepare"] / best["serial_paragraphs"],
        "speedup_vs_serial_lines_per_round": rounds,
        "load_average_after": os.getloadavg()[0],
    }
    show = "prepare is {speedup_vs_serial_lines:.2f}x the former path, {speedup_vs_serial_paragraphs:.2f}x its loop"
    return write_json(args, result, lambda r: show.format(**r))
