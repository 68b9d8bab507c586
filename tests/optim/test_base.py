"""optim/base.py: the step inside backward, 8-bit and bf16 moments, pure-bf16 weights, exact state round trips.

The reference for a step inside backward is the same optimizer stepping after backward (it must give the
same bits); the reference for 8-bit and bf16 states is the same optimizer with fp32 states.
"""

import copy

import pytest
import torch

import optim  # noqa: F401  (registers the optimizers)
import param  # noqa: F401  (registers the param strategies)
from models import Llama, shape_for
from trainer import precision
from trainer.memtrack import LocalOps  # the engine's Ops at ZeRO-0, without DeepSpeed
from trainer.registry import OPTIM, PARAM
from trainer.strategy import BuildContext

VOCAB, SEQ = 128, 16


def build(param_name: str, optim_name: str, mode: str = "fp32", **optim_fields):
    torch.manual_seed(0)
    model = Llama(shape_for("debug"), VOCAB, SEQ)
    ctx = BuildContext(model_size="debug")
    PARAM.build(param_name, PARAM.make_config({"name": param_name}), ctx).convert(model)
    precision.prepare_model(model, mode)
    opt = OPTIM.build(optim_name, OPTIM.make_config({"name": optim_name, "lr": 3e-3, **optim_fields}), model, ctx)
    return model, opt


def batches(num_steps: int, accumulation: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randint(0, VOCAB, (2, SEQ + 1), generator=g) for _ in range(accumulation)] for _ in range(num_steps)]


def train(model, opt, data) -> list[float]:
    """The trainer's step at world size 1: accumulate, then step (a step-in-backward optimizer steps in the hooks)."""
    losses = []
    for micro in data:
        for i, tokens in enumerate(micro):
            if getattr(opt, "steps_in_backward", False):
                opt.prepare_backward(i == len(micro) - 1)
            logits = model(tokens[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
            (loss / len(micro)).backward()
            losses.append(float(loss.detach()))
        opt.step()
        opt.zero_grad(set_to_none=True)
    return losses


def assert_same_weights(a, b):
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("accumulation", [1, 2])
@pytest.mark.parametrize(
    "param_name,optim_name",
    [("full", "adamw"), ("full", "dct_adamw"), ("sltrain", "adamw"), ("sst", "adamw"), ("full", "galore_adamw")],
)
def test_step_in_backward_gives_the_same_weights(param_name, optim_name, accumulation):
    data = batches(6, accumulation)
    ref_model, ref_opt = build(param_name, optim_name)
    model, opt = build(param_name, optim_name, step_in_backward=True)
    assert opt.steps_in_backward
    train(ref_model, ref_opt, data)
    train(model, opt, data)
    assert_same_weights(model, ref_model)  # bitwise, fp32


@pytest.mark.parametrize("state_dtype", ["bf16", "int8"])
def test_step_in_backward_gives_the_same_weights_with_low_precision(state_dtype):
    data = batches(4, 2)
    ref_model, ref_opt = build("full", "adamw", "pure_bf16", state_dtype=state_dtype)
    model, opt = build("full", "adamw", "pure_bf16", state_dtype=state_dtype, step_in_backward=True)
    train(ref_model, ref_opt, data)
    train(model, opt, data)
    assert_same_weights(model, ref_model)  # stochastic rounding is seeded by (parameter, step): same bits


def test_no_gradient_outlives_the_boundary_backward():
    model, opt = build("full", "adamw", step_in_backward=True)
    before = copy.deepcopy(model.state_dict())
    data = batches(1, 2)[0]
    opt.prepare_backward(False)
    torch.nn.functional.cross_entropy(model(data[0][:, :-1]).flatten(0, 1), data[0][:, 1:].flatten()).backward()
    assert all(p.grad is not None for p in model.parameters())  # accumulating: nothing stepped yet (GaLore #78)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    opt.prepare_backward(True)
    torch.nn.functional.cross_entropy(model(data[1][:, :-1]).flatten(0, 1), data[1][:, 1:].flatten()).backward()
    assert all(p.grad is None for p in model.parameters())  # each freed in its hook
    assert not torch.equal(model.embed.weight, before["embed.weight"])
    assert opt.last_grad_norm > 0


def test_int8_adamw_tracks_fp32_adamw_over_50_steps():
    """Tolerance: the 8-bit run's loss stays within 2% of the fp32 run's at every step after the first 5, and its
    final weights within 5% relative distance (bitsandbytes reports 8-bit Adam matching 32-bit on LM losses)."""
    data = (batches(4, 1) * 13)[:50]  # four batches seen again and again: the loss has somewhere to go
    ref_model, ref_opt = build("full", "adamw")
    model, opt = build("full", "adamw", state_dtype="int8")
    ref, ours = train(ref_model, ref_opt, data), train(model, opt, data)
    assert ours[-1] < ours[0] - 0.5  # it trains
    worst = max(abs(a - b) / b for a, b in zip(ours[5:], ref[5:]))
    assert worst < 0.02, worst
    num = sum((a - b).float().norm() ** 2 for a, b in zip(model.parameters(), ref_model.parameters())) ** 0.5
    den = sum(b.float().norm() ** 2 for b in ref_model.parameters()) ** 0.5
    assert num / den < 0.05


def test_int8_state_is_a_quarter_of_fp32_state():
    data = batches(1, 1)
    ref_model, ref_opt = build("full", "adamw")
    model, opt = build("full", "adamw", state_dtype="int8")
    train(ref_model, ref_opt, data)
    train(model, opt, data)
    nbytes = lambda o: sum(v.numel() * v.element_size() for s in o.state.values() for k, v in s.items() if k != "step")  # noqa: E731
    assert nbytes(opt) / nbytes(ref_opt) == pytest.approx(0.25 * (1 + 4 / 256), rel=0.02)  # + one fp32 absmax per 256


@pytest.mark.parametrize("optim_name", ["adamw", "dct_adamw"])
@pytest.mark.parametrize("mode,state_dtype", [("fp32", "int8"), ("pure_bf16", "fp32"), ("pure_bf16", "int8")])
def test_state_round_trip_continues_bitwise(optim_name, mode, state_dtype):
    """save -> load into a fresh optimizer -> step gives the same bits as never stopping (torch would cast the
    fp32 moments of a bf16 weight to bf16 on load, and int8 codes to floats)."""
    data = batches(6, 1)
    ref_model, ref_opt = build("full", optim_name, mode, state_dtype=state_dtype, step_in_backward=True)
    train(ref_model, ref_opt, data)
    model, opt = build("full", optim_name, mode, state_dtype=state_dtype, step_in_backward=True)
    train(model, opt, data[:3])
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    model, opt = build("full", optim_name, mode, state_dtype=state_dtype, step_in_backward=True)
    model.load_state_dict(saved_model)
    opt.load_state_dict(saved_opt)
    dtypes = {k: v.dtype for s in saved_opt["state"].values() for k, v in s.items()}
    assert all(v.dtype == dtypes[k] for s in opt.state.values() for k, v in s.items())
    train(model, opt, data[3:])
    assert_same_weights(model, ref_model)


def test_pure_bf16_holds_weights_in_bf16_and_keeps_rotary_tables_fp32():
    model, opt = build("full", "adamw", "pure_bf16")
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.rope_cos.dtype == torch.float32
    train(model, opt, batches(2, 1))
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_stochastic_rounding_keeps_updates_that_nearest_rounding_loses():
    """A bf16 weight of 1.0 cannot move by less than 2^-8 with round-to-nearest: many small steps are all lost."""
    results = {}
    for sr in (False, True):
        w = torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))
        holder = torch.nn.Module()
        holder.w = w
        opt = OPTIM.build(
            "adamw",
            OPTIM.make_config({"name": "adamw", "lr": 1e-4, "stochastic_rounding": sr}),
            holder,
            BuildContext(model_size="debug"),
        )
        for _ in range(20):
            w.grad = torch.ones_like(w)
            opt.step()
        results[sr] = float(w.float().mean())
    assert results[False] == 1.0  # every 1e-4 step rounded away
    assert results[True] == pytest.approx(1 - 20 * 1e-4, abs=2e-4)  # unbiased: the mean moved as in fp32


