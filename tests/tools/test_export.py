"""Every param strategy's checkpoint exports to a plain LLaMA, and to a transformers directory, that compute
the same function as the model as trained; the exported tokenizer gives sentencepiece's ids."""

import json

import pytest
import sentencepiece as spm
import torch

from tests.helpers import run_train
from tools import export
from trainer import corpus, hf_export
from trainer.config import DataConfig
from trainer.registry import PARAM

transformers = pytest.importorskip("transformers", reason="transformers is in the dev extra: pip install -e '.[dev]'")


def checkpoint_of(tmp_path, step: int):
    return tmp_path / "runs" / "run" / "checkpoints" / f"step_{step:07d}"


@pytest.mark.parametrize("name", PARAM.names())
def test_export_matches_the_trained_model(tmp_path, name):
    run_train(tmp_path, [f"param={name}", "train.steps=3"])
    ckpt = checkpoint_of(tmp_path, 3)
    model, _, _ = export.load_converted(str(ckpt))
    dense, plain = export.export_dense(str(ckpt))
    assert all(".weight" in k or k.endswith("inv_freq") for k in dense)
    tokens = torch.randint(0, model.embed.weight.shape[0], (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = model(tokens), plain(tokens)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert export.main([str(ckpt), "--format", "pt", "--out", str(tmp_path / "dense.pt")]) == 0
    assert set(torch.load(tmp_path / "dense.pt")) == set(dense)


def corpus_sample(num_docs: int = 200) -> list[str]:
    docs = corpus.documents(DataConfig())
    return [next(docs) for _ in range(num_docs)] + [
        "def f(x):\n    return  x",
        "  leading spaces",
        "trailing  ",
        "",
        " ",
        "\n\ntabs\tand 12345 digits",
        "literal <s> and </s> and <unk>",
        "unicode: naïve café 日本語 😀",
        "\u2581 the space symbol itself",
    ]


@pytest.mark.parametrize("name", ["full", "sltrain", "sst"])
def test_hf_export_loads_with_transformers_and_matches(tmp_path, name):
    """Acceptance: 30 CPU steps, then only AutoModelForCausalLM / AutoTokenizer; logits within 1e-4 (fp32),
    the tokenizer's ids equal sentencepiece's on a corpus sample."""
    run_train(tmp_path, [f"param={name}", "train.steps=30"])
    ckpt, out = checkpoint_of(tmp_path, 30), tmp_path / "hf"
    assert export.main([str(ckpt), "--out", str(out)]) == 0
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    sp = spm.SentencePieceProcessor(model_file=str(ckpt / "tokenizer.model"))
    sample = corpus_sample()
    for text in sample:
        assert hf_tok(text)["input_ids"] == sp.encode(text), text
        assert hf_tok.decode(sp.encode(text)) == sp.decode(sp.encode(text)), text
    ids = torch.tensor([sp.encode("\n\n".join(sample))[:96], sp.encode(sample[1])[:96]])
    model, _, _ = export.load_converted(str(ckpt))
    with torch.no_grad():
        expected, got = model(ids), hf_model(ids).logits
    assert hf_model.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is False and config["rms_norm_eps"] == model.norm.eps
    assert config["eos_token_id"] == sp.eos_id() == hf_tok.eos_token_id


def test_without_the_rotary_permutation_logits_differ(tmp_path, monkeypatch):
    """The permutation is what makes the logits agree (the check above can fail)."""
    run_train(tmp_path, ["train.steps=30"])
    monkeypatch.setattr(hf_export, "permute_rotary", lambda w, num_heads: w)
    export.write_hf(str(checkpoint_of(tmp_path, 30)), str(tmp_path / "hf"))
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"))
    model, _, _ = export.load_converted(str(checkpoint_of(tmp_path, 30)))
    ids = torch.randint(0, model.vocab_size, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(ids) - hf_model(ids).logits).abs().max() > 1e-2


def test_pure_bf16_exports_bf16_in_shards(tmp_path):
    run_train(tmp_path, ["param=sltrain", "train.steps=2", "train.precision=pure_bf16"])
    out = tmp_path / "hf"
    assert export.main([str(checkpoint_of(tmp_path, 2)), "--out", str(out), "--max-shard-size", "100KB"]) == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and not (out / "model.safetensors").exists()
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    assert hf_model.dtype == torch.bfloat16
    model, _, _ = export.load_converted(str(checkpoint_of(tmp_path, 2)))
    ids = torch.randint(0, model.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf_model(ids).logits.float(), model(ids), rtol=0, atol=0.1)  # bf16 weights


def test_export_refuses_a_damaged_checkpoint(tmp_path, capsys):
    run_train(tmp_path, ["train.steps=2"])
    ckpt = checkpoint_of(tmp_path, 2)
    (ckpt / "trainer.pt").write_bytes(b"oops")
    assert export.main([str(ckpt)]) == 2
    assert "is not usable" in capsys.readouterr().err
