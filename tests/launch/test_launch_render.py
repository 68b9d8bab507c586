"""`python -m launch submit`: the rendered script for a job shape, and the script's own logic run
against stand-in srun/scontrol/scancel (no Slurm needed): what it launches, when it requeues."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from launch.__main__ import main
from launch.slurm import ROOT, TEMPLATE, SlurmJob, render, template_parts


def dry_run(capsys, *argv: str) -> str:
    assert main(["submit", "--dry-run", *argv]) == 0
    return capsys.readouterr().out


def sbatch_lines(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.startswith("#SBATCH")]


def test_four_nodes_of_eight_gpus(capsys):
    script = dry_run(
        capsys,
        "--nodes",
        "4",
        "--gpus-per-node",
        "8",
        "--partition",
        "p",
        "--time",
        "01:00:00",
        "--",
        "model.size=1b",
        "param=sltrain",
    )
    assert sbatch_lines(script) == [
        "#SBATCH --job-name=slimtrain",
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=1",  # one torchrun per node
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=64",
        "#SBATCH --time=01:00:00",
        "#SBATCH --partition=p",
        "#SBATCH --output=%x-%j.out",
        "#SBATCH --open-mode=append",  # the requeued run appends to the same log
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@300",
        f"#SBATCH --export=ALL,SLIMTRAIN_ROOT={ROOT},NPROC_PER_NODE=8",
    ]
    assert script.startswith("#!/bin/bash\n")
    # The body is the template's, untouched: the same code runs either way.
    assert (
        script.splitlines()[-len(template_parts(TEMPLATE.read_text())[1]) - 1 : -1]
        == template_parts(TEMPLATE.read_text())[1]
    )
    assert 'srun --nodes="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1' in script
    assert '--rdzv-backend=c10d --rdzv-endpoint="$HEAD_ADDR:$RDZV_PORT"' in script
    assert '"$ROOT/train.py" "$@"' in script
    assert "scontrol requeue" in script and "TORCH_NCCL_ASYNC_ERROR_HANDLING" in script
    assert script.splitlines()[-1] == "# submit with: sbatch '<this script>' model.size=1b param=sltrain"
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_cpu_job_and_config_file(capsys, tmp_path):
    config = tmp_path / "launch.yaml"
    config.write_text("nodes: 2\ngpus_per_node: 0\nnproc_per_node: 2\ncpus_per_task: 4\ntime: '10:00'\nqos: low\n")
    script = dry_run(
        capsys,
        "--config",
        str(config),
        "--time",
        "20:00",
        "--exclusive",
        "--preempt-lead",
        "60",
        "--sbatch-arg=--constraint=big",
        "--env",
        "MAX_REQUEUES=3",
    )
    lines = sbatch_lines(script)
    assert not any("gpus" in line for line in lines)
    assert {
        "#SBATCH --nodes=2",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --time=20:00",
        "#SBATCH --qos=low",
        "#SBATCH --exclusive",
        "#SBATCH --signal=B:USR1@60",
        "#SBATCH --constraint=big",
    } <= set(lines)
    assert lines[-2].endswith("NPROC_PER_NODE=2,MAX_REQUEUES=3")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--nodes", "0"], "--nodes=0"),
        (["--time", "1 hour"], "--time='1 hour'"),
        (["--gpus-per-node", "-1"], "--gpus-per-node=-1"),
        (["--env", "NOVALUE"], "--env NOVALUE"),
    ],
)
def test_bad_settings_are_one_line_errors(capsys, argv, message):
    assert main(["submit", "--dry-run", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


# --- the script's logic, with stand-ins for the Slurm commands ----------------------------------------
STUB = """#!/bin/bash
args="$*"; echo "$(basename "$0") ${args//$'\n'/ }" >> "$STUB_LOG"
case "$(basename "$0") $1 $2" in
  "scontrol show hostnames") echo node07; echo node08 ;;
  "scontrol -o show") echo "NodeName=node07 Arch=x86_64 NodeAddr=10.1.2.7 NodeHostName=node07" ;;
  srun*)
    touch "$STUB_LOG.srun-started"
    for _ in $(seq 100); do [ -e "$STUB_LOG.srun-release" ] && break; sleep 0.1; done
    [ "$SRUN_BEHAVIOUR" = stop ] && echo "SIGUSR1 pid=1" > "$SLIMTRAIN_STOP_MARKER"
    [ "$SRUN_BEHAVIOUR" = crash ] && exit 1
    [ "$SRUN_BEHAVIOUR" = stop ] && exit 1
    [ "$SRUN_BEHAVIOUR" = exit75 ] && exit 75
    exit 0 ;;
