"""Sentencepiece ids of a batch of documents, with each distinct word encoded once: the same ids for 1.5x
(text that does not repeat) to 3x less CPU per token (sentencepiece's BPE, about 0.5 us a token on one
core, was all of preparation's cost).

Why the ids are exact: sentencepiece's BPE starts from the characters of the normalized text ("▁" for a
space, plus a dummy "▁" in front) and merges two adjacent symbols only when their concatenation is a piece.
If every piece has the form ▁*x with no ▁ in x (what the trainer's split_by_whitespace makes; checked on the
model), no merge ever joins a non-space character to a space after it. So the text cut before every space
that follows a non-space is encoded, cut by cut, into the same ids as the whole: a "word" is one such cut,
a run of spaces and the text up to the next space (a literal ▁ in the text counts as a space). Each word starts with
a space (the document's first
with the dummy prefix's) and is encoded by a copy of the model that adds no dummy prefix of its own.
This needs the cut to see the characters the whole text sees, so it is used only for models without
normalization or removal of whitespace, without user-defined or unused pieces, and with "▁" a piece (so an
unknown character never meets a cut); other models (a user's nmt_nfkc model, unigram) are encoded whole.
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as model_pb2

SPACE = "\u2581"
PIECE_FORM = re.compile(f"{SPACE}*[^{SPACE}]*")
WORD = re.compile(" ( *[^ ]*)")  # after the space that starts a word: more spaces, then the rest of the word
CHECK_DOCS = 8  # documents per batch also encoded whole, as a tripwire (under 1% of the work)
CACHE_WORDS = 1 << 19  # distinct words whose ids a worker keeps (some 40-70 MB)

_P = model_pb2.ModelProto.SentencePiece
_T = model_pb2.TrainerSpec


def splits_at_spaces(model: model_pb2.ModelProto) -> bool:
    """Whether the model's ids for a text are its ids for the text's words, one word at a time."""
    norm, spec = model.normalizer_spec, model.trainer_spec
    normal = [p.piece for p in model.pieces if p.type == _P.NORMAL]
    return (
        spec.model_type == _T.BPE
        and not norm.precompiled_charsmap
        and norm.add_dummy_prefix
        and not norm.remove_extra_whitespaces
        and norm.escape_whitespaces
        and not spec.treat_whitespace_as_suffix
        and all(p.type in (_P.NORMAL, _P.UNKNOWN, _P.CONTROL, _P.BYTE) for p in model.pieces)
        and SPACE in normal
        and all(PIECE_FORM.fullmatch(p) for p in normal)
    )


def words(docs: list[str]) -> list[str | None]:
    """Each document's words without their first space, then None (the EOS) after each document (a word is
    the text from a space that follows a non-space up to the next such space)."""
    out: list[str | None] = []
    extend, append, find = out.extend, out.append, WORD.findall
    for doc in docs:
        if SPACE in doc:  # a literal ▁ is a space to sentencepiece: cut there too, not just before it
            doc = doc.replace(SPACE, " ")
        if doc[:1] == " " or "  " in doc:
            extend(find(" " + doc))
        elif doc:  # single spaces only: str.split cuts the same words, at C speed
            extend(doc.split(" "))
        append(None)
    return out


class DocumentEncoder:
    """encode(docs): the documents' ids, each followed by EOS, as one flat array of `dtype`. The ids of the words
    seen are kept across calls (up to CACHE_WORDS words, then started afresh), so a word is encoded by
    sentencepiece about once per corpus region rather than once per batch."""

    def __init__(self, model_file: str, dtype=np.uint16):
        self.sp = spm.SentencePieceProcessor(model_file=model_file)
        self.eos, self.dtype = self.sp.eos_id(), np.dtype(dtype)
        model = model_pb2.ModelProto()
        with open(model_file, "rb") as f:
            model.ParseFromString(f.read())
        self.words_sp = None
        if splits_at_spaces(model):
            model.normalizer_spec.add_dummy_prefix = False  # each word brings its own leading space
            self.words_sp = spm.SentencePieceProcessor(model_proto=model.SerializeToString())
        self._forget()

    def _forget(self) -> None:
        self.index: dict[str | None, int] = {None: 0}  # word -> row of the table; row 0 is the EOS
        self.lengths = np.ones(1, dtype=np.int64)  # each row's number of ids
        self.table = np.array([self.eos], dtype=self.dtype)  # the rows' ids, concatenated

    def encode(self, docs: list[str]) -> np.ndarray:
        if self.words_sp is not None:
            tokens = self._by_words(docs)
            whole = self._whole(docs[:CHECK_DOCS])
            if np.array_equal(tokens[: len(whole)], whole):
                return tokens
            self.words_sp = None  # never expected (see the module docstring); stay exact, at the old speed
        return self._whole(docs)

    def _whole(self, docs: list[str]) -> np.ndarray:
        ids = self.sp.encode(docs, num_threads=1)  # one thread: the parallelism is the processes
        for row in ids:
            row.append(self.eos)
        return np.fromiter(itertools.chain.from_iterable(ids), dtype=self.dtype, count=sum(map(len, ids)))

    def _by_words(self, docs: list[str]) -> np.ndarray:
        if len(self.index) > CACHE_WORDS:
            self._forget()
        keys, index = words(docs), self.index
        known = len(index)
        rows = np.array([index.setdefault(k, len(index)) for k in keys], dtype=np.int64)
        new = self.words_sp.encode([" " + w for w in itertools.islice(index, known, None)], num_threads=1)
        if new:
            lengths = np.fromiter(map(len, new), dtype=np.int64, count=len(new))
            self.lengths = np.concatenate([self.lengths, lengths])
            self.table = np.concatenate(
                [
                    self.table,
                    np.fromiter(itertools.chain.from_iterable(new), dtype=self.dtype, count=int(lengths.sum())),
                ]
            )
        return self.table[_gather_positions(self.lengths, rows)]


def _gather_positions(lengths: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Positions in the concatenated rows of `lengths` that spell out rows[0], rows[1], ... one after another."""
    starts = np.cumsum(lengths) - lengths
    sizes = lengths[rows]
    out_starts = np.cumsum(sizes) - sizes
    return np.arange(int(sizes.sum()), dtype=np.int64) + np.repeat(starts[rows] - out_starts, sizes)
