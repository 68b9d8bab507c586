"""Tokenizer, the tokenized corpus cache, and deterministic per-rank batches.

The corpus is tokenized once into a flat memmap (documents joined by EOS), cached under
data.cache_dir keyed by corpus + tokenizer + seq_len, so a second run starts at once. The main rank
builds it (in parallel processes: trainer/tokenizing.py, or ahead of time with trainer/prepare.py) while
the other ranks wait on the files; a streamed hub source is cached in chunks instead (trainer/stream.py).
Sequences are non-overlapping windows of seq_len + 1 tokens; the last val_fraction of them
is held out. The order of training sequences is a per-epoch permutation from the seed, so
the data position is just the number of optimizer steps taken.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from itertools import islice

import numpy as np
import sentencepiece as spm
import torch

from trainer import corpus, preflight, stream, tokenizing
from trainer.config import DataConfig
from trainer.seeding import mix_seed

WAIT_REPORT_S = 30.0
MIN_VOCAB = 260  # DataConfig's floor: 256 byte pieces, unk, bos, eos and more
WAIT_HINT = (
    "; if the ranks run on several machines, data.cache_dir must be on a filesystem they share, "
    "or run `python -m trainer.prepare` with the same data settings on each machine first"
)


def _cache_dir(cfg: DataConfig) -> str:
    path = os.path.expanduser(cfg.cache_dir)
    if not os.path.isdir(path):
        preflight.check_writable(cfg.cache_dir, "data.cache_dir")  # one line naming the key, not an OSError
        os.makedirs(path, exist_ok=True)
    return path


def tokenizer_path(cfg: DataConfig) -> str:
    """The .model file to use: the given one, or a cached one trained on the corpus."""
    if cfg.tokenizer:
        return os.path.expanduser(cfg.tokenizer)
    key = hashlib.sha256(f"spm-bpe-v2 {corpus.fingerprint(cfg)} {cfg.vocab_size}".encode()).hexdigest()[:16]
    return os.path.join(_cache_dir(cfg), f"tokenizer-{key}.model")


def train_tokenizer(cfg: DataConfig, path: str) -> None:
    """BPE with LLaMA's conventions: no normalization (identity), whitespace kept as it is (code indentation,
    double spaces), digits split, unknown characters as UTF-8 bytes, so decode(encode(text)) == text.
    Trained on lines (a newline is encoded through its byte piece, as in LLaMA)."""
    failed: list[ValueError] = []  # a bad row, kept here: sentencepiece would wrap it into its own RuntimeError

    def sentences():
        try:
            for doc in corpus.documents(cfg):
                for line in doc.splitlines():
                    if line.strip():
                        yield line[:4000]
        except ValueError as e:
            failed.append(e)

    prefix = tokenizing.temp_path(path)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=islice(sentences(), 2_000_000),
            model_prefix=prefix,
            vocab_size=cfg.vocab_size,
            model_type="bpe",
            byte_fallback=True,
            character_coverage=0.9995,
            num_threads=os.cpu_count() or 1,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=True,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            minloglevel=2,
        )
        if failed:
            raise failed[0]
        os.replace(prefix + ".model", path)
    except RuntimeError as e:
        raise failed[0] if failed else _training_error(cfg, str(e)) from None
    finally:
        for leftover in (prefix, prefix + ".model", prefix + ".vocab"):
            if os.path.exists(leftover):
                os.remove(leftover)


def _training_error(cfg: DataConfig, message: str) -> ValueError:
    """sentencepiece's reason as one line naming data.vocab_size and what to change."""
    too_high = re.search(r"Vocabulary size too high .*<= (\d+)", message)
    if too_high:
        most = int(too_high.group(1))
        fix = f"set data.vocab_size<={most} or use more text" if most >= MIN_VOCAB else "use more text"
        return ValueError(
            f"data.vocab_size={cfg.vocab_size}: data.source={cfg.source!r} is too small for it (its text "
            f"makes at most {most} pieces); {fix}"
        )
    return ValueError(
        f"data.vocab_size={cfg.vocab_size}: sentencepiece cannot train on {cfg.source} "
        f"({message.splitlines()[0][-160:]}); change data.vocab_size or data.source"
    )


