"""Data pipeline: local sources, packing with EOS, the cache, disjoint per-rank batches; data errors in one line."""

import contextlib
import json
import os
import subprocess
import time

import numpy as np
import pytest

from trainer import corpus, data
from trainer.config import DataConfig

DOCS = [
    f"Document number {i} talks about topic {i % 7} with some words: " + "lorem ipsum dolor sit amet " * (5 + i % 4)
    for i in range(300)
]


def write_source(tmp_path, fmt: str):
    if fmt == "txt":
        path = tmp_path / "corpus.txt"
        path.write_text("\n\n".join(DOCS))  # documents are paragraphs
    elif fmt == "jsonl":
        path = tmp_path / "corpus.jsonl"
        path.write_text("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(DOCS)))
    else:
        import datasets

        path = tmp_path / "corpus.parquet"
        datasets.Dataset.from_dict({"text": DOCS}).to_parquet(str(path))
    return path


def cfg_for(tmp_path, source, **kw) -> DataConfig:
    return DataConfig(source=str(source), vocab_size=300, seq_len=16, cache_dir=str(tmp_path / "cache"), **kw)


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "parquet"])
def test_local_formats_pack_documents_with_eos(tmp_path, fmt):
    cfg = cfg_for(tmp_path, write_source(tmp_path, fmt))
    c = data.prepare(cfg, True, lambda: None)
    sp = data.load_tokenizer(c.tokenizer_path)
    eos_positions = np.flatnonzero(np.asarray(c.tokens) == sp.eos_id())
    assert len(eos_positions) == len(DOCS)  # one EOS after each document, none elsewhere
    first_doc = sp.decode(np.asarray(c.tokens[: eos_positions[0]]).tolist())
    assert first_doc == DOCS[0]  # whitespace kept, trailing spaces included
    assert c.num_train > 0 and c.num_val >= 1
    assert c.num_val == max(1, int((len(c.tokens) - 1) // 16 * cfg.val_fraction))


def test_second_prepare_uses_the_cache(tmp_path, monkeypatch):
    cfg = cfg_for(tmp_path, write_source(tmp_path, "txt"))
    first = data.prepare(cfg, True, lambda: None)

    def fail(*a, **k):
        raise AssertionError("cache miss: tokenizer or tokens rebuilt")

    monkeypatch.setattr(data, "train_tokenizer", fail)
    monkeypatch.setattr(data, "tokenize_corpus", fail)
    start = time.perf_counter()
    second = data.prepare(cfg, True, lambda: None)
    assert time.perf_counter() - start < 1.0
    assert np.array_equal(np.asarray(first.tokens), np.asarray(second.tokens))


def test_cache_key_changes_with_seq_len_and_text(tmp_path):
    source = write_source(tmp_path, "txt")
    a = data.prepare(cfg_for(tmp_path, source), True, lambda: None)
    b = data.prepare(
        DataConfig(source=str(source), vocab_size=300, seq_len=32, cache_dir=str(tmp_path / "cache")),
        True,
        lambda: None,
    )
    assert a.tokens.filename != b.tokens.filename and a.tokenizer_path == b.tokenizer_path
    source.write_text("\n\n".join(DOCS[:100]))  # the text changed: everything is rebuilt
    c = data.prepare(cfg_for(tmp_path, source), True, lambda: None)
    assert c.tokenizer_path != a.tokenizer_path and len(c.tokens) < len(a.tokens)


def test_given_tokenizer_is_used(tmp_path):
    source = write_source(tmp_path, "txt")
    trained = data.prepare(cfg_for(tmp_path, source), True, lambda: None)
    cfg = DataConfig(
        source=str(source), tokenizer=trained.tokenizer_path, seq_len=16, cache_dir=str(tmp_path / "other")
    )
    assert data.prepare(cfg, True, lambda: None).tokenizer_path == trained.tokenizer_path


def corpus_fixture(num_train=40, num_val=6, seq_len=4):
    tokens = np.arange((num_train + num_val) * seq_len + 1, dtype=np.int64)
    return data.Corpus(tokens, seq_len, num_train, num_val, 1000, "")


def rows(batches):
    return [tuple(r.tolist()) for inputs, _ in batches for r in inputs]


def test_ranks_read_disjoint_batches_covering_the_global_batch():
    c = corpus_fixture()
    one = data.TrainBatches(c, 8, 2, 0, 1, seed=3)
    two = [data.TrainBatches(c, 8, 2, r, 2, seed=3) for r in range(2)]
    for step in range(12):  # crosses an epoch boundary (40 sequences / 8 per step)
        per_rank = [rows(b.micro_batches(step)) for b in two]
        assert not set(per_rank[0]) & set(per_rank[1])
        assert sorted(per_rank[0] + per_rank[1]) == sorted(rows(one.micro_batches(step)))


def test_batches_are_a_function_of_the_step_and_targets_shift():
    c = corpus_fixture()
    a, b = data.TrainBatches(c, 8, 4, 0, 1, seed=1), data.TrainBatches(c, 8, 4, 0, 1, seed=1)
    for step in (7, 0, 3):
        for (xa, ya), (xb, yb) in zip(a.micro_batches(step), b.micro_batches(step)):
            assert xa.equal(xb) and ya.equal(yb)
            assert xa[:, 1:].equal(ya[:, :-1])
    train_rows = {r for s in range(5) for r in rows(a.micro_batches(s))}
    val_rows = {tuple(r.tolist()) for x, _ in data.val_batches(c, 2, 3, 0, 1) for r in x}
    assert val_rows and not train_rows & val_rows


def test_builtin_corpus_is_offline_prose():
    docs = corpus.builtin_documents()
    first = [next(docs) for _ in range(50)]
    assert all(len(d) >= 120 for d in first)
    assert sum(d.count(" ") for d in first) > 1000


CODE = "def f(x):\n    if x:\n        return  x  # two spaces\n\treturn None"
PROSE = "A paragraph that runs\nover several lines,\n  one of them indented.\nNumbers 12345 and 3.14 too."


def test_text_documents_are_paragraphs_with_newlines_kept(tmp_path):
    source = tmp_path / "mixed.txt"
    source.write_text(f"{PROSE}\n\n{CODE}\n \t\n\n{PROSE}\n")  # a whitespace-only line also separates
    assert list(corpus.documents(cfg_for(tmp_path, source))) == [PROSE, CODE, PROSE]
    assert list(corpus.documents(cfg_for(tmp_path, source, text_documents="file"))) == [
        f"{PROSE}\n\n{CODE}\n \t\n\n{PROSE}"
    ]


def test_round_trip_keeps_code_and_paragraphs(tmp_path):
    """decode(encode(text)) == text: identity normalization, whitespace kept, byte fallback for the rest."""
    source = tmp_path / "corpus.txt"
    source.write_text("\n\n".join([CODE, PROSE] * 20 + DOCS))
    c = data.prepare(
        DataConfig(source=str(source), vocab_size=400, seq_len=16, cache_dir=str(tmp_path / "cache")),
        True,
        lambda: None,
    )
    sp = data.load_tokenizer(c.tokenizer_path)
    for text in [CODE, PROSE, "  leading and trailing  ", "naïve café 日本語 😀", "x\n\n\ny", "1234567"]:
        assert sp.decode(sp.encode(text)) == text
    assert [sp.id_to_piece(i) for i in sp.encode("1234")] == ["\u2581", "1", "2", "3", "4"]  # digits split
    tokens = np.asarray(c.tokens).tolist()
    first = tokens[: tokens.index(sp.eos_id())]
    assert sp.decode(first) == CODE


def test_a_tokenizer_without_eos_is_refused(tmp_path):
    import sentencepiece as spm

    source = write_source(tmp_path, "txt")
    spm.SentencePieceTrainer.train(
        input=str(source), model_prefix=str(tmp_path / "noeos"), vocab_size=60, eos_id=-1, minloglevel=2
    )
    cfg = cfg_for(tmp_path, source, tokenizer=str(tmp_path / "noeos.model"))
    with pytest.raises(ValueError, match=r"data.tokenizer=.* has no EOS piece"):
        data.prepare(cfg, True, lambda: None)


def test_waiting_ranks_show_the_main_ranks_progress_and_its_failure(tmp_path, monkeypatch):
    import threading

    monkeypatch.setattr(data, "WAIT_REPORT_S", 0.05)
    done, lines = tmp_path / "tokens.bin.json", []

    def main_rank():
        time.sleep(0.3)
        (tmp_path / "tokens.bin.progress").write_text("data: tokenizing x: 1.0 MB, 0.50 M tokens/s, ETA 0m09s")
        time.sleep(0.3)
        done.write_text("{}")

    threading.Thread(target=main_rank).start()
    data.wait_for(str(done), "tokenize the corpus", poll_s=0.02, log=lambda text, **k: lines.append(text))
    assert any("ETA 0m09s" in line for line in lines) and all("tokenize the corpus" in line for line in lines)

    late = tmp_path / "other.bin.json"
    threading.Timer(
        0.2, lambda: (tmp_path / "other.bin.json.failed").write_text("data.source='x' contains no text")
    ).start()
    with pytest.raises(
        ValueError, match="the main rank failed to tokenize the corpus: data.source='x' contains no text"
    ):
        data.wait_for(str(late), "tokenize the corpus", poll_s=0.02, log=lambda *a, **k: None)


def test_a_corpus_too_small_for_the_vocabulary_names_data_vocab_size(tmp_path):
    (tmp_path / "tiny.txt").write_text("hello you\n")
    cfg = DataConfig(source=str(tmp_path / "tiny.txt"), vocab_size=512, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(
        ValueError,
        match=r"^data.vocab_size=512: data.source=.*tiny.txt' is too small for it \(its text makes "
        r"at most (\d+) pieces\); set data.vocab_size<=\1 or use more text$",
    ):
        data.prepare(cfg, True, lambda: None)
    assert not list((tmp_path / "cache").glob("tokenizer-*.model"))  # nothing cached


def test_a_bad_row_met_while_training_the_tokenizer_is_named(tmp_path):
    """sentencepiece reads the rows through a callback; the row's own error comes out, not sentencepiece's."""
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"text": d}) for d in DOCS[:150]) + '\n{"text": {"nested": 1}}\n')
    with pytest.raises(
        ValueError, match=r"^data.text_field='text' of .*c.jsonl line 151 holds \{'nested': 1\} \(type dict\)"
    ):
        data.prepare(cfg_for(tmp_path, path), True, lambda: None)
    assert not list((tmp_path / "cache").glob("tokenizer-*.model"))


