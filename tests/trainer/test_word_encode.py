"""Word-at-a-time encoding gives sentencepiece's ids exactly: on the project's tokenizer for random text made of
the characters where a cut could go wrong (runs of spaces at every position, tabs, newlines, unknown
characters, a literal ▁, empty and blank documents), and on a model it must not cut (encoded whole)."""

import random
import re

import numpy as np
import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as model_pb2

from trainer import data, word_encode
from trainer.config import DataConfig

TRAIN_TEXT = (
    "def f(x):\n    return  x  # two spaces\n\treturn None\n"
    "The quick brown fox, in 1999, jumped over 42 lazy dogs.\n"
    "Ünïcödé 日本語 text and  double  spaces, trailing space \n"
)


def reference(sp_path: str, docs: list[str]) -> np.ndarray:
    """One document at a time, whole: what the word path must reproduce."""
    sp = spm.SentencePieceProcessor(model_file=sp_path)
    return np.array([t for doc in docs for t in sp.encode(doc) + [sp.eos_id()]], dtype=np.uint16)


@pytest.fixture(scope="module")
def project_model(tmp_path_factory):
    """A tokenizer trained the way the project trains one (identity normalization, whitespace kept, bytes)."""
    d = tmp_path_factory.mktemp("tok")
    (d / "train.txt").write_text(TRAIN_TEXT * 50)
    cfg = DataConfig(source=str(d / "train.txt"), vocab_size=320, cache_dir=str(d / "cache"))
    path = str(d / "project.model")
    data.train_tokenizer(cfg, path)
    return path


def random_docs(rng: random.Random, num_docs: int) -> list[str]:
    alphabet = [
        "a",
        "b",
        "the",
        "fox",
        "do",
        "ne",
        " ",
        " ",
        "  ",
        "   ",
        "\t",
        "\n",
        "1",
        "42",
        ",",
        "é",
        "日本",
        "\u2581",
        "\x00",
        "\u3000",
        "Ω",
        "#",
        "\U0001f600",
    ]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randrange(12))) for _ in range(num_docs)]


def test_project_model_is_cut_at_spaces_and_ids_are_exact(project_model, monkeypatch):
    monkeypatch.setattr(word_encode, "CHECK_DOCS", 0)  # no tripwire: a wrong id must fail here, not be repaired
    encoder = word_encode.DocumentEncoder(project_model)
    assert encoder.words_sp is not None
    rng = random.Random(0)
    for _ in range(30):
        docs = random_docs(rng, 200)
        np.testing.assert_array_equal(encoder.encode(docs), reference(project_model, docs))
    docs = TRAIN_TEXT.split("\n") + ["", " ", "  x", "x  ", " \u2581 x", "x" * 5000 + " y"]
    np.testing.assert_array_equal(encoder.encode(docs), reference(project_model, docs))
    assert encoder.words_sp is not None


def test_a_normalizing_model_is_encoded_whole(tmp_path):
    (tmp_path / "t.txt").write_text(TRAIN_TEXT * 50)
    spm.SentencePieceTrainer.train(
        input=str(tmp_path / "t.txt"),
        model_prefix=str(tmp_path / "m"),
        vocab_size=340,
        model_type="bpe",
        byte_fallback=True,
        minloglevel=2,
    )  # nmt_nfkc, extra spaces removed
    path = str(tmp_path / "m.model")
    encoder = word_encode.DocumentEncoder(path)
    assert encoder.words_sp is None
    docs = random_docs(random.Random(1), 300)
    np.testing.assert_array_equal(encoder.encode(docs), reference(path, docs))


def test_model_checks(project_model):
    model = model_pb2.ModelProto()
    with open(project_model, "rb") as f:
        model.ParseFromString(f.read())
    assert word_encode.splits_at_spaces(model)
    for change in (
        lambda m: setattr(m.normalizer_spec, "remove_extra_whitespaces", True),
        lambda m: setattr(m.trainer_spec, "model_type", model_pb2.TrainerSpec.UNIGRAM),
        lambda m: setattr(m.pieces[300], "piece", "a\u2581b"),  # a piece across a cut
        lambda m: setattr(m.pieces[300], "type", model_pb2.ModelProto.SentencePiece.USER_DEFINED),
    ):
        changed = model_pb2.ModelProto()
        changed.CopyFrom(model)
        change(changed)
        assert not word_encode.splits_at_spaces(changed)


def test_tripwire_falls_back_to_whole_documents(project_model, monkeypatch):
    encoder = word_encode.DocumentEncoder(project_model)
    monkeypatch.setattr(word_encode, "words", lambda docs: [w for doc in docs for w in [*doc.split(" ")[::-1], None]])
    docs = ["one two three", "four five"] * 3
    np.testing.assert_array_equal(encoder.encode(docs), reference(project_model, docs))
    assert encoder.words_sp is None


def test_words_are_the_text_cut_before_each_space_after_a_non_space():
    """A literal ▁ counts as a space (sentencepiece sees both as ▁)."""
    rng = random.Random(0)
    for _ in range(5000):
        doc = "".join(rng.choice(["a", "b", " ", " ", "\n", "\u2581"]) for _ in range(rng.randrange(10)))
        expected = [c[1:] for c in re.findall(" +[^ ]*", " " + doc.replace("\u2581", " "))] if doc else []
        assert word_encode.words([doc]) == expected + [None], repr(doc)


def test_gather_positions_equal_a_loop():
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 5, 50)
    rows = rng.integers(0, 50, 400)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    expected = [p for r in rows for p in range(starts[r], starts[r] + lengths[r])]
    np.testing.assert_array_equal(word_encode._gather_positions(lengths, rows), expected)


def test_ids_stay_exact_when_the_word_cache_starts_afresh(project_model, monkeypatch):
    monkeypatch.setattr(word_encode, "CHECK_DOCS", 0)
    monkeypatch.setattr(word_encode, "CACHE_WORDS", 30)
    encoder = word_encode.DocumentEncoder(project_model)
    rng = random.Random(2)
    for _ in range(20):
        docs = random_docs(rng, 20)
        np.testing.assert_array_equal(encoder.encode(docs), reference(project_model, docs))
        assert len(encoder.index) <= 30 + sum(len(d) + 1 for d in docs) and len(encoder.lengths) == len(encoder.index)
