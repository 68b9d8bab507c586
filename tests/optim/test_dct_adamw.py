"""optim=dct_adamw / galore_adamw / galore_torch: configs, refusals, and real 2-process runs of the sharding."""

import shutil
import sys

import pytest
import torch

from models import Llama, projection_modules, shape_for
from optim.dct_adamw import split_params
from tests.helpers import compose, losses_by_step, metrics, run_train
from trainer.registry import OPTIM
from trainer.strategy import BuildContext


def load(overrides):
    from omegaconf import OmegaConf

    from trainer.config import resolve

    return resolve(OmegaConf.to_object(compose(overrides)))


@pytest.mark.parametrize("name", ["dct_adamw", "galore_adamw", "galore_torch"])
def test_shipped_config_composes_and_builds(name):
    cfg = load([f"optim={name}"])
    assert cfg.optim.name == name
    model = Llama(shape_for("debug"), 64, 32)
    opt = OPTIM.build(name, cfg.optim, model, BuildContext(model_size="debug"))
    dense, projected = split_params(model, name)
    assert len(projected) == 7 * shape_for("debug").num_layers
    assert sum(len(g["params"]) for g in opt.param_groups) == len(dense) + len(projected)
    model(torch.randint(0, 64, (2, 8))).sum().backward()
    opt.step()
    assert opt.state  # it stepped


@pytest.mark.parametrize(
    "overrides,fix",
    [
        (["optim=dct_adamw", "train.zero_stage=1"], "use train.zero_stage=0 optim.zero=1"),
        (["optim=dct_adamw", "train.zero_stage=2", "optim.zero=1"], "use train.zero_stage=0 optim.zero=1"),
        (["optim=galore_adamw", "train.zero_stage=2"], "use train.zero_stage=0 optim.zero=1"),
        (["optim=galore_torch", "train.zero_stage=1"], "optim=dct_adamw optim.zero=1"),
        (["optim=dct_adamw", "optim.zero=2"], "optim.zero: 2 is not 0 or 1"),
        (
            ["optim=dct_adamw", "optim.basis=random_qr", "optim.fast_dct=on"],
            "use optim.fast_dct=auto or optim.basis=dct",
        ),
        (["optim=dct_adamw", "optim.error_feedback=4bit"], "optim.error_feedback"),
    ],
)
def test_impossible_combinations_are_refused_in_one_line(overrides, fix):
    with pytest.raises(ValueError) as err:
        load(overrides)
    assert fix in str(err.value) and "\n" not in str(err.value)


def test_a_converted_projection_is_refused_not_silently_adam():
    model = Llama(shape_for("debug"), 64, 32)
    _, parent, attr, _ = next(projection_modules(model))
    setattr(parent, attr, torch.nn.Identity())  # what a weight-side param strategy might leave there
    with pytest.raises(ValueError, match="use param=full with optim=dct_adamw") as err:
        split_params(model, "dct_adamw")
    assert "\n" not in str(err.value)


def test_galore_torch_missing_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "galore_torch", None)  # makes the import fail
    cfg = load(["optim=galore_torch"])
    with pytest.raises(ValueError, match=r"pip install galore-torch==1.0"):
        OPTIM.build("galore_torch", cfg.optim, Llama(shape_for("debug"), 64, 32), BuildContext(model_size="debug"))


def test_train_py_prints_the_refusal(tmp_path):
    proc = run_train(tmp_path, ["optim=dct_adamw", "train.zero_stage=1", "train.steps=2"], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: optim=dct_adamw needs whole matrices")


def _state_bytes(path, rank):
    state = torch.load(path / f"trainer_rank{rank:05d}.pt", weights_only=False)["optimizer"]["state"]
    return sum(v.numel() * v.element_size() for s in state.values() for v in s.values()), state


def test_two_process_sharding_matches_unsharded_halves_state_and_resumes_bitwise(tmp_path):
    common = [
        "optim=dct_adamw",
        "optim.update_gap=2",
        "optim.error_feedback=int8",
        "train.steps=8",
        "train.save_every=4",
    ]
    run_train(tmp_path, common, nproc=2, name="whole")
    run_train(tmp_path, [*common, "optim.zero=1"], nproc=2, name="sharded")
    whole, sharded = metrics(tmp_path, "whole"), metrics(tmp_path, "sharded")
    a, b = losses_by_step(whole), losses_by_step(sharded)
    assert sorted(a) == list(range(1, 9)) and all(abs(a[s] - b[s]) <= 1e-6 for s in a)

    # Memory, measured: the unsharded rank holds everything; each sharded rank about half.
    total = next(r["mem/optim_state_bytes"] for r in whole if "mem/optim_state_bytes" in r)
    final = tmp_path / "runs" / "sharded" / "checkpoints" / "step_0000008"
    per_rank = [_state_bytes(final, r)[0] for r in (0, 1)]
    assert sum(per_rank) == total
    assert all(0.4 * total <= b <= 0.6 * total for b in per_rank), (per_rank, total)
    logged = next(r for r in sharded if "mem/optim_state_bytes" in r)
    assert logged["mem/optim_state_bytes"] == per_rank[0] and logged["mem/optim_state_bytes_max_rank"] == max(per_rank)

    # Resume from step 4: the same losses and bitwise the same optimizer state at step 8.
    saved = tmp_path / "step8"
    shutil.copytree(final, saved)
    shutil.rmtree(final)
    run_train(tmp_path, [*common, "optim.zero=1"], nproc=2, name="sharded")
    resumed = losses_by_step(metrics(tmp_path, "sharded"))
    assert all(resumed[s] == b[s] for s in range(5, 9))
    for rank in (0, 1):
        (_, before), (_, after) = _state_bytes(saved, rank), _state_bytes(final, rank)
        assert before.keys() == after.keys()
        for key in before:
            for name, value in before[key].items():
                assert after[key][name].dtype == value.dtype and torch.equal(after[key][name], value), (key, name)
    assert any(v.dtype == torch.int32 for s in before.values() for v in s.values())  # idx survived as int32
