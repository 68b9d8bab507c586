"""The run-directory fault table: it runs train.py for real and asserts that nothing is lost: every file an
earlier run left is still there byte for byte, and the run's own newest checkpoint is the one the next start resumes.
"""

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import FAST, ROOT, cache_dir, run_train, train_env
from tests.trainer.test_rundir import contents, previous_dirs
from trainer import checkpoint, manifest

EARLIER = ["train.steps=4", "train.save_every=1"]  # an earlier run that leaves step_3 and step_4 (keep_last=2)
AGAIN = ["train.steps=6", "train.save_every=1"]  # a run whose first steps are below the earlier run's


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("earlier")
    run_train(base, EARLIER, name="x")
    return base / "runs" / "x"


def used_directory(tmp_path, earlier_run) -> Path:
    run_dir = tmp_path / "runs" / "x"
    shutil.copytree(earlier_run, run_dir)
    return run_dir


def steps(run_dir: Path) -> list[int]:
    return [s for s, _ in manifest.list_checkpoints(str(run_dir / "checkpoints"))]


def resumed_by_next_start(run_dir: Path) -> str | None:
    """What the next start picks (the same call train.py makes, every byte checked)."""
    return checkpoint.find_resume(str(run_dir / "checkpoints"), "auto", lambda message: None)


def one_error_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:])
    return lines[0]


def assert_kept_aside(run_dir: Path, earlier: dict) -> None:
    [previous] = previous_dirs(run_dir)
    assert contents(previous) == earlier


def case_resume_never_in_a_used_directory(tmp_path, earlier_run):
    """The issue's command: a new run's checkpoints were pruned in favour of the earlier run's step_3/4."""
    run_dir = used_directory(tmp_path, earlier_run)
    earlier = contents(run_dir)
    proc = run_train(tmp_path, [*AGAIN, "train.resume=never", "train.stop_at=2"], name="x", check=False)
    assert proc.returncode == 75, proc.stderr[-3000:]
    assert steps(run_dir) == [2, 1]
    assert_kept_aside(run_dir, earlier)
    again = run_train(tmp_path, [*AGAIN, "train.stop_at=3"], name="x", check=False)
    assert again.returncode == 75 and "resumed from" in again.stdout and "step_0000002 at step 2" in again.stdout, (
        again.stdout
    )


def case_every_checkpoint_corrupt(tmp_path, earlier_run):
    run_dir = used_directory(tmp_path, earlier_run)
    for step in (3, 4):
        os.truncate(run_dir / "checkpoints" / f"step_{step:07d}" / "trainer.pt", 1)
    earlier = contents(run_dir)
    proc = run_train(tmp_path, [*AGAIN, "train.stop_at=2"], name="x", check=False)
    assert proc.returncode == 75 and proc.stdout.count("is corrupt") == 2, proc.stdout[-3000:]
    assert steps(run_dir) == [2, 1] and resumed_by_next_start(run_dir).endswith("step_0000002")
    assert_kept_aside(run_dir, earlier)  # corrupt checkpoints are kept too: never deleted


def case_two_runs_with_one_name(tmp_path, earlier_run):
    """A real second process while the first one runs: it stops, names the holder, and touches nothing."""
    run_dir = tmp_path / "runs" / "x"
    args = [
        *FAST,
        f"run.out_dir={tmp_path / 'runs'}",
        "run.name=x",
        f"data.cache_dir={cache_dir(tmp_path)}",
        "train.steps=1000000",
        "train.save_every=1000000",
    ]
    with open(tmp_path / "first.out", "w") as out:
        first = subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=train_env(), stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 300
        while "step 0:" not in (tmp_path / "first.out").read_text():
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.out").read_text()[-3000:]
            time.sleep(0.2)
        second = subprocess.run(
            [sys.executable, str(ROOT / "train.py"), *args, "train.steps=20"],
            cwd=ROOT,
            env=train_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )  # a few steps: ends soon if let in
        error = one_error_line(second)
        assert f"pid {first.pid}@" in error and str(run_dir) in error, error
    finally:
        first.send_signal(signal.SIGTERM)  # the first one stops as on preemption: a checkpoint, exit 75
        code = first.wait(timeout=300)
    assert code == 75, (tmp_path / "first.out").read_text()[-3000:]
    assert not (run_dir / ".lock").exists() and not previous_dirs(run_dir)  # released on the exit-75 path
    records = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [int(line.split('"step": ')[1].split(",")[0]) for line in records]
    assert logged == list(range(len(logged))) and resumed_by_next_start(run_dir).endswith(f"step_{logged[-1]:07d}")


