"""Tokenize a corpus into the flat token cache in parallel processes, with progress lines and atomic writes.

The work is cut into units whose order fixes the token order, so the file is the same for any number of
workers:
- plain-text files (data.text_documents=blank_line): byte ranges of about RANGE_BYTES, each ending just
  after a blank line, so splitting a range into paragraphs gives the same documents as the whole file;
  each worker reads its own range, no text crosses a pipe;
- every other source (builtin, jsonl, parquet, hub, whole-file text): batches of about BATCH_CHARS of
  documents, read by the main process.
At most 2 x workers units are in flight, so a hub stream is read only as fast as it is tokenized
(bounded memory, and data.max_tokens stops the reading). Tokens are written to a temporary file next to
the cache entry, renamed into place when complete, and removed on any failure. Each worker encodes a
distinct word once (trainer/word_encode.py): sentencepiece's ids, for 1.5x (text that does not repeat) to
2.5x (benchmarks/prepare_speed.py's repeated text) less CPU per token.
"""

from __future__ import annotations

import collections
import errno
import json
import multiprocessing as mp
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path

import numpy as np
import sentencepiece as spm

from trainer import corpus, word_encode
from trainer.config import DataConfig

RANGE_BYTES = 8 << 20
BATCH_CHARS = 4 << 20
BLANK_LINE = re.compile(rb"\n[ \t\r\f\v]*\n")
PROGRESS_EVERY_S = 10.0

_worker: dict = {}  # per worker process: its DocumentEncoder


def _init_worker(sp_path: str, dtype: str) -> None:
    _worker.update(encoder=word_encode.DocumentEncoder(sp_path, dtype))


def encode_documents(docs: list[str]) -> np.ndarray:
    """The documents' ids, each followed by EOS, as one flat array (in a worker, or inline for 1 worker)."""
    return _worker["encoder"].encode(docs)


def _run_unit(unit) -> tuple[np.ndarray, int]:
    """(tokens, text bytes consumed) of one unit: ("range", path, start, end) or ("docs", texts, num_bytes)."""
    if unit[0] == "range":
        _, path, start, end = unit
        with open(path, "rb") as f:
            f.seek(start)
            raw = f.read(end - start)
        text = raw.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")  # as open() reads it
        docs = corpus.split_paragraphs(text)
        return encode_documents(docs), end - start
    return encode_documents(unit[1]), unit[2]


def _next_boundary(f, offset: int, size: int) -> int:
    """The first position at or after `offset` just past a blank line (or the end of the file)."""
    f.seek(max(0, offset - 1))  # include the newline that may end the line before `offset`
    pos, tail = max(0, offset - 1), b""
    while pos < size:
        chunk = f.read(1 << 16)
        window = tail + chunk
        m = BLANK_LINE.search(window)
        if m:
            return pos - len(tail) + m.end()
        tail, pos = window[-256:], pos + len(chunk)  # keep enough to match a blank line across chunks
    return size


def text_ranges(files: list[str], range_bytes: int = RANGE_BYTES):
    for path in files:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            start = 0
            while start < size:
                end = _next_boundary(f, start + range_bytes, size)
                yield ("range", path, start, end)
                start = end


def document_batches(cfg: DataConfig, batch_chars: int = BATCH_CHARS):
    batch, chars = [], 0
    for doc in corpus.documents(cfg):
        batch.append(doc)
        chars += len(doc)
        if chars >= batch_chars:
            yield ("docs", batch, chars)
            batch, chars = [], 0
    if batch:
        yield ("docs", batch, chars)


def work_units(cfg: DataConfig, workers: int):
    """(units, total bytes or None when unknown in advance). Units are smaller for small corpora, so that
    every worker gets several (the tokens do not depend on where units are cut)."""
    total = None
    if cfg.source == "builtin":
        total = corpus.BUILTIN_MAX_CHARS
    elif corpus.is_local(cfg.source):
        files = corpus.local_files(cfg.source)
        total = sum(os.path.getsize(f) for f in files)
    unit = lambda cap: cap if total is None else int(min(cap, max(1 << 16, total / (4 * workers))))  # noqa: E731
    if (
        total is not None
        and cfg.source != "builtin"
        and cfg.text_documents == "blank_line"
        and corpus.LOCAL_FORMATS[Path(files[0]).suffix] == "text"
    ):
        return text_ranges(files, unit(RANGE_BYTES)), total
    return document_batches(cfg, unit(BATCH_CHARS)), total


