"""Parallel tokenization: the same tokens as a serial reference for any number of workers and any cut of the
work, exact max_tokens, progress lines, atomic writes (no temporary file left, disk full in one line)."""

import errno
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import sentencepiece as spm

from tests.helpers import train_sentencepiece
from trainer import corpus, data, tokenizing
from trainer.config import DataConfig

PARAGRAPHS = [
    "First paragraph,\nwith two lines.",
    "def f(x):\n    return  x  # code\n\treturn None",
    "Ünïcödé 日本語 and digits 12345",
    "  indented start",
    "A\u3000wide space and a \x0bvertical tab",
]


def text_corpus(tmp_path, copies: int = 40) -> str:
    rng = random.Random(0)
    separators = ["\n\n", "\n \n", "\r\n\r\n", "\n\t\n\n", "\n\u3000\n"]  # blank lines of every kind, CRLF too
    parts = [rng.choice(PARAGRAPHS) + rng.choice(separators) for _ in range(copies * len(PARAGRAPHS))]
    path = tmp_path / "corpus.txt"
    path.write_bytes("".join(parts).encode())
    return str(path)


@pytest.fixture(scope="module")
def sp_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("sp")
    return train_sentencepiece("\n".join(PARAGRAPHS * 20).split("\n"), str(d / "m"))


@pytest.fixture(scope="module")
def project_sp_path(tmp_path_factory):
    """The project's own tokenizer settings: encoded a word at a time (trainer/word_encode.py)."""
    d = tmp_path_factory.mktemp("project_sp")
    (d / "train.txt").write_text("\n\n".join(PARAGRAPHS * 20))
    data.train_tokenizer(DataConfig(source=str(d / "train.txt"), vocab_size=400, cache_dir=str(d)), str(d / "m.model"))
    return str(d / "m.model")


def reference(cfg: DataConfig, sp_path: str) -> np.ndarray:
    """One document at a time, serially: what the parallel path must reproduce."""
    sp = spm.SentencePieceProcessor(model_file=sp_path)
    return np.array([t for doc in corpus.documents(cfg) for t in sp.encode(doc) + [sp.eos_id()]], dtype=np.uint16)


def tokenize(cfg, sp_path, tmp_path, workers, name="tokens.bin", log=None) -> np.ndarray:
    out = str(tmp_path / name)
    n = tokenizing.write_tokens(cfg, sp_path, out, workers, log=log or (lambda *a, **k: None))
    tokens = np.fromfile(out, dtype=np.uint16)
    assert len(tokens) == n
    return tokens


def test_split_paragraphs_equals_the_line_loop():
    rng = random.Random(0)
    alphabet = ["a", "b", " ", "\n", "\n", "\t", "\u3000", "\x1c", "\x0b", "\x85", "\u2028", "é"]
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(30)))
        lines = [line + "\n" for line in text.split("\n")[:-1]] + (
            [text.split("\n")[-1]] if text.split("\n")[-1] else []
        )
        assert corpus.split_paragraphs(text) == list(corpus.paragraphs(lines)), repr(text)


def test_ranges_cover_the_file_and_end_after_blank_lines(tmp_path):
    path = text_corpus(tmp_path)
    data = open(path, "rb").read()
    ranges = list(tokenizing.text_ranges([path], range_bytes=100))
    assert ranges[0][2] == 0 and ranges[-1][3] == len(data) and len(ranges) > 10
    for (_, _, _, end), (_, _, start, _) in zip(ranges, ranges[1:]):
        assert end == start and tokenizing.BLANK_LINE.search(data[:end][-16:]) and data[:end].endswith(b"\n")


@pytest.mark.parametrize("model", ["sp_path", "project_sp_path"])
@pytest.mark.parametrize("workers", [1, 2])
def test_text_ranges_give_the_reference_tokens(tmp_path, request, monkeypatch, workers, model):
    sp_path = request.getfixturevalue(model)
    monkeypatch.setattr(tokenizing, "RANGE_BYTES", 257)  # many ranges, cut at arbitrary paragraphs
    cfg = DataConfig(source=text_corpus(tmp_path), cache_dir=str(tmp_path))
    assert np.array_equal(tokenize(cfg, sp_path, tmp_path, workers), reference(cfg, sp_path))
    if workers == 1:  # the word path was taken for the project's model, and kept (its tripwire never fired)
        assert (tokenizing._worker["encoder"].words_sp is not None) == (model == "project_sp_path")


@pytest.mark.parametrize("model", ["sp_path", "project_sp_path"])
@pytest.mark.parametrize("workers", [1, 2])
def test_document_batches_give_the_reference_tokens(tmp_path, request, monkeypatch, workers, model):
    sp_path = request.getfixturevalue(model)
    import json

    monkeypatch.setattr(tokenizing, "BATCH_CHARS", 500)
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"text": p}) for p in PARAGRAPHS * 30))
    cfg = DataConfig(source=str(path), cache_dir=str(tmp_path))
    assert np.array_equal(tokenize(cfg, sp_path, tmp_path, workers), reference(cfg, sp_path))


def test_max_tokens_is_exact_and_the_same_for_any_workers(tmp_path, sp_path):
    cfg = DataConfig(source=text_corpus(tmp_path), cache_dir=str(tmp_path), max_tokens=1001)
    one, two = tokenize(cfg, sp_path, tmp_path, 1, "a.bin"), tokenize(cfg, sp_path, tmp_path, 2, "b.bin")
    assert len(one) == 1001 and np.array_equal(one, two)


def test_progress_lines_show_rate_and_eta(tmp_path, sp_path, monkeypatch):
    monkeypatch.setattr(tokenizing, "PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(tokenizing, "RANGE_BYTES", 1000)
    lines = []
    tokenize(
        DataConfig(source=text_corpus(tmp_path), cache_dir=str(tmp_path)),
        sp_path,
        tmp_path,
        2,
        log=lambda text, **k: lines.append(text),
    )
    assert len(lines) > 3 and all("M tokens/s" in line for line in lines)
    assert "ETA" in lines[0] and "%" in lines[0] and "done in" in lines[-1]


def test_disk_full_is_one_line_and_leaves_no_temporary_file(tmp_path, sp_path, monkeypatch):
    def full(out, tokens):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tokenizing, "_write", full)
    cfg = DataConfig(source=text_corpus(tmp_path), cache_dir=str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    with pytest.raises(ValueError, match=r"data.cache_dir=.*disk full .* GB free"):
        tokenizing.write_tokens(cfg, sp_path, str(tmp_path / "cache" / "tokens.bin"), 2, log=lambda *a, **k: None)
    assert os.listdir(tmp_path / "cache") == []


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tokenizing.temp_path(str(tmp_path / "tokens.bin")).replace(f"-{os.getpid()}-", f"-{int(dead.stdout)}-")
    live = tokenizing.temp_path(str(tmp_path / "other.bin"))
    for path in (stale, live):
        open(path, "w").close()
    tokenizing.remove_stale_temps(str(tmp_path))
    assert not os.path.exists(stale) and os.path.exists(live)
