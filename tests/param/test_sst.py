"""SST: the spectral layer against dense U diag(sigma) V^T, swaps and re-SVDs that keep W (runs: test_sst_runs.py)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from models import Llama, projection_modules, shape_for
from param.sst import SST, SpectralLinear, SSTConfig, sample_columns, spectral_weight, svd_factors
from trainer.strategy import BuildContext


def debug_model(seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    return Llama(shape_for("debug"), vocab_size=128, max_seq_len=32)


def converted(rank: int = 8, **overrides) -> tuple[Llama, Llama, SST]:
    dense = debug_model()
    model = copy.deepcopy(dense)
    sst = SST(SSTConfig(rank=rank, **overrides), BuildContext(model_size="debug"))
    sst.convert(model)
    return dense, model, sst


class RecordingOps:
    """EngineOps for a plain torch optimizer (what the engine does under ZeRO-0)."""

    def __init__(self, optimizer):
        self.optimizer, self.reset, self.changed = optimizer, [], []

    def reset_optimizer_state(self, params):
        self.reset += params
        for p in params:
            self.optimizer.state.pop(p, None)

    def params_changed(self, params):
        self.changed += params


def dense_reference(layer: SpectralLinear) -> torch.Tensor:
    """U diag(sigma) V^T from the full factors, by the definition."""
    u, v = layer.full_factors()
    return u @ torch.diag(layer.sigma.detach()) @ v.T


def perturb(layer: SpectralLinear, seed: int = 1) -> None:
    """Move the factors off their SVD (as training does), keeping sigma >= 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.u_active.add_(0.1 * torch.randn(layer.u_active.shape, generator=g))
        layer.v_active.add_(0.1 * torch.randn(layer.v_active.shape, generator=g))
        layer.sigma.mul_(1 + 0.2 * torch.rand(layer.k, generator=g))


# --- acceptance 1: function, layer output, swaps, re-SVD, gradients ------------------------------------
def test_init_logits_equal_dense():
    dense, model, sst = converted()
    tokens = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    assert len(sst.layers) == 2 * 7 and all(isinstance(m, SpectralLinear) for _, _, _, m in projection_modules(model))
    torch.testing.assert_close(model(tokens), dense(tokens), atol=1e-5, rtol=0)


def test_layer_output_is_u_sigma_vt_x():
    _, _, sst = converted()
    layer = sst.layers[4][1]  # gate_proj: 176 x 64, k = 64
    perturb(layer)
    x = torch.randn(3, 5, layer.in_features)
    torch.testing.assert_close(layer(x), x @ dense_reference(layer).T, atol=1e-5, rtol=1e-5)


def test_only_active_columns_and_sigma_train():
    _, model, sst = converted()
    layer = sst.layers[0][1]
    assert [n for n, _ in layer.named_parameters()] == ["u_active", "v_active", "sigma"]
    assert layer.u_active.shape == (64, 8) and layer.u_frozen.shape == (64, 56)
    model(torch.randint(0, 128, (2, 8))).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
    assert all(not b.requires_grad and b.grad is None for b in model.buffers())


@pytest.mark.parametrize("enhanced", [False, True])
def test_gradients_match_autograd_reference(enhanced):
    _, _, sst = converted(enhanced_grad=enhanced, grad_eps=0.05)
    layer = sst.layers[6][1]  # down_proj: 64 x 176
    perturb(layer)
    with torch.no_grad():
        layer.sigma[layer.active_idx[0]] = 0.01  # below grad_eps: the enhanced scale is sigma / eps there
    x = torch.randn(2, 7, layer.in_features, requires_grad=True)
    dy = torch.randn(2, 7, layer.out_features)
    (layer(x) * dy).sum().backward()

    u_a, v_a, sigma = (t.detach().clone().requires_grad_() for t in (layer.u_active, layer.v_active, layer.sigma))
    x_ref = x.detach().clone().requires_grad_()
    w = spectral_weight(u_a, v_a, sigma, layer.u_frozen, layer.v_frozen, layer.active_idx, layer.frozen_idx)
    ((x_ref @ w.T) * dy).sum().backward()
    s_a = sigma.detach()[layer.active_idx]
    scale = 1 / s_a.clamp_min(0.05) if enhanced else torch.ones_like(s_a)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.sigma.grad, sigma.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.u_active.grad, u_a.grad * scale, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.v_active.grad, v_a.grad * scale, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")],
        ),
    ],
)
def test_bf16_autocast_matches_dense_and_keeps_fp32_grads(device):
    dense, model, _ = converted()
    dense, model = dense.to(device), model.to(device)
    tokens = torch.randint(0, 128, (2, 16), device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        ours, ref = model(tokens), dense(tokens)
    torch.testing.assert_close(ours.float(), ref.float(), atol=0.05, rtol=0)
    ours.float().sum().backward()
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters())


