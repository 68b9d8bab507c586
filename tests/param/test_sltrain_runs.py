"""SLTrain end to end through train.py: resume and ZeRO stages across processes."""

import shutil

import torch

from tests.helpers import losses_by_step, metrics, run_train
from tests.param.test_sltrain import convert_debug


# --- end to end: 2 processes, ZeRO-2, gradient accumulation 2 ------------------------------------------
def test_zero2_two_process_resume_is_bitwise_exact(tmp_path):
    steps = ["param=sltrain", "train.zero_stage=2", "train.steps=8", "train.save_every=4"]
    run_train(tmp_path, steps, nproc=2, name="straight")
    straight = losses_by_step(metrics(tmp_path, "straight"))
    assert sorted(straight) == list(range(1, 9))

    # "Interrupted at step 4": a copy of the run with only the step-4 checkpoint and no metrics.
    runs = tmp_path / "runs"
    shutil.copytree(runs / "straight", runs / "resumed")
    shutil.rmtree(runs / "resumed" / "checkpoints" / "step_0000008")
    (runs / "resumed" / "metrics.jsonl").unlink()
    proc = run_train(tmp_path, [*steps, "train.resume=auto"], nproc=2, name="resumed")
    assert "resumed from" in proc.stdout + proc.stderr
    resumed = losses_by_step(metrics(tmp_path, "resumed"))
    assert sorted(resumed) == [5, 6, 7, 8]
    assert all(resumed[s] == straight[s] for s in resumed), (resumed, straight)

    # The checkpoint holds each layer's support, equal to what a fresh conversion draws.
    states = torch.load(
        next((runs / "straight" / "checkpoints" / "step_0000004").rglob("*model_states.pt")),
        map_location="cpu",
        weights_only=False,
    )["module"]
    _, fresh = convert_debug(seed=0, global_seed=0)
    for name, layer in fresh.layers.items():
        assert torch.equal(states[f"{name}.support"], layer.support)


def test_zero1_two_process_matches_zero0_one_process(tmp_path):
    run_train(tmp_path, ["param=sltrain", "train.zero_stage=1", "train.steps=4"], nproc=2, name="z1")
    run_train(tmp_path, ["param=sltrain", "train.zero_stage=0", "train.steps=4"], nproc=1, name="z0")
    z1, z0 = losses_by_step(metrics(tmp_path, "z1")), losses_by_step(metrics(tmp_path, "z0"))
    assert sorted(z1) == sorted(z0) == [1, 2, 3, 4]
    assert all(abs(z1[s] - z0[s]) <= 1e-4 * abs(z0[s]) for s in z0), (z1, z0)
    assert z0[4] < z0[1]