def case_disk_full_simulated(tmp_path, earlier_run):
    """ENOSPC on every write of step 6's checkpoint files (full_disk_train.py): one line, step 4 and 5 kept."""
    run_dir = used_directory(tmp_path, earlier_run)
    step_4 = contents(run_dir / "checkpoints" / "step_0000004")
    args = [
        *FAST,
        f"run.out_dir={tmp_path / 'runs'}",
        "run.name=x",
        f"data.cache_dir={cache_dir(tmp_path)}",
        "train.steps=8",
        "train.save_every=1",
    ]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "trainer" / "full_disk_train.py"), "6", *args],
        cwd=ROOT,
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    error = one_error_line(proc)
    assert error.startswith("error: disk full") and str(run_dir / "checkpoints" / ".tmp-step_0000006") in error, error
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["step_0000004", "step_0000005"]  # nothing half-written
    assert contents(run_dir / "checkpoints" / "step_0000004") == step_4 and not (run_dir / ".lock").exists()
    assert resumed_by_next_start(run_dir).endswith("step_0000005")  # (the tmpfs case reruns for real)


def tmpfs_unavailable(mount_point: Path) -> str | None:
    """Why this test cannot mount a small tmpfs (a user and mount namespace: `unshare -rm`), or None."""
    if shutil.which("unshare") is None:
        return "no unshare command to mount a tmpfs without root"
    mount_point.mkdir(parents=True, exist_ok=True)
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m none {shlex.quote(str(mount_point))}"],
        capture_output=True,
        text=True,
    )
    return None if probe.returncode == 0 else f"cannot mount a tmpfs here (unshare -rm: {probe.stderr.strip()[:200]})"


METRICS_ON_A_FULL_DISK = """
import sys
from trainer.config import LogConfig
from trainer.metrics import MetricsLog
log = MetricsLog(sys.argv[1], LogConfig(wandb="disabled", progress="lines"), True, 10, {}, "x")
try:
    log.log(1, {"train/loss": 1.0})
except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
"""


def case_disk_full_on_a_small_tmpfs(tmp_path, earlier_run):
    """A real 3 MiB disk: one checkpoint fits, the second does not; then the disk is filled to the last byte."""
    disk, snap, logs = tmp_path / "disk", tmp_path / "snapshot", tmp_path / "logs"
    if reason := tmpfs_unavailable(disk):
        pytest.skip(reason)
    logs.mkdir()
    args = [
        *FAST,
        f"run.out_dir={disk}",
        "run.name=x",
        f"data.cache_dir={cache_dir(tmp_path)}",
        "train.steps=4",
        "train.save_every=1",
        "train.keep_last=3",
    ]
    train = " ".join(shlex.quote(a) for a in [sys.executable, str(ROOT / "train.py"), *args])
    q = {k: shlex.quote(str(v)) for k, v in dict(disk=disk, snap=snap, logs=logs, py=sys.executable).items()}
    script = f"""mount -t tmpfs -o size=3m none {q["disk"]} || exit 99
        {train} >{q["logs"]}/1.out 2>{q["logs"]}/1.err; echo $? >{q["logs"]}/1.rc; cp -a {q["disk"]} {q["snap"]}
        {train} >{q["logs"]}/2.out 2>{q["logs"]}/2.err; echo $? >{q["logs"]}/2.rc
        mkdir {q["disk"]}/m; dd if=/dev/zero of={q["disk"]}/filler bs=4096 2>/dev/null
        {train} >{q["logs"]}/3.out 2>{q["logs"]}/3.err; echo $? >{q["logs"]}/3.rc
        {q["py"]} -c {shlex.quote(METRICS_ON_A_FULL_DISK)} {q["disk"]}/m 2>{q["logs"]}/4.err; echo $? >{q["logs"]}/4.rc
        rm {q["disk"]}/filler; cp -a {q["disk"]} {q["snap"]}-after"""
    subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=ROOT, env=train_env(), timeout=600, check=True)
    result = {
        n: subprocess.CompletedProcess(
            [],
            int((logs / f"{n}.rc").read_text()),
            (logs / f"{n}.out").read_text() if n < 4 else "",
            (logs / f"{n}.err").read_text(),
        )
        for n in (1, 2, 3, 4)
    }
    step_2 = str(disk / "x" / "checkpoints" / ".tmp-step_0000002")
    assert step_2 in one_error_line(result[1]) and "disk full" in one_error_line(result[1])
    assert step_2 in one_error_line(result[2]) and "resumed from" in result[2].stdout  # the rerun: the same line
    assert "disk full" in one_error_line(result[3]) and str(disk / "x" / ".lock") in one_error_line(result[3])
    assert "disk full" in one_error_line(result[4]) and "metrics.jsonl" in one_error_line(result[4])
    run_dir = snap / "x"
    assert os.listdir(run_dir / "checkpoints") == ["step_0000001"] and not (run_dir / ".lock").exists()
    assert manifest.verify(str(run_dir / "checkpoints" / "step_0000001")) is None
    assert contents(run_dir / "checkpoints") == contents(tmp_path / "snapshot-after" / "x" / "checkpoints")


FAULTS = {
    f.__name__[len("case_") :]: f
    for f in (
        case_resume_never_in_a_used_directory,
        case_every_checkpoint_corrupt,
        case_two_runs_with_one_name,
        case_disk_full_simulated,
        case_disk_full_on_a_small_tmpfs,
    )
}


@pytest.mark.parametrize("fault", FAULTS)
def test_nothing_is_lost(tmp_path, earlier_run, fault):
    FAULTS[fault](tmp_path, earlier_run)