def test_an_unwritable_cache_dir_is_one_line(tmp_path):
    (tmp_path / "a_file").write_text("x")
    cfg = cfg_for(tmp_path, write_source(tmp_path, "txt"))
    cfg.cache_dir = str(tmp_path / "a_file" / "cache")
    with pytest.raises(ValueError, match=r"^data.cache_dir=.*a_file/cache': .*a_file is a file, not a folder"):
        data.prepare(cfg, True, lambda: None)


@contextlib.contextmanager
def read_only(path):
    """`path` read-only: a read-only bind mount as root (permission bits do not stop root), else chmod."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield
        path.chmod(0o755)
        return
    if subprocess.run(["mount", "--bind", "-o", "ro", str(path), str(path)], capture_output=True).returncode:
        pytest.skip("root without permission to mount: no folder here is read-only to us")
    try:
        yield
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=False)  # lazy: a memmap may still hold a file open


def test_a_prepared_cache_may_be_read_only_until_something_must_be_built(tmp_path):
    cfg = cfg_for(tmp_path, write_source(tmp_path, "txt"))
    first = data.prepare(cfg, True, lambda: None)
    with read_only(tmp_path / "cache"):
        again = data.prepare(cfg, True, lambda: None)  # everything is there: only reads
        assert np.array_equal(np.asarray(first.tokens), np.asarray(again.tokens))
        cfg.seq_len = 32  # another token cache entry: it must be written, and cannot be
        with pytest.raises(ValueError, match=r"^data.cache_dir=.*: cannot create folders in .*cache \("):
            data.prepare(cfg, True, lambda: None)