esac
exit 0
"""


def run_script(tmp_path, behaviour: str, send=None, extra_env=None, hold: float = 0.5):
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    for name in ("srun", "scontrol", "scancel"):
        (stubs / name).write_text(STUB)
        (stubs / name).chmod(0o755)
    log = tmp_path / "calls.log"
    env = {
        **os.environ,
        "PATH": f"{stubs}:{os.environ['PATH']}",
        "STUB_LOG": str(log),
        "SRUN_BEHAVIOUR": behaviour,
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_NODELIST": "node[07-08]",
        "SLURM_CPUS_PER_TASK": "16",
        "SLURM_GPUS_ON_NODE": "4",
        **(extra_env or {}),
    }
    env["OMP_NUM_THREADS"] = "99"  # the submitting shell's: the allocation's must win
    proc = subprocess.Popen(
        ["bash", str(TEMPLATE), "model.size=debug", "train.steps=3"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 20
    while not Path(f"{log}.srun-started").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.05)
    if send is not None:
        proc.send_signal(send)
        time.sleep(hold)
    Path(f"{log}.srun-release").touch()
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, log.read_text().splitlines(), out


def test_script_launches_one_torchrun_per_node(tmp_path):
    rc, calls, out = run_script(tmp_path, "ok")
    assert rc == 0, out
    srun = next(c for c in calls if c.startswith("srun "))
    assert "--nodes=2 --ntasks-per-node=1 --kill-on-bad-exit=1 --cpus-per-task=16" in srun
    assert "--nnodes=2 --nproc-per-node=4" in srun  # GPUs on the node
    assert f"--rdzv-endpoint=10.1.2.7:{29500 + 4242 % 5000} --rdzv-id=4242" in srun  # the first node's NodeAddr
    assert srun.endswith("train.py model.size=debug train.steps=3")
    assert 'trap "" USR1' in srun and "is_host=" in srun  # torchrun ignores USR1; node 0 hosts the rendezvous
    assert "OMP_NUM_THREADS=4" in out  # 16 CPUs / 4 processes
    assert not any(c.startswith("scontrol requeue") for c in calls)


def test_stop_marker_requeues(tmp_path):
    rc, calls, out = run_script(tmp_path, "stop")
    assert rc == 0 and "scontrol requeue 4242" in calls, out
    assert not list(tmp_path.glob(".slimtrain-stop-*"))  # cleaned up for the next run


def test_exit_code_never_decides_a_requeue(tmp_path):
    """torchrun turns 75 into 1, so the script reads the marker file only: 75 alone (no marker) is not a stop."""
    rc, calls, out = run_script(tmp_path, "exit75")
    assert rc == 75 and not any(c.startswith("scontrol requeue") for c in calls), out


def test_crash_does_not_requeue(tmp_path):
    rc, calls, out = run_script(tmp_path, "crash")
    assert rc == 1 and not any(c.startswith("scontrol requeue") for c in calls), out


def test_usr1_is_forwarded_then_requeued(tmp_path):
    rc, calls, out = run_script(tmp_path, "ok", send=signal.SIGUSR1)
    assert "scancel --signal=USR1 4242" in calls and "scontrol requeue 4242" in calls, out
    assert rc == 0


def test_stop_request_is_repeated_until_training_ends(tmp_path):
    """A process still starting up ignores SIGUSR1 (no handler yet), so the script asks again."""
    rc, calls, out = run_script(tmp_path, "ok", send=signal.SIGUSR1, extra_env={"STOP_RESEND_S": "1"}, hold=2.6)
    assert calls.count("scancel --signal=USR1 4242") >= 2, calls


def test_term_is_forwarded_but_never_requeued(tmp_path):
    """scancel (or Slurm's own preemption) sends TERM: save if possible, but a cancelled job stays cancelled."""
    rc, calls, out = run_script(tmp_path, "stop", send=signal.SIGTERM)
    assert "scancel --signal=USR1 4242" in calls and not any(c.startswith("scontrol requeue") for c in calls), out


def test_requeue_limit(tmp_path):
    rc, calls, out = run_script(tmp_path, "stop", extra_env={"SLURM_RESTART_COUNT": "3", "MAX_REQUEUES": "3"})
    assert rc == 75 and not any(c.startswith("scontrol requeue") for c in calls), out


def test_render_is_the_template_for_the_default_shape():
    job = SlurmJob(nodes=1, gpus_per_node=1, cpus_per_task=16, preempt_lead_s=300)
    assert render(job).count("#SBATCH") == TEMPLATE.read_text().count("#SBATCH") + 1  # + --export
