"""python -m launch: submit a training job to Slurm, or show this process's distributed environment.

python -m launch submit --nodes 4 --gpus-per-node 8 --partition p --time 24:00:00 -- model.size=1b
python -m launch submit --config launch.yaml --dry-run -- train.steps=100   # print the script only
python -m launch env                                                         # what read_dist_env sees
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from launch.env import read_dist_env
from launch.slurm import SlurmJob, job_from_dict, render, sbatch_command, submit


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m launch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("submit", help="render slurm/train.sbatch for a job shape and sbatch it")
    s.add_argument(
        "--config", help="YAML file of SlurmJob settings (keys as below, with underscores); flags override it"
    )
    s.add_argument("--nodes", type=int)
    s.add_argument("--gpus-per-node", type=int, help="0 for a CPU-only job")
    s.add_argument("--nproc-per-node", type=int, help="training processes per node (default: one per GPU)")
    s.add_argument("--cpus-per-task", type=int, help="CPUs per node (default: 8 per process)")
    s.add_argument("--partition")
    s.add_argument("--time", help="time limit, e.g. 01:00:00 or 2-00:00:00")
    s.add_argument("--job-name")
    s.add_argument("--account")
    s.add_argument("--qos")
    s.add_argument("--mem", help="memory per node, e.g. 500G (0: all)")
    s.add_argument("--exclusive", action="store_true", default=None)
    s.add_argument(
        "--preempt-lead", dest="preempt_lead_s", type=int, help="seconds before the limit to checkpoint and requeue"
    )
    s.add_argument("--output", help="log file pattern (default %%x-%%j.out)")
    s.add_argument(
        "--env", action="append", metavar="KEY=VALUE", help="environment for the job, e.g. MAX_REQUEUES=3 (repeatable)"
    )
    s.add_argument("--sbatch-arg", dest="extra", action="append", help="another sbatch option, verbatim (repeatable)")
    s.add_argument("--script-dir", default="runs/launch", help="where the rendered script is kept")
    s.add_argument("--dry-run", action="store_true", help="print the script and the sbatch command; submit nothing")
    s.add_argument("overrides", nargs="*", help="Hydra overrides for train.py (after --)")
    sub.add_parser("env", help="print the distributed environment this process sees (JSON)")
    return parser


def job_from_args(args: argparse.Namespace) -> SlurmJob:
    values = {}
    if args.config:
        import yaml

        with open(args.config) as f:
            values = yaml.safe_load(f) or {}
        if not isinstance(values, dict):
            raise ValueError(f"--config {args.config}: expected a mapping of launch settings")
    names = (
        "nodes",
        "gpus_per_node",
        "nproc_per_node",
        "cpus_per_task",
        "partition",
        "time",
        "job_name",
        "account",
        "qos",
        "mem",
        "exclusive",
        "preempt_lead_s",
        "output",
        "extra",
    )
    values |= {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if args.env:
        pairs = [item.partition("=") for item in args.env]
        bad = [key for key, eq, _ in pairs if not eq]
        if bad:
            raise ValueError(f"--env {bad[0]}: expected KEY=VALUE")
        values["env"] = {**values.get("env", {}), **{key: value for key, _, value in pairs}}
    return job_from_dict(values)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "env":
        print(json.dumps(asdict(read_dist_env()), indent=1))
        return 0
    try:
        job = job_from_args(args)
        if args.dry_run:
            print(render(job), end="")
            print(f"# submit with: {sbatch_command('<this script>', args.overrides)}")
            return 0
        job_id, path = submit(job, args.overrides, args.script_dir)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"submitted job {job_id} ({path}); log: {job.output.replace('%x', job.job_name).replace('%j', job_id)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