def _results(units, workers: int, sp_path: str, dtype: str, pool: bool = False):
    """Each unit's result, in unit order; at most 2 x workers units read ahead. pool: worker processes even
    for one worker (a background thread then leaves the GIL to the training loop)."""
    if workers <= 1 and not pool:
        _init_worker(sp_path, dtype)
        yield from map(_run_unit, units)
        return
    # fork: the workers need only sentencepiece and numpy; spawn would re-import train.py (torch, DeepSpeed) in each
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    with mp.get_context(method).Pool(workers, initializer=_init_worker, initargs=(sp_path, dtype)) as pool:
        pending = collections.deque()
        for unit in units:
            pending.append(pool.apply_async(_run_unit, (unit,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


class Progress:
    """Progress lines with tokens/s and ETA, also written to `<cache entry>.progress` for waiting ranks."""

    def __init__(self, label: str, total_bytes: int | None, max_tokens: int, path: str | None, log=print):
        self.label, self.total_bytes, self.max_tokens, self.path, self.log = label, total_bytes, max_tokens, path, log
        self.start = self.last = time.perf_counter()
        self.bytes = self.tokens = 0

    def update(self, num_bytes: int, num_tokens: int, final: bool = False) -> None:
        self.bytes, self.tokens = self.bytes + num_bytes, self.tokens + num_tokens
        now = time.perf_counter()
        if final or now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            self.report(now - self.start, final)

    def line(self, elapsed: float, final: bool) -> str:
        rate = self.tokens / max(elapsed, 1e-9)
        done = [f"{self.bytes / 1e6:,.1f} MB"]
        fraction = None
        if self.max_tokens:
            fraction = self.tokens / self.max_tokens
        elif self.total_bytes:
            done.append(f"of {self.total_bytes / 1e6:,.1f} MB")
            fraction = self.bytes / self.total_bytes
        eta = "" if final or not fraction else f", ETA {_duration(elapsed * (1 - fraction) / max(fraction, 1e-9))}"
        pct = f" ({100 * min(fraction, 1.0):.0f}%)" if fraction else ""
        return (
            f"{self.label}: {' '.join(done)}{pct}, {self.tokens / 1e6:,.2f} M tokens, {rate / 1e6:.2f} M tokens/s{eta}"
            + (f", done in {_duration(elapsed)}" if final else "")
        )

    def report(self, elapsed: float, final: bool) -> None:
        text = self.line(elapsed, final)
        self.log(text, flush=True)
        if self.path and not final:
            with open(self.path + ".tmp", "w") as f:
                f.write(text)
            os.replace(self.path + ".tmp", self.path)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


# --- the cache entry -----------------------------------------------------------------------------------
def temp_path(final: str) -> str:
    """A temporary name next to `final` that says which host and process own it (see remove_stale_temps)."""
    return os.path.join(os.path.dirname(final), f".tmp-{socket.gethostname()}-{os.getpid()}-{os.path.basename(final)}")


def remove_stale_temps(directory: str) -> None:
    """Temporary files of dead processes on this host (a killed preparation) are removed; others are left alone."""
    own = re.compile(rf"^\.tmp-{re.escape(socket.gethostname())}-(\d+)-")
    for name in os.listdir(directory):
        m = own.match(name)
        if m and not _alive(int(m.group(1))):
            os.remove(os.path.join(directory, name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write(out, tokens: np.ndarray) -> None:
    out.write(tokens.tobytes())


def write_tokens(cfg: DataConfig, sp_path: str, path: str, workers: int, log=print) -> int:
    """Tokenize the corpus into `path` (+ `path`.json, written last: the entry is complete when it exists)."""
    sp = spm.SentencePieceProcessor(model_file=sp_path)
    dtype = "uint16" if sp.vocab_size() < 2**16 else "uint32"
    units, total = work_units(cfg, workers)
    progress = Progress(
        f"data: tokenizing {cfg.source} ({workers} process{'es' if workers > 1 else ''})",
        total,
        cfg.max_tokens,
        path + ".progress",
        log,
    )
    tmp, num_tokens = temp_path(path), 0
    try:
        with open(tmp, "wb") as out:
            for tokens, num_bytes in _results(units, workers, sp_path, dtype):
                if cfg.max_tokens:
                    tokens = tokens[: cfg.max_tokens - num_tokens]
                _write(out, tokens)
                num_tokens += len(tokens)
                progress.update(num_bytes, len(tokens))
                if cfg.max_tokens and num_tokens >= cfg.max_tokens:
                    break
        if num_tokens == 0:
            raise ValueError(f"data.source={cfg.source!r} contains no text; point it at a non-empty corpus")
        with open(tmp + ".json", "w") as f:
            json.dump({"dtype": dtype, "num_tokens": num_tokens, "source": cfg.source}, f)
        os.replace(tmp, path)
        os.replace(tmp + ".json", path + ".json")
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        free = shutil.disk_usage(os.path.dirname(path)).free
        raise ValueError(
            f"data.cache_dir={cfg.cache_dir!r}: disk full after {num_tokens:,} tokens ({free / 1e9:.1f} GB free); "
            f"free space there or point data.cache_dir at a larger disk"
        ) from None
    finally:
        for leftover in (tmp, tmp + ".json", path + ".progress"):
            if os.path.exists(leftover):
                os.remove(leftover)
    progress.update(0, 0, final=True)
    return num_tokens