def load_tokenizer(path: str) -> spm.SentencePieceProcessor:
    try:
        sp = spm.SentencePieceProcessor(model_file=path)
    except (OSError, RuntimeError) as e:
        raise ValueError(
            f"data.tokenizer={path!r} is not a valid sentencepiece model ({e}); retrain it or fix the path"
        ) from None
    if sp.eos_id() < 0:  # documents are joined with EOS
        raise ValueError(
            f"data.tokenizer={path!r} has no EOS piece (eos_id=-1); retrain it with an eos_id "
            f"(e.g. --eos_id=2) or leave data.tokenizer unset to train one"
        )
    return sp


def _token_cache_key(cfg: DataConfig, tok_path: str) -> str:
    with open(tok_path, "rb") as f:
        tok_hash = hashlib.sha256(f.read()).hexdigest()[:16]
    return hashlib.sha256(f"tokens-v2 {corpus.fingerprint(cfg)} {tok_hash} {cfg.seq_len}".encode()).hexdigest()[:16]


def tokenize_corpus(cfg: DataConfig, tok_path: str, path: str) -> None:
    """Write the corpus as one flat token array (EOS after each document) to `path`, in parallel."""
    tokenizing.write_tokens(cfg, tok_path, path, cfg.num_workers or os.cpu_count() or 1)


def _build_or_wait(is_main: bool, done: str, what: str, build) -> None:
    """The main rank builds; the others wait for the file, outside any collective (a barrier's timeout would
    kill the job while the main rank tokenizes a large corpus). A failure on the main rank is left in
    `done`.failed so the waiting ranks stop with the same message."""
    if is_main:
        if os.path.exists(done):
            return
        try:
            build()
        except Exception as e:
            with contextlib.suppress(OSError):  # an unwritable cache: the main rank's own error says so
                with open(done + ".failed", "w") as f:
                    f.write(str(e).splitlines()[0] if str(e) else type(e).__name__)
            raise
        if os.path.exists(done + ".failed"):
            os.remove(done + ".failed")
        return
    wait_for(done, what)


def wait_for(path: str, what: str, poll_s: float = 0.5, log=print) -> None:
    start = last = time.time()
    progress, failed = path.removesuffix(".json") + ".progress", path + ".failed"
    while not os.path.exists(path):
        if os.path.exists(failed) and os.path.getmtime(failed) >= start:
            with open(failed) as f:
                raise ValueError(f"the main rank failed to {what}: {f.read()}")
        if time.time() - last >= WAIT_REPORT_S:
            last = time.time()
            status = _read(progress) or "no progress visible yet"
            hint = WAIT_HINT if last - start > 300 and status.startswith("no progress") else ""
            log(f"data: waited {last - start:.0f} s for the main rank to {what} ({status}){hint}", flush=True)
        time.sleep(poll_s)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:  # not written yet, or just removed because the work is done
        return ""


@dataclass
class Corpus:
    tokens: np.ndarray  # flat token ids (memmap)
    seq_len: int
    num_train: int  # training sequences
    num_val: int  # held-out sequences, after the training ones
    vocab_size: int
    tokenizer_path: str
    _perm: tuple = (None, None)  # ((seed, epoch), permutation) last used

    def sequence(self, index: int) -> np.ndarray:
        start = index * self.seq_len
        return self.tokens[start : start + self.seq_len + 1]

    def train_index(self, sample: int, seed: int) -> int:
        """The sequence of training sample `sample`: a per-epoch permutation of the training sequences."""
        epoch, pos = divmod(sample, self.num_train)
        if self._perm[0] != (seed, epoch):
            gen = torch.Generator().manual_seed(mix_seed(seed, epoch))
            self._perm = ((seed, epoch), torch.randperm(self.num_train, generator=gen))
        return int(self._perm[1][pos])

    def val_index(self, j: int) -> int:
        return self.num_train + j

    def wait_for_samples(self, first: int, end: int) -> None:
        """All of a step's samples are on disk (a stream's may not be yet: trainer/stream.py)."""


