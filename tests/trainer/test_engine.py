"""The engine's collectives on every backend, and its per-stage accounting."""

import pytest
import torch
import torch.distributed as dist

from launch.env import DistEnv
from trainer import dist as tdist


def backend_init_picks(monkeypatch, device: torch.device) -> str:
    """The backend string init_distributed hands DeepSpeed for this device (nothing is started)."""
    seen = {}
    monkeypatch.setattr(tdist.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(tdist, "export_torch_env", lambda env: None)
    monkeypatch.setattr(
        tdist.deepspeed, "init_distributed", lambda dist_backend, **kw: seen.setdefault("backend", dist_backend)
    )
    tdist.init_distributed(DistEnv(0, 0, 2, "127.0.0.1", 29500, "torchrun", None), device)
    return seen["backend"]


def served(backend: str) -> set[str]:
    """Reference: the device types each `device:backend` pair (or bare nccl / gloo) serves."""
    bare = {"nccl": "cuda", "gloo": "cpu"}
    return {pair.split(":")[0] if ":" in pair else bare[pair] for pair in backend.split(",")}


class Recorder:
    """Stands in for torch.distributed in a 2-rank world whose default group has `backend`; records the
    device of every tensor a collective receives and whether the backend serves that device."""

    def __init__(self, monkeypatch, backend: str):
        self.backend, self.served, self.calls = backend, served(backend), []
        for name, value in {
            "is_initialized": lambda: True,
            "get_world_size": lambda group=None: 2,
            "get_rank": lambda group=None: 0,
            "get_backend": lambda group=None: backend,
        }.items():
            monkeypatch.setattr(dist, name, value)
        monkeypatch.setattr(dist, "all_reduce", lambda t, op=None, group=None: self.record("all_reduce", t.device.type))
        for name in ("broadcast_object_list", "gather_object", "all_gather_object"):
            monkeypatch.setattr(
                dist, name, lambda *a, _name=name, device=None, **kw: self.record(_name, self.object_device(device))
            )
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    def object_device(self, device) -> str:
        # torch's rule (_get_object_coll_device): the given device, else cpu when the group serves it
        if device is not None:
            return torch.device(device).type
        return "cpu" if "cpu" in self.served else sorted(self.served)[0]

    def record(self, name: str, device_type: str) -> None:
        self.calls.append((name, device_type, device_type in self.served))


def run_every_collective() -> None:
    tdist.all_reduce_max(1.0)
    tdist.all_reduce_sum([1.0, 2.0])
    tdist.broadcast_object("path")
    tdist.gather_object({"a": 1})
    tdist.all_gather_object(None)


def run_the_loop_collectives() -> None:
    """The three the training loop has always used (an older engine has only these)."""
    tdist.all_reduce_max(1.0)
    tdist.all_reduce_sum([1.0, 2.0])
    tdist.broadcast_object("path")


def test_collectives_on_a_gpu_run_only_reach_devices_their_backend_serves(monkeypatch):
    # Fails on an engine that creates an `nccl` group and then all-reduces CPU tensors through it.
    backend = backend_init_picks(monkeypatch, torch.device("cuda", 0))
    recorder = Recorder(monkeypatch, backend)
    run_the_loop_collectives()
    assert len(recorder.calls) == 3
    assert all(ok for _, _, ok in recorder.calls), (backend, recorder.calls)
    run_every_collective()
    assert all(ok for _, _, ok in recorder.calls), (backend, recorder.calls)


def test_collectives_on_a_cpu_run_use_gloo(monkeypatch):
    backend = backend_init_picks(monkeypatch, torch.device("cpu"))
    assert served(backend) == {"cpu"}
    recorder = Recorder(monkeypatch, backend)
    run_every_collective()
    assert all(device == "cpu" and ok for _, device, ok in recorder.calls), recorder.calls


@pytest.mark.parametrize(
    "backend, device",
    [("nccl", torch.device("cuda", 0)), ("cpu:gloo,cuda:nccl", torch.device("cpu")), ("gloo", torch.device("cpu"))],
)
def test_host_values_go_where_the_group_serves_them(monkeypatch, backend, device):
    """A group someone else created with `nccl` alone gets its scalars on the GPU instead."""
    monkeypatch.setattr(dist, "get_backend", lambda group=None: backend)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert tdist.collective_device() == device


@pytest.mark.parametrize(
    "backend, devices",
    [("nccl", {"cuda"}), ("gloo", {"cpu"}), ("cpu:gloo", {"cpu"}), ("cpu:gloo,cuda:nccl", {"cpu", "cuda"})],
)
def test_served_devices(backend, devices):
    assert tdist.served_devices(backend) == served(backend) == devices


# --- one meaning of "reset optimizer state" at every ZeRO stage ---------------------------------------
def _updates_after_reset(rank: int, stage: int, steps_before: int = 3, steps_after: int = 2) -> list[torch.Tensor]:
    """The target parameter's updates at the steps after its reset; every stage sees the same data."""
    import os

    import deepspeed
    from torch import nn

    from trainer.engine import Ops

    os.environ["LOCAL_RANK"] = str(rank)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 5, bias=False), nn.Linear(5, 3), nn.Linear(3, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    config = {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": stage}}
    ds, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config, dist_init_required=False)
    data = torch.Generator().manual_seed(1 + rank)
    target, updates = model[1].weight, []  # 15 elements: straddles the two ranks' ZeRO partitions
    for step in range(steps_before + steps_after):
        if step == steps_before:
            Ops(ds, optimizer).reset_optimizer_state([target])
        before = target.detach().clone()
        ds.backward(ds(torch.randn(2, 7, generator=data)).square().sum())
        ds.step()
        updates.append(target.detach() - before)
    return updates[steps_before:]


def _reset_stages_worker(rank, world_size):
    zero0 = _updates_after_reset(rank, 0)
    for stage in (1, 2):
        for step, (got, want) in enumerate(zip(_updates_after_reset(rank, stage), zero0)):
            torch.testing.assert_close(
                got,
                want,
                rtol=1e-5,
                atol=1e-7,
                msg=lambda m, stage=stage, step=step: f"ZeRO-{stage}, update {step + 1} after the reset: {m}",
            )


@pytest.mark.slow
def test_first_updates_after_a_reset_agree_at_every_zero_stage():
    from tests.helpers import run_distributed

    run_distributed(_reset_stages_worker, 2)


# --- gradient bytes per ZeRO stage, against the gradient tensors DeepSpeed really holds -----------------
class GradientCensus:
    """Reference: snapshots of the distinct storages holding gradients (model .grad and DeepSpeed's own
    buffers) after every parameter's gradient hook, inside the boundary reduce, and before the client step;
    reduce-bucket storages are counted apart."""

    def __init__(self, ds, model, optimizer):
        self.ds, self.model, self.grads, self.buckets = ds, model, [0], [0]
        for p in model.parameters():
            p.register_post_accumulate_grad_hook(lambda p: self.snapshot())
        optimizer.register_step_pre_hook(lambda *a: self.snapshot())
        zero = ds.optimizer
        if ds.zero_optimization_stage() > 0:
            copy = zero.copy_grads_in_partition
            zero.copy_grads_in_partition = lambda *a, **kw: (copy(*a, **kw), self.snapshot())

    def snapshot(self) -> None:
        zero, tensors = self.ds.optimizer, [p.grad for p in self.model.parameters()]
        buckets = {}
        if self.ds.zero_optimization_stage() > 0:
            tensors += [zero.grads_in_partition, *[p.grad for p in zero.single_partition_of_fp32_groups]]
            for lists in (zero.averaged_gradients, zero.all_grad_tensors):
                tensors += [t for v in lists.values() for t in (v or [])]
            buckets = {
                t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for b in zero.ipg_buckets.values()
                for t in b.buffer
            }
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if t is not None}
        self.grads.append(sum(n for ptr, n in storages.items() if ptr not in buckets))
        self.buckets.append(sum(buckets.values()))


