"""Hub streams tokenized in chunks while the run trains: step 1 never waits for the whole stream.

A streamed hub source (data.streaming=true) with data.max_tokens=0 is cached as chunk files of
data.stream_chunk_tokens tokens each, written in order (each atomically) by a producer thread on the
main rank, whose worker processes tokenize bounded batches of documents:

    tokens-<key>.c<C>.00000.bin, .00001.bin, ...   the token stream cut every C tokens
    tokens-<key>.c<C>.json                         {"dtype", "num_chunks", "last_tokens", "done"}, after each chunk

Training starts once chunk 0 exists. The held-out sequences are the first data.val_fraction of chunk 0's;
training sample s is, in order, chunk 0's other sequences, then chunk 1's, and so on, each chunk in a
permutation drawn from (seed, chunk), so the batch of step s is still a function of s and the seed. Every
rank waits for the chunks of a whole step on the files (never in a collective). If the stream ends, the
samples wrap around. A restarted run reuses the chunks on disk; its producer re-reads (and re-tokenizes)
the stream from the start to find where to continue, writing only the chunks that are missing.
"""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import torch

from trainer import corpus, tokenizing
from trainer.config import DataConfig
from trainer.seeding import mix_seed

WAIT_REPORT_S = 30.0


def is_stream(cfg: DataConfig) -> bool:
    return cfg.source != "builtin" and not corpus.is_local(cfg.source) and cfg.streaming and cfg.max_tokens == 0


def chunk_path(base: str, k: int) -> str:
    return f"{base}.{k:05d}.bin"


def read_state(base: str) -> dict:
    try:
        with open(base + ".json") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"num_chunks": 0, "done": False}


def _write_state(base: str, state: dict) -> None:
    tmp = tokenizing.temp_path(base + ".json")
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, base + ".json")


def produce(
    cfg: DataConfig, tok_path: str, base: str, workers: int, stop: threading.Event | None = None, log=print
) -> None:
    """Tokenize the stream into chunk files, skipping chunks already on disk, until it ends (or `stop`)."""
    import sentencepiece as spm

    dtype = "uint16" if spm.SentencePieceProcessor(model_file=tok_path).vocab_size() < 2**16 else "uint32"
    state = read_state(base)
    if state["done"]:
        return
    size, have, k = cfg.stream_chunk_tokens, state["num_chunks"], 0
    parts, buffered = [], 0
    progress = tokenizing.Progress(
        f"data: streaming {cfg.source} into {size:,}-token chunks", None, 0, base + ".progress", log
    )
    units = tokenizing.document_batches(cfg, min(tokenizing.BATCH_CHARS, 4 * size))
    for tokens, num_bytes in tokenizing._results(units, max(1, workers), tok_path, dtype, pool=True):
        parts.append(tokens)
        buffered += len(tokens)
        while buffered >= size:
            flat = np.concatenate(parts)
            if k >= have:
                _write_chunk(
                    base, k, flat[:size], {"dtype": dtype, "num_chunks": k + 1, "last_tokens": size, "done": False}
                )
            parts, buffered, k = [flat[size:]], buffered - size, k + 1
        progress.update(num_bytes, len(tokens))
        if stop is not None and stop.is_set():
            return
    last = np.concatenate(parts) if parts else np.zeros(0, dtype)
    if len(last) and k >= have:
        _write_chunk(base, k, last, {"dtype": dtype, "num_chunks": k + 1, "last_tokens": len(last), "done": False})
        k += 1
    _write_state(base, {"dtype": dtype, "num_chunks": k, "last_tokens": len(last) if len(last) else size, "done": True})
    if os.path.exists(base + ".progress"):
        os.remove(base + ".progress")
    progress.update(0, 0, final=True)


def _write_chunk(base: str, k: int, tokens: np.ndarray, state: dict) -> None:
    tmp = tokenizing.temp_path(chunk_path(base, k))
    try:
        tokens.tofile(tmp)
        os.replace(tmp, chunk_path(base, k))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _write_state(base, state)


class Producer(threading.Thread):
    """The main rank's background producer; a failure is left in `<base>.failed` for the waiting ranks."""

    def __init__(self, cfg: DataConfig, tok_path: str, base: str, workers: int):
        super().__init__(daemon=True, name="stream-producer")
        self.args, self.base, self.stop_event = (cfg, tok_path, base, workers), base, threading.Event()

    def run(self) -> None:
        try:
            produce(*self.args, stop=self.stop_event)
        except Exception as e:  # noqa: BLE001  (any failure must reach the ranks that wait for chunks)
            with open(self.base + ".failed", "w") as f:
                f.write(f"{type(e).__name__}: {e}".splitlines()[0])

    def stop(self) -> None:
        self.stop_event.set()