def prepare(cfg: DataConfig, is_main: bool, barrier) -> Corpus | stream.StreamCorpus:
    """Build (on the main rank) or find the tokenizer and token cache, then open them everywhere."""
    tok_path = tokenizer_path(cfg)
    if is_main:
        tokenizing.remove_stale_temps(_cache_dir(cfg))

    def train():
        preflight.check_writable(cfg.cache_dir, "data.cache_dir")  # only now: a prepared cache may be read-only
        print(
            f"data: training a {cfg.vocab_size}-token BPE tokenizer on {cfg.source} (cached for later runs)", flush=True
        )
        train_tokenizer(cfg, tok_path)

    _build_or_wait(is_main, tok_path, "train the tokenizer", train)
    sp = load_tokenizer(tok_path)
    tokens_path = os.path.join(_cache_dir(cfg), f"tokens-{_token_cache_key(cfg, tok_path)}.bin")
    if stream.is_stream(cfg):  # a hub stream: tokenized in chunks while training, never whole before step 1
        return stream.open_stream(cfg, tok_path, tokens_path.removesuffix(".bin"), sp.vocab_size(), is_main)

    def tokenize():
        preflight.check_writable(cfg.cache_dir, "data.cache_dir")
        print(
            f"data: tokenizing {cfg.source} into {tokens_path} (cached for later runs; "
            f"`python -m trainer.prepare` does this ahead of training)",
            flush=True,
        )
        tokenize_corpus(cfg, tok_path, tokens_path)

    _build_or_wait(is_main, tokens_path + ".json", "tokenize the corpus", tokenize)
    barrier()  # every rank has the files by now, so this is quick
    with open(tokens_path + ".json") as f:
        meta = json.load(f)
    tokens = np.memmap(tokens_path, dtype=meta["dtype"], mode="r", shape=(meta["num_tokens"],))
    num_seqs = (len(tokens) - 1) // cfg.seq_len
    num_val = max(1, int(num_seqs * cfg.val_fraction))
    if num_seqs - num_val < 1:
        raise ValueError(
            f"data.source={cfg.source!r} has {len(tokens)} tokens: too few for data.seq_len={cfg.seq_len}; "
            f"use more text or a shorter seq_len"
        )
    return Corpus(tokens, cfg.seq_len, num_seqs - num_val, num_val, sp.vocab_size(), tok_path)


class TrainBatches:
    """Micro-batches for one rank; step s of the run always gets the same sequences."""

    def __init__(self, data: Corpus, global_batch: int, micro_batch: int, rank: int, world_size: int, seed: int):
        self.data, self.global_batch, self.micro_batch = data, global_batch, micro_batch
        self.rank, self.world_size, self.seed = rank, world_size, seed

    def micro_batches(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Inputs and targets, each (micro_batch, seq_len) int64, for 0-based optimizer step `step`."""
        # Every rank waits for the whole step's data, before any collective of the step, so no rank sits in
        # an all-reduce (with its timeout) while another waits for a stream's next chunk.
        self.data.wait_for_samples(step * self.global_batch, (step + 1) * self.global_batch)
        per_rank = self.global_batch // self.world_size
        first = step * self.global_batch + self.rank * per_rank
        out = []
        for start in range(first, first + per_rank, self.micro_batch):
            rows = np.stack(
                [
                    self.data.sequence(self.data.train_index(i, self.seed))
                    for i in range(start, start + self.micro_batch)
                ]
            )
            rows = torch.from_numpy(rows.astype(np.int64))
            out.append((rows[:, :-1], rows[:, 1:]))
        return out


def val_batches(data: Corpus, micro_batch: int, num_batches: int, rank: int, world_size: int):
    """This rank's share of the first num_batches x world_size held-out micro-batches."""
    total = min(num_batches * world_size, data.num_val // micro_batch) or 0
    for b in range(rank, total, world_size):
        idx = range(b * micro_batch, (b + 1) * micro_batch)
        rows = torch.from_numpy(np.stack([data.sequence(data.val_index(j)) for j in idx]).astype(np.int64))
        yield rows[:, :-1], rows[:, 1:]
