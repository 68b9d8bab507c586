"""Hydra's own errors are the project's one line with exit code 2; a `-m` sweep runs every job, each in its
own run directory, and exits non-zero when one failed."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from hydra.errors import HydraException

import train
from tests.helpers import FAST, cache_dir, train_command, train_env
from trainer.cli import JobLog, sweep_run_name, swept_keys

BAD = [  # (overrides, what the one line must say)
    (["param=nope"], ["unknown param=nope", "choose one of: full, lowrank, sltrain, sst"]),
    (["optim=adamx"], ["unknown optim=adamx (did you mean optim=adamw?)", "galore_adamw"]),
    (["agg=medain"], ["unknown agg=medain (did you mean agg=median?)", "multi_krum"]),
    (["train.setps=5"], ["unknown key train.setps (did you mean train.steps?)", "valid keys of train: "]),
    (["+train.setps=5"], ["unknown key train.setps (did you mean train.steps?)", "valid keys of train: "]),
    (["++x.y=1"], ["unknown key x;", "valid keys: agg, data"]),
    (["optim.lrr=1"], ["unknown key optim.lrr for optim=adamw (did you mean optim.lr?)", "weight_decay"]),
    (["+optim.lrr=1"], ["unknown key optim.lrr for optim=adamw (did you mean optim.lr?)"]),
    (
        ["optim=galore_adamw", "optim.rnk=4"],
        ["unknown key optim.rnk for optim=galore_adamw (did you mean optim.rank?)"],
    ),
    (["train.steps=abc"], ["train.steps", "'abc'", "Integer"]),
    (["param=sltrain", "param.rank=abc"], ["param.rank", "'abc'"]),
    (["log.progress=5.5.5"], ["log.progress"]),
    (["model=debug"], ["model is a section", "model.size"]),
    (["train.steps=="], ["train.steps=="]),
    (["param.name=bogus"], ["unknown param='bogus'", "choose one of: full"]),
    (["-m", "param=full,nope"], ["unknown param=nope", "choose one of: full"]),
]


def run_main(monkeypatch, capsys, args: list[str], tmp_path) -> tuple[int, list[str]]:
    monkeypatch.setattr(sys, "argv", ["train.py", *args, f"run.out_dir={tmp_path / 'runs'}"])
    with pytest.raises(SystemExit) as e:
        train.main()
    return e.value.code, capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("args, says", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_hydra_errors_are_one_line_exit_2(monkeypatch, capsys, tmp_path, args, says):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    code, err = run_main(monkeypatch, capsys, args, tmp_path)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: ") and all(s in err[0] for s in says), err[0]
    runs = tmp_path / "runs"  # a sweep's record (runs/.sweeps) is written before Hydra checks its jobs
    assert not runs.exists() or [p.name for p in runs.iterdir()] == [".sweeps"]
    assert "HYDRA_FULL_ERROR" not in os.environ  # restored


def test_hydra_full_error_keeps_hydras_trace(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.setattr(sys, "argv", ["train.py", "param=nope"])
    with pytest.raises(HydraException):
        train.main()


def test_swept_keys():
    given = ["param=full,sltrain", "train.steps=5", "+x=range(2)", "optim.lr=choice(1,2)"]
    assert swept_keys(given) == ["param", "x", "optim.lr"]
    assert swept_keys(["train.steps=5"]) == []


@pytest.mark.parametrize(
    "base, job, swept, want",
    [
        ("default", ["param=full", "train.steps=5"], ["param"], "default-param=full"),
        (
            "exp",
            ["optim.lr=0.01", "param=sst"],
            ["param", "optim.lr"],
            "exp-param=sst,optim.lr=0.01",
        ),  # command-line order
        ("a", ["run.name=a", "param=full"], ["run.name"], "a"),
        ("a", ["run.name=a", "+param=full"], ["run.name", "param"], "a-param=full"),
        ("default", ["data.source=/x/y z.txt"], ["data.source"], "default-data.source=_x_y_z.txt"),
        ("default", ["train.steps=5"], [], "default-job3"),
        ("default", ["train.seed=" + "1" * 200], ["train.seed"], "default-job3"),
    ],
)
def test_sweep_run_name(base, job, swept, want):
    assert sweep_run_name(base, job, swept, 3) == want


@pytest.mark.parametrize(
    "codes, want", [([0], 0), ([2], 2), ([0, 0], 0), ([0, 2, 1], 2), ([75, 0], 75), ([75, 1], 1), ([], 0)]
)
def test_job_log_exit_code(codes, want):
    log = JobLog()
    for i, code in enumerate(codes):
        log.add(f"job{i}", code)
    assert log.exit_code() == want


def test_sweep_runs_every_job_in_its_own_directory(tmp_path):
    """`-m param=full,sltrain train.micro_batch_size=2,3`: four jobs, the two with micro batch 3 are bad input
    (8 is not a multiple of 3). Each good job trains in its own directory, exactly as it does alone."""
    runs, cache = tmp_path / "runs", cache_dir(tmp_path)
    common = [*FAST, "train.steps=3", f"run.out_dir={runs}", f"data.cache_dir={cache}"]
    sweep = subprocess.run(
        train_command(["-m", *common, "param=full,sltrain", "train.micro_batch_size=2,3"]),
        cwd=tmp_path,
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert sweep.returncode == 2, sweep.stderr[-3000:]
    assert "sweep: 2 of 4 job(s) finished" in sweep.stdout, sweep.stdout[-3000:]
    errors = [line for line in sweep.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and all("make it a multiple of 3" in e for e in errors) and "Traceback" not in sweep.stderr
    made = sorted(p.name for p in runs.iterdir())
    assert made == [
        ".sweeps",
        "default-param=full,train.micro_batch_size=2",
        "default-param=sltrain,train.micro_batch_size=2",
    ]
    assert list(runs.glob(".sweeps/*/multirun.yaml"))  # Hydra's sweep record; nothing in the working directory
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "outputs").exists()
    for name in made[1:]:
        assert (runs / name / "checkpoints" / "step_0000003").is_dir()
    saved = yaml.safe_load((runs / made[2] / "config.yaml").read_text())
    assert saved["param"] == {"name": "sltrain", "rank": 16, "alpha": 4.0, "delta": 0.03, "b_init": "zero"}  # resolved

    alone = subprocess.run(
        train_command(["param=sltrain", "run.name=alone", *common]),
        cwd=tmp_path,
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert alone.returncode == 0, alone.stderr[-3000:]

    def losses(name):
        records = [json.loads(line) for line in (runs / name / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]

    assert losses(made[2]) == losses("alone") and len(losses("alone")) == 3  # job 3 of a sweep = the run alone