def _grad_bytes_worker(rank, world_size, stages, bucket):
    import os

    import deepspeed
    from torch import nn

    from trainer.engine import Engine

    os.environ["LOCAL_RANK"] = str(rank)
    for stage in stages:
        torch.manual_seed(0)
        model = nn.Sequential(*[nn.Linear(32, 32, bias=False) for _ in range(6)], nn.Linear(32, 8))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=False)
        zero = {"stage": stage, **({"reduce_bucket_size": bucket} if bucket else {})}
        config = {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 2, "zero_optimization": zero}
        engine = Engine.__new__(Engine)  # only the accounting: no Config needed
        engine.ds, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=config, dist_init_required=False
        )
        census = GradientCensus(engine.ds, model, optimizer)
        for _ in range(2):  # gradient accumulation: 2 micro-batches per step
            engine.ds.backward(engine.ds(torch.randn(2, 32)).square().sum())
            engine.ds.step()
        # A gradient autograd has just produced may still sit in its own storage while a bucket is reduced.
        in_flight = max(p.numel() * p.element_size() for p in model.parameters())
        assert engine.grad_bytes() <= max(census.grads) <= engine.grad_bytes() + in_flight, (
            stage,
            engine.grad_bytes(),
            census.grads,
        )
        assert engine.grad_bucket_bytes() == max(census.buckets), (
            stage,
            engine.grad_bucket_bytes(),
            max(census.buckets),
        )


@pytest.mark.slow
@pytest.mark.parametrize("bucket", [0, 4096])
def test_grad_bytes_per_zero_stage_match_the_tensors_deepspeed_holds(bucket):
    from tests.helpers import run_distributed

    run_distributed(_grad_bytes_worker, 2, (0, 1, 2), bucket)
