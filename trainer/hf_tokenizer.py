"""A run's sentencepiece model as Hugging Face tokenizer files that tokenize exactly as sentencepiece does.

    tokenizer.model          the sentencepiece model itself
    tokenizer.json           the same vocabulary for the `tokenizers` library, written here without it
    tokenizer_config.json    PreTrainedTokenizerFast over tokenizer.json, special tokens, no BOS added

Why not transformers' own LlamaTokenizer conversion: its Metaspace pre-tokenizer adds the dummy-prefix
space only when the text does not already start with one, sentencepiece always adds it, so any text that
begins with spaces (indented code) gets different ids. Here the dummy prefix is a `Prepend` normalizer,
as in transformers' legacy Llama converter, and spaces become U+2581 before the model sees them.
`split_special_tokens` keeps literal "<s>" / "</s>" in the text as text, as sentencepiece does.
No BOS is added: the project trains on documents joined by EOS, without BOS.
"""

from __future__ import annotations

import json
import os
import shutil

from sentencepiece import sentencepiece_model_pb2

SPACE = "\u2581"
PIECE_NORMAL, PIECE_UNKNOWN, PIECE_CONTROL, PIECE_USER_DEFINED, PIECE_UNUSED, PIECE_BYTE = 1, 2, 3, 4, 5, 6
NEVER_IN_TEXT = (PIECE_UNKNOWN, PIECE_CONTROL, PIECE_UNUSED, PIECE_BYTE)  # sentencepiece never matches these in text
UNREACHABLE = -1e9  # a unigram score no segmentation through normal pieces can fall below
MODEL_UNIGRAM, MODEL_BPE = 1, 2


def load_proto(path: str) -> sentencepiece_model_pb2.ModelProto:
    proto = sentencepiece_model_pb2.ModelProto()
    with open(path, "rb") as f:
        proto.ParseFromString(f.read())
    return proto


def bpe_merges(vocab: dict[str, int], mergeable: set[str] | None = None) -> list[list[str]]:
    """sentencepiece BPE merges by priority: every split of a piece into two pieces, ranked by the merged
    piece's id (its score order), ties by the parts' ids (transformers' SentencePieceExtractor).
    mergeable: the pieces text may merge into (default all)."""
    merges = []
    for piece, piece_id in vocab.items():
        if mergeable is not None and piece not in mergeable:
            continue
        splits = [(piece[:i], piece[i:]) for i in range(1, len(piece)) if piece[:i] in vocab and piece[i:] in vocab]
        splits.sort(key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
        merges.extend((piece_id, left, right) for left, right in splits)
    merges.sort(key=lambda m: m[0])
    return [[left, right] for _, left, right in merges]


def _normalizer(proto) -> dict | None:
    spec, steps = proto.normalizer_spec, []
    if spec.precompiled_charsmap:  # nmt_nfkc and friends: the exact same character map
        import base64

        steps.append(
            {"type": "Precompiled", "precompiled_charsmap": base64.b64encode(spec.precompiled_charsmap).decode()}
        )
    if spec.remove_extra_whitespaces:
        steps += [
            {"type": "Strip", "strip_left": True, "strip_right": True},
            {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},
        ]
    if spec.add_dummy_prefix:
        steps.append({"type": "Prepend", "prepend": SPACE})
    steps.append({"type": "Replace", "pattern": {"String": " "}, "content": SPACE})
    return {"type": "Sequence", "normalizers": steps}


def _model(proto, vocab: dict[str, int]) -> dict:
    unk, byte_fallback = proto.trainer_spec.unk_id, proto.trainer_spec.byte_fallback
    if proto.trainer_spec.model_type == MODEL_BPE:
        return {
            "type": "BPE",
            "dropout": None,
            "unk_token": proto.pieces[unk].piece,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": byte_fallback,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": bpe_merges(vocab, {p.piece for p in proto.pieces if p.type not in NEVER_IN_TEXT}),
        }
    if proto.trainer_spec.model_type == MODEL_UNIGRAM:
        # tokenizers' lattice would match "<s>" or "<0x41>" in text, unless they cost more than any other path
        return {
            "type": "Unigram",
            "unk_id": unk,
            "byte_fallback": byte_fallback,
            "vocab": [[p.piece, UNREACHABLE if p.type in NEVER_IN_TEXT else p.score] for p in proto.pieces],
        }
    raise ValueError(
        f"sentencepiece model type {proto.trainer_spec.model_type} cannot be exported; use a BPE or unigram tokenizer"
    )


def tokenizer_json(proto) -> dict:
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    special = [
        {
            "id": i,
            "content": p.piece,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, p in enumerate(proto.pieces)
        if p.type in (PIECE_UNKNOWN, PIECE_CONTROL)
    ]
    decoders = [
        {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
    ]
    if proto.normalizer_spec.add_dummy_prefix:  # sentencepiece drops the dummy prefix when decoding
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": special,
        "normalizer": _normalizer(proto),
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": _model(proto, vocab),
    }


def tokenizer_config(proto, max_length: int) -> dict:
    spec = proto.trainer_spec

    def piece(i):
        return proto.pieces[i].piece if 0 <= i < len(proto.pieces) else None

    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": piece(spec.bos_id),
        "eos_token": piece(spec.eos_id),
        "unk_token": piece(spec.unk_id),
        "pad_token": piece(spec.pad_id),
        "model_max_length": max_length,
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
    }


def write_tokenizer(model_path: str, out_dir: str, max_length: int) -> dict:
    """Write the three tokenizer files into out_dir; returns the special token ids (for config.json)."""
    proto = load_proto(model_path)
    shutil.copyfile(model_path, os.path.join(out_dir, "tokenizer.model"))
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_json(proto), f, ensure_ascii=False)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config(proto, max_length), f, indent=2)
    spec = proto.trainer_spec
    return {
        "bos_token_id": spec.bos_id if spec.bos_id >= 0 else None,
        "eos_token_id": spec.eos_id if spec.eos_id >= 0 else None,
        "pad_token_id": spec.pad_id if spec.pad_id >= 0 else None,
    }