class StreamCorpus:
    """The Corpus interface (trainer/data.py) over chunk files that may still be being written."""

    def __init__(
        self,
        base: str,
        seq_len: int,
        chunk_tokens: int,
        val_fraction: float,
        vocab_size: int,
        tokenizer_path: str,
        producer: Producer | None = None,
        log=print,
    ):
        self.base, self.seq_len, self.chunk_tokens = base, seq_len, chunk_tokens
        self.vocab_size, self.tokenizer_path, self.producer, self.log = vocab_size, tokenizer_path, producer, log
        self.seqs_per_chunk = (chunk_tokens - 1) // seq_len
        self.num_val = max(1, int(self.seqs_per_chunk * val_fraction))
        if self.seqs_per_chunk - self.num_val < 1:
            raise ValueError(
                f"data.stream_chunk_tokens={chunk_tokens} is too small for data.seq_len={seq_len}; raise it"
            )
        self.state, self.start = read_state(base), time.time()
        self._open: dict[int, np.ndarray] = {}
        self._perm: tuple = (None, None)

    # --- what the chunks hold ------------------------------------------------------------------------
    def _wait(self, k: int) -> None:
        """Until chunk k is on disk or the stream has ended before it."""
        last = time.time()
        while not (k < self.state["num_chunks"] or self.state["done"]):
            failed = self.base + ".failed"
            if os.path.exists(failed) and os.path.getmtime(failed) >= self.start:
                raise ValueError(f"the stream producer on the main rank failed: {open(failed).read()}")
            if time.time() - last >= WAIT_REPORT_S:
                last = time.time()
                status = open(self.base + ".progress").read() if os.path.exists(self.base + ".progress") else "starting"
                self.log(f"data: waiting for chunk {k} of {self.base} ({status})", flush=True)
            time.sleep(0.2)
            self.state = read_state(self.base)

    def _train_seqs(self, k: int) -> int | None:
        """Training sequences in chunk k (None: the stream ended before it)."""
        self._wait(k)
        n = self.state["num_chunks"]
        if k >= n:
            return None
        tokens = self.state["last_tokens"] if self.state["done"] and k == n - 1 else self.chunk_tokens
        seqs = max(0, (tokens - 1) // self.seq_len)
        return seqs - self.num_val if k == 0 else seqs

    def _locate(self, sample: int) -> tuple[int, int]:
        first = self.seqs_per_chunk - self.num_val
        return (
            (0, sample)
            if sample < first
            else (1 + (sample - first) // self.seqs_per_chunk, (sample - first) % self.seqs_per_chunk)
        )

    def _total_train(self) -> int:
        total = sum(self._train_seqs(k) or 0 for k in range(self.state["num_chunks"]))
        if total < 1:
            raise ValueError(
                f"the stream {self.base} ended after {self.state['last_tokens']} tokens: too few for "
                f"data.seq_len={self.seq_len}; use a larger source or data.max_tokens"
            )
        return total

    # --- the Corpus interface --------------------------------------------------------------------------
    def sequence(self, index: int) -> np.ndarray:
        k, j = divmod(index, self.seqs_per_chunk)
        if k not in self._open:
            self._wait(k)
            self._open[k] = np.memmap(chunk_path(self.base, k), dtype=self.state["dtype"], mode="r")
        start = j * self.seq_len
        return self._open[k][start : start + self.seq_len + 1]

    def train_index(self, sample: int, seed: int) -> int:
        k, pos = self._locate(sample)
        n = self._train_seqs(k)
        if n is None or pos >= n:  # the stream has ended: wrap around
            k, pos = self._locate(sample % self._total_train())
            n = self._train_seqs(k)
        if self._perm[0] != (seed, k):
            gen = torch.Generator().manual_seed(mix_seed(seed, k))
            self._perm = ((seed, k), torch.randperm(n, generator=gen))
        return k * self.seqs_per_chunk + (self.num_val if k == 0 else 0) + int(self._perm[1][pos])

    def val_index(self, j: int) -> int:
        return j

    def wait_for_samples(self, first: int, end: int) -> None:
        self._train_seqs(self._locate(end - 1)[0])  # chunks are written in order


def base_path(cfg: DataConfig, tokens_prefix: str) -> str:
    return f"{tokens_prefix}.c{cfg.stream_chunk_tokens}"


def open_stream(cfg: DataConfig, tok_path: str, tokens_prefix: str, vocab_size: int, is_main: bool) -> StreamCorpus:
    """Start the producer (main rank) unless the stream is complete on disk, then wait for chunk 0."""
    base, producer = base_path(cfg, tokens_prefix), None
    if is_main and not read_state(base)["done"]:
        if os.path.exists(base + ".failed"):
            os.remove(base + ".failed")
        print(
            f"data: tokenizing the stream {cfg.source} in chunks of {cfg.stream_chunk_tokens:,} tokens while training "
            f"(into {base}.*)",
            flush=True,
        )
        producer = Producer(cfg, tok_path, base, cfg.num_workers or os.cpu_count() or 1)
        producer.start()
    data = StreamCorpus(base, cfg.seq_len, cfg.stream_chunk_tokens, cfg.val_fraction, vocab_size, tok_path, producer)
    data._wait(0)
    if data._train_seqs(0) is None:
        raise ValueError(f"data.source={cfg.source!r} streamed no text; point it at a non-empty dataset")
    return data
