"""A streamed hub source is tokenized in chunks while training: the first batch comes before the stream is
read, chunks hold exactly the serial token stream, batches are a function of the step, restarts reuse chunks."""

import time

import numpy as np
import pytest
import sentencepiece as spm

from tests.helpers import train_sentencepiece
from trainer import corpus, data, stream
from trainer.config import DataConfig

SOURCE = "some-org/some-stream"  # not a local path: a hub source, documents monkeypatched below
CHUNK = 2000


def documents(n: int, delay: float = 0.0, fail_at: int | None = None):
    for i in range(n):
        if i == fail_at:
            raise ConnectionError("the hub went away")
        if delay:
            time.sleep(delay)
        yield f"Document {i} of the stream: the quick brown fox jumps over the lazy dog {i % 17}."


@pytest.fixture(scope="module")
def sp_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("sp")
    return train_sentencepiece("\n".join(documents(300)).split("\n"), str(d / "m"))


def setup(tmp_path, monkeypatch, sp_path, **docs_kw) -> DataConfig:
    monkeypatch.setattr(corpus, "documents", lambda cfg: documents(**docs_kw))
    return DataConfig(
        source=SOURCE,
        tokenizer=sp_path,
        seq_len=16,
        stream_chunk_tokens=CHUNK,
        num_workers=1,
        cache_dir=str(tmp_path / "cache"),
    )


def reference(sp_path: str, n: int) -> np.ndarray:
    sp = spm.SentencePieceProcessor(model_file=sp_path)
    return np.array([t for doc in documents(n) for t in sp.encode(doc) + [sp.eos_id()]], dtype=np.uint16)


def test_training_starts_before_the_stream_is_read(tmp_path, monkeypatch, sp_path):
    cfg = setup(tmp_path, monkeypatch, sp_path, n=20_000, delay=0.002)  # 40 s of stream
    start = time.perf_counter()
    c = data.prepare(cfg, True, lambda: None)
    try:
        assert time.perf_counter() - start < 15 and not stream.read_state(c.base)["done"]
        batches = data.TrainBatches(c, 8, 4, 0, 1, seed=0)
        steps_per_chunk = (c.seqs_per_chunk - c.num_val) // 8
        for step in (0, steps_per_chunk + 1):  # the second needs chunk 1, which the producer writes meanwhile
            assert [x.shape for x, _ in batches.micro_batches(step)] == [(4, 16), (4, 16)]
        ref = reference(sp_path, 2000)
        for k in range(stream.read_state(c.base)["num_chunks"]):
            assert np.array_equal(
                np.fromfile(stream.chunk_path(c.base, k), dtype=np.uint16), ref[k * CHUNK : (k + 1) * CHUNK]
            )
    finally:
        c.producer.stop()
        c.producer.join()


def test_a_finished_stream_wraps_with_batches_a_function_of_the_step(tmp_path, monkeypatch, sp_path):
    cfg = setup(tmp_path, monkeypatch, sp_path, n=400)
    c = data.prepare(cfg, True, lambda: None)
    c.producer.join()
    state = stream.read_state(c.base)
    assert state["done"] and state["num_chunks"] >= 3 and state["last_tokens"] < CHUNK
    total = c._total_train()
    indices = [c.train_index(s, 0) for s in range(total)]
    val = {c.val_index(j) for j in range(c.num_val)}
    assert len(set(indices)) == total and not set(indices) & val  # an epoch is a permutation of the training sequences
    assert [c.train_index(s + total, 0) for s in range(total)] == indices  # then it wraps around
    other = data.prepare(cfg, True, lambda: None)  # complete on disk: no producer, same batches
    assert other.producer is None
    for step in (0, 7, 1000):
        for (xa, _), (xb, _) in zip(
            data.TrainBatches(c, 8, 4, 0, 1, 0).micro_batches(step),
            data.TrainBatches(other, 8, 4, 0, 1, 0).micro_batches(step),
        ):
            assert xa.equal(xb)


def test_a_restart_writes_only_the_missing_chunks(tmp_path, monkeypatch, sp_path):
    cfg = setup(tmp_path, monkeypatch, sp_path, n=400)
    base = stream.base_path(cfg, str(tmp_path / "cache" / "tokens-x"))
    (tmp_path / "cache").mkdir()
    stop = __import__("threading").Event()
    written = []
    write = stream._write_chunk

    def write_then_stop(base_, k, tokens, state):
        write(base_, k, tokens, state)
        written.append(k)
        if k == 1 and len(written) == 2:
            stop.set()  # the first run stops after two chunks

    monkeypatch.setattr(stream, "_write_chunk", write_then_stop)
    stream.produce(cfg, sp_path, base, 1, stop=stop, log=lambda *a, **k: None)
    assert written == [0, 1] and not stream.read_state(base)["done"]
    stream.produce(cfg, sp_path, base, 1, log=lambda *a, **k: None)
    assert written[:3] == [0, 1, 2] and stream.read_state(base)["done"]
    chunks = [
        np.fromfile(stream.chunk_path(base, k), dtype=np.uint16) for k in range(stream.read_state(base)["num_chunks"])
    ]
    assert np.array_equal(np.concatenate(chunks), reference(sp_path, 400))


def test_a_failing_stream_stops_the_waiting_ranks(tmp_path, monkeypatch, sp_path):
    cfg = setup(tmp_path, monkeypatch, sp_path, n=10_000, fail_at=500)
    c = data.prepare(cfg, True, lambda: None)
    with pytest.raises(ValueError, match="stream producer on the main rank failed: ConnectionError: the hub went away"):
        data.TrainBatches(c, 8, 4, 0, 1, seed=0).micro_batches(10_000)
