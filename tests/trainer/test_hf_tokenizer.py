"""The written tokenizer.json tokenizes and decodes exactly as sentencepiece, for BPE and unigram models."""

import json

import pytest
import sentencepiece as spm

from tests.helpers import train_sentencepiece
from trainer import corpus, hf_tokenizer
from trainer.config import DataConfig

transformers = pytest.importorskip("transformers", reason="transformers is in the dev extra: pip install -e '.[dev]'")

TRICKY = [
    "def f(x):\n    return  x",
    "  two leading",
    "x  ",
    "",
    " ",
    "\n",
    "1234567 digits",
    "tab\there",
    "<s> literal specials </s> <unk> <0x41>",
    "naïve café 日本語 😀",
    "\u2581 the space symbol",
]


def train(tmp_path, model_type: str, **options) -> str:
    docs = corpus.documents(DataConfig())
    lines = [line for _, doc in zip(range(300), docs) for line in doc.splitlines() if line.strip()]
    return train_sentencepiece(lines, str(tmp_path / model_type), 600, model_type, **options)


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_hf_ids_equal_sentencepiece(tmp_path, model_type):
    path = train(
        tmp_path,
        model_type,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
    )
    out = tmp_path / "hf"
    out.mkdir()
    ids = hf_tokenizer.write_tokenizer(path, str(out), 128)
    assert ids == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None}
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    sp = spm.SentencePieceProcessor(model_file=path)
    docs = corpus.documents(DataConfig())
    for text in TRICKY + [next(docs)[:300] for _ in range(300)]:
        assert tok(text)["input_ids"] == sp.encode(text), text
        assert tok.decode(sp.encode(text)) == sp.decode(sp.encode(text)), text
    assert json.loads((out / "tokenizer_config.json").read_text())["eos_token"] == "</s>"


def test_bpe_merges_rank_by_the_merged_piece():
    vocab = {"a": 0, "b": 1, "c": 2, "bc": 3, "ab": 4, "abc": 5}
    assert hf_tokenizer.bpe_merges(vocab) == [["b", "c"], ["a", "b"], ["a", "bc"], ["ab", "c"]]
