"""A session-wide local Slurm for the launcher tests: installed (Debian packages) and started if need be."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

from tests.slurm.cluster import LocalSlurm, SlurmUnavailable, ensure_installed


def _foreign_slurmd_running() -> bool:
    comms = []
    for proc in os.listdir("/proc"):
        try:
            comms.append(open(f"/proc/{proc}/comm").read().strip())
        except OSError:  # not a process, or it just ended
            continue
    return "slurmd" in comms


@pytest.fixture(scope="session")
def slurm():
    if os.geteuid() != 0:
        pytest.skip("the local Slurm test cluster needs root (slurmd runs jobs as their user; apt-get installs it)")
    try:
        ensure_installed()
    except SlurmUnavailable as e:
        pytest.skip(str(e))
    if _foreign_slurmd_running():
        pytest.skip("a slurmd not started by these tests is running here; two slurmd on one host stop each other")
    root = tempfile.mkdtemp(prefix="slimtrain-slurm-")
    cluster = LocalSlurm(root)
    try:
        cluster.start()
    except (RuntimeError, TimeoutError, subprocess.CalledProcessError, OSError) as e:
        cluster.stop()
        pytest.skip(f"could not start a local Slurm: {e}")
    yield cluster
    cluster.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_two_nodes(slurm):
    """Two nodes on this machine, each a network namespace with its own address and slurmd (n1, n2)."""
    from tests.slurm.cluster import start_two_nodes

    root = tempfile.mkdtemp(prefix="slimtrain-slurm2-")
    try:
        cluster, net = start_two_nodes(root)
    except (SlurmUnavailable, RuntimeError, TimeoutError, OSError) as e:
        pytest.skip(f"could not start a two-node Slurm in network namespaces: {e}")
    yield cluster
    cluster.stop()
    net.destroy()
    shutil.rmtree(root, ignore_errors=True)
