"""train.py on a disk that fills up while it saves the checkpoint of one step (test_rundir's fault table).

    python tests/trainer/full_disk_train.py STEP [hydra overrides...]

Every write into that step's checkpoint files fails with ENOSPC, as on a full disk: what a real small
tmpfs does, for machines where a test cannot mount one.
"""

import errno
import os
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[2])  # the repository, as for train.py

from trainer import manifest  # noqa: E402

FULL_AT = f".tmp-step_{int(sys.argv.pop(1)):07d}"
real_write = manifest.HashingFile.write


def write(self, data):
    if FULL_AT in self.file.name:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_write(self, data)


manifest.HashingFile.write = write

if __name__ == "__main__":
    import runpy

    runpy.run_path(str(Path(__file__).resolve().parents[2] / "train.py"), run_name="__main__")  # as `python train.py`
