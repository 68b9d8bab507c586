"""train.compile: each block compiled whole (custom autograd functions included), same keys, same numbers."""

import copy

import pytest
import torch

import param  # noqa: F401  (registers the param strategies)
from models import Llama, shape_for
from trainer.compile import maybe_compile
from trainer.registry import PARAM
from trainer.strategy import BuildContext


def converted(name: str) -> Llama:
    torch.manual_seed(0)
    model = Llama(shape_for("debug"), vocab_size=97, max_seq_len=16)
    PARAM.build(name, PARAM.make_config({"name": name}), BuildContext(model_size="debug")).convert(model)
    return model


def forward_backward(model, tokens, autocast: bool):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(tokens)
    logits.float().square().mean().backward()
    return logits.float().detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("name", ["full", "sltrain", "sst"])
def test_compiled_blocks_trace_whole_and_match_eager(name, autocast):
    # aot_eager: Dynamo's whole-graph capture and AOT autograd as inductor gets them, without its slow C++ build.
    torch._dynamo.reset()
    eager = converted(name)
    compiled = copy.deepcopy(eager)
    maybe_compile(compiled, False)
    assert all(block._compiled_call_impl is None for block in compiled.layers)
    maybe_compile(compiled, True, backend="aot_eager")  # fullgraph=True: a graph break would raise
    assert list(compiled.state_dict()) == list(eager.state_dict())
    tokens = torch.randint(0, 97, (2, 16))
    ours, our_grads = forward_backward(compiled, tokens, autocast)
    ref, ref_grads = forward_backward(eager, tokens, autocast)
    assert all(block._compiled_call_impl is not None for block in compiled.layers)
    tol = {"atol": 2e-2, "rtol": 2e-2} if autocast else {"atol": 1e-5, "rtol": 1e-4}
    torch.testing.assert_close(ours, ref, **tol)
    assert our_grads.keys() == ref_grads.keys()
    for key in ref_grads:
        torch.testing.assert_close(our_grads[key], ref_grads[key], **tol, msg=key)
