"""The memory estimator's stand-in for galore-torch's 8-bit GaLore (GaLoreAdamW8bit, on bitsandbytes kernels that
fail under FakeTensorMode) is `optim=galore_adamw optim.state_dtype=int8`: its state must hold as many bytes."""

import pytest
import torch

import optim  # noqa: F401
from models import Llama, shape_for
from trainer.registry import OPTIM
from trainer.strategy import BuildContext


def state_bytes(opt) -> int:
    """Every tensor an optimizer keeps per parameter, GaLore's projector matrix (a Python object in its state)
    included."""
    total = 0
    for state in opt.state.values():
        for value in state.values():
            tensor = getattr(value, "ortho_matrix", value)
            if torch.is_tensor(tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def two_steps(model, opt):
    for seed in range(2):
        g = torch.Generator().manual_seed(seed)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()


def test_int8_galore_adamw_holds_the_state_bytes_of_galore_torch_8bit(monkeypatch):
    pytest.importorskip("bitsandbytes")
    galore = pytest.importorskip("galore_torch")
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)  # GaLoreAdamW8bit syncs CUDA after each step
    torch.manual_seed(0)
    ours_model, peer_model = Llama(shape_for("20m"), 1000, 64), Llama(shape_for("20m"), 1000, 64)
    cfg = OPTIM.make_config({"name": "galore_adamw", "state_dtype": "int8"})
    ours = OPTIM.build("galore_adamw", cfg, ours_model, BuildContext(model_size="20m"))
    dense = [p for g in ours.param_groups if not g["projected"] for p in g["params"]]
    projected = [p for g in ours.param_groups if g["projected"] for p in g["params"]]
    by_id = dict(zip(map(id, ours_model.parameters()), peer_model.parameters()))
    peer = galore.GaLoreAdamW8bit(
        [
            {"params": [by_id[id(p)] for p in dense]},
            {
                "params": [by_id[id(p)] for p in projected],
                "rank": 96,
                "update_proj_gap": 200,
                "scale": 0.25,
                "proj_type": "std",
            },
        ],
        lr=0.01,
    )
    two_steps(ours_model, ours)
    two_steps(peer_model, peer)
    ratio = state_bytes(ours) / state_bytes(peer)
    print(f"ours/peer state bytes {ratio:.4f}")
    assert ratio == pytest.approx(1.0, abs=0.02), (
        ratio
    )  # peer: + a 256-entry map per moment, 32-bit state under 4096 values
