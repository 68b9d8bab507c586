"""python -m benchmarks --list | <name> [options] [-- Hydra overrides]"""

import sys

from benchmarks import BENCHMARKS, run

if len(sys.argv) < 2 or sys.argv[1] in ("--list", "-h", "--help"):
    print("\n".join(f"{name:<16} {what}" for name, what in BENCHMARKS.items()))
    if sys.argv[1:2] != ["--list"]:
        print("\npython -m benchmarks <name> --help: a benchmark's options")
else:
    run(sys.argv[1], sys.argv[2:])
