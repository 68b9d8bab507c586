"""metrics.jsonl across runs in one directory: a fresh run keeps the earlier file, a resumed run logs each step once."""

import builtins
import errno
import json
import os

import pytest

from trainer import metrics as metrics_module
from trainer.config import LogConfig
from trainer.metrics import MetricsLog


def open_log(run_dir) -> MetricsLog:
    return MetricsLog(str(run_dir), LogConfig(wandb="disabled", progress="lines"), True, 10, {}, "run")


def steps_in(path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def write_steps(log: MetricsLog, steps) -> None:
    for s in steps:
        log.log(s, {"train/loss": float(s)})


def test_fresh_run_moves_the_earlier_file_aside(tmp_path):
    first = open_log(tmp_path)
    first.begin(0)
    write_steps(first, range(6))
    second = open_log(tmp_path)
    second.begin(0)
    write_steps(second, range(3))
    third = open_log(tmp_path)
    third.begin(0)
    assert steps_in(tmp_path / "metrics.1.jsonl") == list(range(6))
    assert steps_in(tmp_path / "metrics.2.jsonl") == list(range(3))
    assert not (tmp_path / "metrics.jsonl").exists()


def test_resume_drops_the_steps_it_will_redo_and_a_torn_line(tmp_path):
    log = open_log(tmp_path)
    write_steps(log, range(9))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "train/lo')  # killed mid-write
    resumed = open_log(tmp_path)
    resumed.begin(5)
    write_steps(resumed, range(6, 10))
    assert steps_in(tmp_path / "metrics.jsonl") == list(range(10))


class FullDiskFile:
    """What open() gives for writing on a full disk: every write fails with ENOSPC."""

    def __init__(self, path, mode="r", *args, **kwargs):
        self.file = builtins.open(path, mode, *args, **kwargs)

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    writelines = write

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def full_disk_open(path, mode="r", *args, **kwargs):
    return (
        FullDiskFile(path, mode, *args, **kwargs)
        if set(mode) & set("wa")
        else builtins.open(path, mode, *args, **kwargs)
    )


@pytest.mark.parametrize("when", ["appending", "trimming on resume"])
def test_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch, when):
    log = open_log(tmp_path)
    write_steps(log, range(3))
    before = (tmp_path / "metrics.jsonl").read_text()
    monkeypatch.setattr(metrics_module, "open", full_disk_open, raising=False)  # this module's open() only
    with pytest.raises(ValueError) as e:
        write_steps(log, [3]) if when == "appending" else open_log(tmp_path).begin(1)
    assert str(e.value).startswith(f"disk full (No space left on device) at {tmp_path / 'metrics.jsonl'} while ")
    assert (tmp_path / "metrics.jsonl").read_text() == before and os.listdir(tmp_path) == ["metrics.jsonl"]


def test_only_the_main_rank_touches_the_file(tmp_path):
    write_steps(open_log(tmp_path), range(3))
    MetricsLog(str(tmp_path), LogConfig(wandb="disabled"), False, 10, {}, "run").begin(0)
    assert steps_in(tmp_path / "metrics.jsonl") == [0, 1, 2]


def test_progress_lines_show_mfu_and_peak_memory(tmp_path, capsys):
    log = open_log(tmp_path)
    metrics = {
        "train/loss": 2.0,
        "train/lr": 1e-3,
        "train/grad_norm": 1.0,
        "train/tokens_per_s": 5000.0,
        "train/step_time_s": 0.1,
        "train/mfu": 0.4123,
        "mem/peak_bytes": 3 * 2**30,
    }
    log.progress(10, metrics, print_line=True)
    line = capsys.readouterr().out
    assert "5000 tok/s" in line and "mfu 41.2%" in line and "peak_mem 3.00GiB" in line
    del metrics["train/mfu"]  # no known peak (a CPU): no MFU, memory still shown
    log.progress(10, metrics, print_line=True)
    line = capsys.readouterr().out
    assert "mfu" not in line and "peak_mem 3.00GiB" in line
