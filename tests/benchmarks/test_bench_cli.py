"""`python -m benchmarks`: the list, the suite against the docs' citations, and two real runs at the debug size.

(Not test_cli.py: tests/trainer/test_cli.py has that module name, and the tests folders are not packages.)
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import BENCHMARKS, run
from benchmarks.suite import ENTRIES, produced

ROOT = Path(__file__).resolve().parents[2]
NOT_BENCHMARKS = {"__init__", "__main__", "harness", "processes", "report"}


def bench(*args: str, timeout: int = 120) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_list_names_every_benchmark():
    listed = [line.split()[0] for line in bench("--list").splitlines() if line.strip()]
    modules = {p.stem for p in (ROOT / "benchmarks").glob("*.py")} - NOT_BENCHMARKS
    assert listed == list(BENCHMARKS)
    assert set(listed) == modules  # every benchmark module is registered, and every name has its module


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_every_benchmark_imports_and_parses_its_options(name, capsys):
    """Every module imports (the GPU paths too, unrun here) and its parser works: --help exits cleanly."""
    with pytest.raises(SystemExit) as exit_:
        run(name, ["--help"])
    assert exit_.value.code == 0
    assert ("--only" if name == "suite" else "--results-dir") in capsys.readouterr().out


def test_unknown_benchmark_is_one_line_error():
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "nope"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0 and "no benchmark named 'nope'" in proc.stderr


def cited_results() -> set[str]:
    """Results files README.md and docs/*.md name: any name under benchmarks/results/, or a bare name of a file
    there."""
    names = set()
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        text = doc.read_text()
        names |= set(re.findall(r"results/([\w.-]+\.(?:json|png))", text))
        names |= {
            n for n in re.findall(r"\b(\w+\.(?:json|png))\b", text) if (ROOT / "benchmarks" / "results" / n).exists()
        }
    return names


def test_every_cited_results_file_is_produced_by_a_suite_entry():
    cited = cited_results()
    assert {"memory.png", "sltrain_memory.json", "sst_throughput.json", "dct_sweep.json", "gpu.json"} <= cited
    assert cited - produced() == set()


def test_every_suite_entry_runs_a_registered_benchmark_under_its_own_name():
    assert len({e.name for e in ENTRIES}) == len(ENTRIES)
    assert {e.benchmark for e in ENTRIES} <= set(BENCHMARKS) - {"suite"}


def test_dry_run_prints_every_entry_and_runs_nothing():
    out = bench("suite", "--dry-run")
    for e in ENTRIES:
        assert f"=== {e.name} " in out
        assert f"-m benchmarks {e.benchmark} --out {e.name}" in out
    assert "wrote" not in out


def test_nothing_in_benchmarks_imports_tests():
    for path in (ROOT / "benchmarks").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n == "tests" or n.startswith("tests.") for n in names), path


def test_report_reads_only_what_the_suite_produces():
    from benchmarks.report import load

    with pytest.raises(KeyError, match="produced by no suite entry"):
        load("sltrain_speed_gpu")


def test_speed_at_debug_size_writes_its_json(tmp_path):
    bench(
        "speed",
        "--sizes",
        "debug",
        "--params",
        "full",
        "--optims",
        "adamw",
        "dct_adamw",
        "--repeats",
        "2",
        "--batch",
        "2",
        "--seq-len",
        "16",
        "--results-dir",
        str(tmp_path),
        "--out",
        "tiny_speed",
    )
    report = json.loads((tmp_path / "tiny_speed.json").read_text())
    assert [r["combo"] for r in report["rows"]] == ["full+adamw", "full+dct_adamw"]
    assert report["rows"][0]["speed_ratio"] == 1.0
    assert all(r["step_s"] > 0 and r["tokens_per_s"] > 0 for r in report["rows"])
    assert report["command"].startswith("python -m benchmarks speed --sizes debug") and report["date"]


def test_memory_at_debug_size_writes_its_json_and_plot(tmp_path):
    bench(
        "memory",
        "--sizes",
        "debug",
        "--peak-size",
        "debug",
        "--params",
        "full",
        "--optims",
        "adamw",
        "--batch",
        "1",
        "--seq-len",
        "8",
        "--results-dir",
        str(tmp_path),
        "--out",
        "tiny_memory",
    )
    (row,) = json.loads((tmp_path / "tiny_memory.json").read_text())["rows"]
    assert (row["size"], row["param"], row["optim"]) == ("debug", "full", "adamw")
    assert row["grads"] == row["trainable"] and row["optim_state"] >= 2 * row["trainable"]  # AdamW: two moments
    assert row["model_state_ratio"] == 1.0 and row["peak_step_rss"] > 0
    assert 0 < row["projections"]["trainable"] < row["trainable"]
    assert (tmp_path / "tiny_memory.png").stat().st_size > 0
