"""A new method needs no edit in trainer/: register a toy strategy of each kind here and train with it."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import pytest
import torch
import torch.distributed as dist
from torch import nn

from models import projection_modules
from tests.helpers import FAST, compose, metrics
from trainer.registry import AGG, OPTIM, PARAM
from trainer.strategy import Aggregator, BuildContext, ParamStrategy


class GainLinear(nn.Module):
    """y = gain * (x W^T): a weight-side method that adds one trainable scalar per layer."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight = linear.weight
        self.gain = nn.Parameter(torch.ones(1))  # DeepSpeed cannot broadcast 0-dim parameters

    def forward(self, x):
        return self.gain * nn.functional.linear(x, self.weight)


@dataclass
class ToyParamConfig:
    name: str = "toy_param"


class ToyParam(ParamStrategy):
    def __init__(self, cfg, ctx: BuildContext):
        self.calls = 0

    def convert(self, model):
        for _, parent, attr, linear in list(projection_modules(model)):
            setattr(parent, attr, GainLinear(linear))

    def on_step_end(self, step, ops):
        self.calls += 1
        assert step == self.calls + self.resumed_at

    resumed_at = 0

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.resumed_at = state["calls"]


@dataclass
class ToyOptimConfig:
    name: str = "toy_sgd"
    lr: float = 1.0
    momentum: float = 0.9


class ToySGD(torch.optim.Optimizer):
    """Heavy-ball SGD in the torch.optim layout (state holds tensors only)."""

    def __init__(self, params, lr, momentum):
        super().__init__(params, {"lr": lr, "momentum": momentum})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(p.grad)
                p.add_(buf, alpha=-group["lr"])


@dataclass
class ToyAggConfig:
    name: str = "toy_mean"


class ToyMean(Aggregator):
    """Averages gradients itself (the engine's all-reduce is off) and reports a metric."""

    uses_engine_allreduce = False

    def __init__(self, cfg, ctx: BuildContext):
        self.world_size, self.calls = ctx.world_size, 0

    def aggregate(self, grads, step):
        self.calls += 1
        for g in grads:
            if dist.is_initialized() and self.world_size > 1:
                dist.all_reduce(g)
            g.div_(self.world_size)
        return {"agg/toy_calls": float(self.calls)}


@pytest.fixture
def toy_strategies():
    built = {}

    def keep(kind, obj):
        built[kind] = obj
        return obj

    PARAM.register("toy_param", ToyParamConfig)(lambda cfg, ctx: keep("param", ToyParam(cfg, ctx)))
    OPTIM.register("toy_sgd", ToyOptimConfig)(
        lambda cfg, model, ctx: keep(
            "optim", ToySGD([p for p in model.parameters() if p.requires_grad], cfg.lr, cfg.momentum)
        )
    )
    AGG.register("toy_mean", ToyAggConfig)(lambda cfg, ctx: keep("agg", ToyMean(cfg, ctx)))
    yield built
    for registry, name in ((PARAM, "toy_param"), (OPTIM, "toy_sgd"), (AGG, "toy_mean")):
        registry.unregister(name)


def test_toy_strategies_train_without_trainer_edits(tmp_path, toy_strategies, monkeypatch):
    import train

    monkeypatch.setenv("WANDB_SILENT", "true")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "")  # train.run exports these in this process; teardown removes them
        monkeypatch.delenv(key)
    cache = os.environ.get("SLIMTRAIN_TEST_CACHE", str(tmp_path / "cache"))
    overrides = [
        *FAST,
        "param=toy_param",
        "optim=toy_sgd",
        "agg=toy_mean",
        "train.steps=12",
        "train.eval_every=6",
        f"run.out_dir={tmp_path / 'runs'}",
        "run.name=run",
        f"data.cache_dir={cache}",
        "log.wandb=offline",
    ]
    assert train.run(compose(overrides)) == 0

    assert toy_strategies["param"].calls == 12
    assert toy_strategies["agg"].calls == 12
    assert isinstance(toy_strategies["optim"], ToySGD) and toy_strategies["optim"].state  # it really stepped
    records = metrics(tmp_path)
    vals = [r["val/loss"] for r in records if "val/loss" in r]
    assert vals[-1] < vals[0] - 0.5, vals
    assert records[0]["params/trainable"] == records[0]["params/total"]
    assert any(r.get("agg/toy_calls") == 12.0 for r in records)
    assert sum(1 for r in records if "train/loss" in r) == 12

    # wandb offline: a run directory holding the logged metrics and the resolved config
    wandb_root = tmp_path / "runs" / "run" / "wandb"
    runs = list(wandb_root.glob("offline-run-*"))
    assert len(runs) == 1, list(wandb_root.iterdir())
    run_id = (tmp_path / "runs" / "run" / "wandb_id.txt").read_text().strip()
    assert run_id in runs[0].name
    records_file = runs[0] / f"run-{run_id}.wandb"
    deadline = time.time() + 30  # wandb's service process may still be flushing after finish()
    while b"val/loss" not in records_file.read_bytes() and time.time() < deadline:
        time.sleep(0.5)
    history = records_file.read_bytes()
    assert b"train/loss" in history and b"val/loss" in history and b"agg/toy_calls" in history
    assert b'"name":"toy_param"' in history and b'"name":"toy_sgd"' in history and b'"global_batch_size":8' in history