def test_swap_keeps_matrix_and_parameter_identity():
    _, model, sst = converted(resvd_every=1000)
    layer = sst.layers[0][1]
    perturb(layer)
    active_before = layer.active_idx.clone()
    ids = [id(p) for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 128, (2, 8))).sum().backward()
    optimizer.step()
    ops = RecordingOps(optimizer)
    with torch.no_grad():
        after_step = dense_reference(layer)
    layer.after_step = lambda: None  # isolate the swap from the post-step normalisation
    sst.cfg.update_every = 1
    sst.on_step_end(1, ops)
    torch.testing.assert_close(layer.dense_weight(), after_step, atol=1e-6, rtol=0)
    assert not torch.equal(layer.active_idx, active_before)
    assert [id(p) for p in model.parameters()] == ids
    assert layer.u_active not in optimizer.state and layer.v_active not in optimizer.state
    assert layer.sigma in optimizer.state  # sigma's state survives a plain resample
    assert set(map(id, ops.reset)) == {id(p) for _, layer in sst.layers for p in (layer.u_active, layer.v_active)}


def test_resvd_keeps_matrix_and_orthonormalises():
    _, _, sst = converted(resvd_every=1)
    layer = sst.layers[0][1]
    perturb(layer)
    before = dense_reference(layer)
    reset = sst.resample()
    u, v = layer.full_factors()
    eye = torch.eye(layer.k)
    torch.testing.assert_close(layer.dense_weight(), before, atol=1e-6, rtol=0)
    torch.testing.assert_close(u.T @ u, eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(v.T @ v, eye, atol=1e-5, rtol=0)
    assert torch.all(layer.sigma[:-1] >= layer.sigma[1:])  # positions are sorted by sigma again
    assert any(p is layer.sigma for p in reset) and sst.num_resvds == 1


def test_schedule_counts_resamples_and_resvds():
    _, model, sst = converted(rank=16, update_every=3)  # k = 64: T2 = ceil(64 / 16) = 4
    ops = RecordingOps(torch.optim.AdamW(model.parameters()))
    for step in range(1, 25):
        sst.on_step_end(step, ops)
    assert (sst.num_resamples, sst.num_resvds) == (8, 2)
    assert len(ops.changed) == 24 * 3 * 14


def test_after_step_clamps_sigma_and_normalises_active_columns():
    _, _, sst = converted()
    layer = sst.layers[2][1]
    perturb(layer)
    with torch.no_grad():
        layer.sigma[:3] = -1.0
    frozen = layer.u_frozen.clone()
    layer.after_step()
    assert layer.sigma.min() >= 0
    torch.testing.assert_close(layer.u_active.norm(dim=0), torch.ones(layer.r))
    torch.testing.assert_close(layer.v_active.norm(dim=0), torch.ones(layer.r))
    assert torch.equal(layer.u_frozen, frozen)


def test_sampler_distribution_and_determinism():
    sigma = torch.tensor([4.0, 2.0, 1.0, 1.0, 0.0])
    draws = torch.stack(
        [sample_columns(sigma, 1, 0.5, g) for g in [torch.Generator().manual_seed(0)] for _ in range(20000)]
    )
    expected = 0.5 / 5 + 0.5 * sigma / sigma.sum()
    observed = torch.bincount(draws.flatten(), minlength=5).double() / draws.numel()
    torch.testing.assert_close(observed, expected.double(), atol=0.015, rtol=0)
    a = sample_columns(sigma, 3, 0.5, torch.Generator().manual_seed(7))
    b = sample_columns(sigma, 3, 0.5, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.unique().numel() == 3
    assert 4 not in sample_columns(sigma, 4, 0.0, torch.Generator().manual_seed(1)).tolist()  # arXiv: p ~ sigma


def test_lr_rewarm():
    _, _, sst = converted(update_every=10, rewarm_steps=4)
    assert [sst.lr_factor(s) for s in (1, 10, 11, 12, 14, 15, 20, 21)] == [1, 1, 0.25, 0.5, 1, 1, 1, 0.25]


def test_export_dense_loads_into_plain_llama():
    dense, model, sst = converted()
    for _, layer in sst.layers:
        perturb(layer)
    fresh = debug_model(seed=1)
    fresh.load_state_dict(sst.export_dense(model))
    tokens = torch.randint(0, 128, (2, 16))
    torch.testing.assert_close(fresh(tokens), model(tokens), atol=1e-5, rtol=0)


def test_state_dict_round_trip_restores_sampler():
    _, _, a = converted()
    a.resample()
    _, _, b = converted()
    b.load_state_dict(a.state_dict())
    assert (b.num_resamples, b.num_resvds) == (a.num_resamples, a.num_resvds)
    sigma = torch.rand(64)
    assert torch.equal(sample_columns(sigma, 8, 0.5, a.generator), sample_columns(sigma, 8, 0.5, b.generator))


def test_bad_config_is_one_line():
    with pytest.raises(ValueError, match=r"^param.uniform_mix=2.0: must be in \[0, 1\]$"):
        SSTConfig(uniform_mix=2.0)
    with pytest.raises(ValueError, match=r"^param.rank=0: must be positive$"):
        SSTConfig(rank=0)


@pytest.mark.parametrize("size", ["debug", "20m"])
def test_rank_above_the_layers_is_refused_like_sltrain(size):
    """k = min(out, in) singular vectors per layer; r = k (every column trains) is the most, as sltrain refuses r >=
    hidden."""
    import train
    from tests.helpers import compose

    k = min(shape_for(size).hidden, shape_for(size).intermediate)
    cfg = train.load_config(compose(["param=sst", f"param.rank={k}", f"model.size={size}"]))
    if size == "debug":  # r = k builds: every column active, none frozen
        model = Llama(shape_for(size), vocab_size=32, max_seq_len=16)
        SST(cfg.param, BuildContext(model_size=size)).convert(model)
        layers = [m for m in model.modules() if isinstance(m, SpectralLinear)]
        assert layers and all(m.active_idx.numel() == k and m.frozen_idx.numel() == 0 for m in layers)
    with pytest.raises(
        ValueError,
        match=rf"^param.rank={k + 1} is above the {k} singular vectors of model.size={size}'s "
        rf"smallest layer; set param.rank to at most {k}$",
    ):
        train.load_config(compose(["param=sst", f"param.rank={k + 1}", f"model.size={size}"]))


def test_yaml_composes_to_the_dataclass_defaults():
    import train
    from tests.helpers import compose

    cfg = train.load_config(compose(["param=sst"]))
    assert cfg.param == SSTConfig()
    assert train.load_config(compose(["param=sst", "param.rank=8", "param.enhanced_grad=false"])).param.rank == 8


def test_svd_factors_sorted():
    w = torch.randn(6, 4, dtype=torch.float64)
    u, s, v = svd_factors(w, torch.float64)
    torch.testing.assert_close(u @ torch.diag(s) @ v.T, w)
    assert math.isclose(float(s[0]), float(torch.linalg.matrix_norm(w, 2)))


def test_meta_model_converts_without_allocating():
    with torch.device("meta"):
        model = Llama(shape_for("20m"), vocab_size=128, max_seq_len=32)
    sst = SST(SSTConfig(rank=8), BuildContext(model_size="20m"))
    sst.convert(model)
    tensors = list(model.parameters()) + list(model.buffers())
    assert sst.layers and all(t.device.type == "meta" for t in tensors)
    layer = sst.layers[0][1]
    assert layer.u_active.shape == (384, 8) and layer.u_frozen.shape == (384, 376)


def test_fake_resample_keeps_shapes():
    """Under FakeTensorMode (trainer/memory.py) a resample and re-SVD take the shape-only path."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        layer = SpectralLinear(12, 20, rank=4)
        sst = SST(SSTConfig(rank=4, resvd_every=1), BuildContext(model_size="debug"))
        sst.layers = [("layer", layer)]
        sst.resample()
    assert layer.active_idx.shape == (4,) and layer.frozen_idx.shape == (8,) and layer.u_frozen.shape == (20, 8)
