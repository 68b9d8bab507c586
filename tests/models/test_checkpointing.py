"""Activation checkpointing: same gradients bit for bit, less activation memory, same state-dict keys."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.distributed._tools.mem_tracker import MemTracker
from torch.nn import functional as F

import param  # noqa: F401  (registers the param strategies)
from models import LLAMA_SIZES, Llama, apply_activation_checkpointing
from trainer.registry import PARAM
from trainer.strategy import BuildContext

VOCAB = 61
# SST needs rank <= hidden (64 at debug); 8 keeps its factors small, as tests/param/test_sst.py does.
PARAM_OVERRIDES = {"full": {}, "sltrain": {}, "sst": {"rank": 8}}


def build(param_name: str, shape=LLAMA_SIZES["debug"], seq_len: int = 32) -> Llama:
    """A seeded model converted by `param_name` (`full`: left dense), fp32 on CPU."""
    torch.manual_seed(0)
    model = Llama(shape, VOCAB, seq_len)
    cfg = PARAM.make_config({"name": param_name, **PARAM_OVERRIDES[param_name]})
    PARAM.build(param_name, cfg, BuildContext(model_size="debug")).convert(model)
    return model


def loss_of(model: Llama, tokens: torch.Tensor) -> torch.Tensor:
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())


def grads(model: Llama, tokens: torch.Tensor) -> tuple[dict[str, torch.Tensor], int]:
    """Every parameter's gradient, and how many times block bodies ran (a recomputed block runs twice)."""
    calls = []
    for block in model.layers:
        block.attn.register_forward_hook(lambda *_: calls.append(1))
    loss_of(model, tokens).backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, len(calls)


@pytest.mark.parametrize("mode", ["full", "selective"])
@pytest.mark.parametrize("param_name", ["full", "sltrain", "sst"])
def test_gradients_bitwise_equal(param_name, mode):
    tokens = torch.randint(0, VOCAB, (2, 17), generator=torch.Generator().manual_seed(1))
    reference, plain_calls = grads(build(param_name), tokens)
    model = build(param_name)
    apply_activation_checkpointing(model, mode)
    checkpointed, calls = grads(model, tokens)
    num_checkpointed = sum(block.checkpointed for block in model.layers)
    assert num_checkpointed == {"full": 2, "selective": 1}[mode]
    assert (plain_calls, calls) == (2, 2 + num_checkpointed)  # the checkpointed blocks really ran again
    assert reference.keys() == checkpointed.keys()
    assert len(reference) > 0
    for name, grad in reference.items():
        assert torch.equal(grad, checkpointed[name]), name


def test_modes_mark_the_documented_blocks():
    model = Llama(dataclasses.replace(LLAMA_SIZES["debug"], num_layers=5), VOCAB, 8)
    for mode, expected in [
        ("full", [True] * 5),
        ("selective", [True, False, True, False, True]),
        ("none", [False] * 5),
    ]:
        apply_activation_checkpointing(model, mode)
        assert [block.checkpointed for block in model.layers] == expected, mode


def peak_activation_bytes(mode: str) -> int:
    """Activation bytes at the tracked peak of one forward + backward (6 debug-width blocks, 4 x 256 tokens)."""
    torch.manual_seed(0)
    model = Llama(dataclasses.replace(LLAMA_SIZES["debug"], num_layers=6), VOCAB, 256)
    apply_activation_checkpointing(model, mode)
    tokens = torch.randint(0, VOCAB, (4, 257), generator=torch.Generator().manual_seed(1))
    tracker = MemTracker()
    tracker.track_external(model)
    with tracker:
        loss_of(model, tokens).backward()
    (snapshot,) = tracker.get_tracker_snapshot("peak").values()
    return snapshot["Activation"]


def test_checkpointing_saves_activation_memory():
    full, selective, none = (peak_activation_bytes(mode) for mode in ("full", "selective", "none"))
    assert full < selective < none
    # Each skipped block saves far more than its input; a weak check that the flag really took effect.
    assert selective < 0.7 * none


def test_state_dict_keys_unchanged():
    plain = build("sltrain").state_dict().keys()
    model = build("sltrain")
    apply_activation_checkpointing(model, "full")
    assert list(model.state_dict().keys()) == list(plain)


def test_unknown_mode_is_one_line():
    model = build("full")
    with pytest.raises(ValueError, match=r"^unknown train.activation_checkpointing='every'; choose one of"):
        apply_activation_checkpointing(model, "every")


def test_no_grad_forward_skips_checkpoint(monkeypatch):
    # Evaluation under no_grad has no backward to recompute for: it must not go through checkpoint at all.
    import models.llama

    def refuse(*args, **kwargs):
        raise AssertionError("checkpoint called under no_grad")

    model = build("full")
    apply_activation_checkpointing(model, "full")
    monkeypatch.setattr(models.llama, "checkpoint", refuse)
    with torch.no_grad():
        model(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(AssertionError, match="under no_grad"):
        model(torch.zeros(1, 5, dtype=torch.long))