def test_hooks_see_the_learning_rate_set_after_a_load():
    """load_state_dict replaces the param-group dicts; a hook holding the old dict would step with a stale lr."""
    model, opt = build("full", "adamw", step_in_backward=True)
    train(model, opt, batches(1, 1))
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    for group in opt.param_groups:
        group["lr"] = 0.0  # what the LR schedule does before every step
    before = copy.deepcopy(model.state_dict())
    train(model, opt, batches(1, 1, seed=2))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_sst_resamples_and_resets_work_with_the_step_in_backward():
    """SST's hook (unit columns, resample every 2 steps, reset of the resampled block's state) after hook updates."""

    def run(sib):
        torch.manual_seed(0)
        model = Llama(shape_for("debug"), VOCAB, SEQ)
        ctx = BuildContext(model_size="debug")
        sst = PARAM.build("sst", PARAM.make_config({"name": "sst", "rank": 4, "update_every": 2}), ctx)
        sst.convert(model)
        opt = OPTIM.build(
            "adamw", OPTIM.make_config({"name": "adamw", "lr": 3e-3, "step_in_backward": sib}), model, ctx
        )
        for step, micro in enumerate(batches(6, 2), start=1):
            train(model, opt, [micro])
            sst.on_step_end(step, LocalOps(opt))
        return model, sst

    ref, ref_sst = run(False)
    ours, ours_sst = run(True)
    assert ours_sst.num_resamples == ref_sst.num_resamples == 3
    assert_same_weights(ours, ref)
    for (name, a), (_, b) in zip(ours.named_buffers(), ref.named_buffers()):
        assert torch.equal(a, b), name  # the same columns drawn and frozen


@pytest.mark.parametrize("optim_name", ["adamw_int8", "dct_adamw", "galore_adamw"])
def test_a_step_inside_an_autocast_region_is_the_fp32_step(optim_name):
    """An optimizer step (or a backward hook) that runs inside autocast must not compute its update in bf16:
    benchmarks/gpu.py stepped under autocast and the low-rank update failed on mixed dtypes (seen on an H200)."""
    name, extra = ("adamw", {"state_dtype": "int8"}) if optim_name == "adamw_int8" else (optim_name, {})
    torch.manual_seed(0)
    model = Llama(shape_for("debug"), vocab_size=64, max_seq_len=16)
    twin = copy.deepcopy(model)
    opts = [
        OPTIM.build(name, OPTIM.make_config({"name": name, **extra}), m, BuildContext(model_size="debug"))
        for m in (model, twin)
    ]
    for _ in range(3):
        for m in (model, twin):
            for p in m.parameters():
                p.grad = torch.cos(torch.arange(p.numel(), dtype=torch.float32)).view_as(p)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            opts[0].step()
        opts[1].step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
