"""A real one-node Slurm (munged + slurmctld + slurmd) in a temporary folder, for the launcher tests.

Everything it starts (sockets, state, logs, pid files) lives under one folder, on ports of its own,
so it neither needs nor touches /etc/slurm. Installing the Debian packages needs root and apt-get.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue", "scancel", "sinfo"]


class SlurmUnavailable(Exception):
    """Why a local Slurm cannot be had here (the tests skip with this message)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def ensure_installed() -> None:
    """apt-get install the Slurm packages if any binary is missing; SlurmUnavailable where we cannot."""
    if all(shutil.which(b) for b in BINARIES):
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable(
            "Slurm is not installed and installing it needs root (apt-get install " + " ".join(PACKAGES) + ")"
        )
    if not shutil.which("apt-get"):
        raise SlurmUnavailable("Slurm is not installed and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", *PACKAGES]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:  # a stale package index: refresh once and retry
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not all(shutil.which(b) for b in BINARIES):
        raise SlurmUnavailable(f"apt-get install {' '.join(PACKAGES)} failed: {proc.stderr.strip()[-300:]}")


SLURM_CONF = """\
ClusterName=slimtrain-test
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/slurmd-%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=300
InactiveLimit=0
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
{nodes}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


class LocalSlurm:
    """Start with .start(); every client call needs .env (it points SLURM_CONF at this cluster)."""

    def __init__(self, root: str | os.PathLike, cpus: int = 2):
        self.root = Path(root)
        self.host = socket.gethostname().split(".")[0]
        self.cpus = cpus
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._procs: list[Path] = []  # pid files of what we started

    # --- set-up ----------------------------------------------------------------------------------
    def write_config(self, nodes: str | None = None) -> None:
        for sub in ("munge", "state", "spool", "run", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        nodes = nodes or f"NodeName={self.host} CPUs={self.cpus} State=UNKNOWN"
        self.conf.write_text(
            SLURM_CONF.format(
                host=self.host, root=self.root, nodes=nodes, ctld_port=_free_port(), slurmd_port=_free_port()
            )
        )

    def start_munge(self) -> None:
        munge = self.root / "munge"
        munge.chmod(0o700)
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        pid = self.root / "run" / "munged.pid"
        # --force: munged refuses to run as root, or with a world-readable /tmp ancestor, otherwise.
        subprocess.run(
            [
                "munged",
                "--force",
                f"--socket={munge}/munge.socket",
                f"--key-file={key}",
                f"--pid-file={pid}",
                f"--log-file={self.root}/log/munged.log",
                f"--seed-file={munge}/seed",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        self._procs.append(pid)

    def start_daemons(self, slurmd_args: list[list[str]] | None = None) -> None:
        self._daemon(["slurmctld", "-f", str(self.conf)], self.root / "run" / "slurmctld.pid")
        self.wait_for(
            lambda: self.run("scontrol", "ping", check=False).stdout.count("UP") > 0, 30, "slurmctld to answer"
        )
        for args in slurmd_args or [["slurmd", "-f", str(self.conf)]]:
            node = args[-1] if "-N" in args else self.host
            self._daemon(args, self.root / "run" / f"slurmd-{node}.pid")
        self.wait_for(self.nodes_idle, 60, "the node(s) to become idle")

    def _daemon(self, args: list[str], pid_file: Path) -> None:
        proc = subprocess.run(args, env=self.env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{args[0]} failed to start: {proc.stderr.strip()}\n{self.logs()}")
        self._procs.append(pid_file)

    def start(self) -> LocalSlurm:
        self.write_config()
        self.start_munge()
        self.start_daemons()
        return self

    # --- clients ---------------------------------------------------------------------------------
    def run(self, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(args), env=kw.pop("env", self.env), capture_output=True, text=True, **kw)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def nodes_idle(self) -> bool:
        states = self.run("sinfo", "-h", "-N", "-o", "%t", check=False).stdout.split()
        return bool(states) and all(s == "idle" for s in states)

    def job_field(self, job_id: str, field: str) -> str | None:
        out = self.run("scontrol", "-o", "show", "job", job_id, check=False).stdout
        for token in out.split():
            if token.startswith(field + "="):
                return token.split("=", 1)[1]
        return None

    def wait_for(self, predicate, timeout: float, what: str, interval: float = 0.2):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.logs()}")

    def logs(self, tail: int = 30) -> str:
        out = []
        for path in sorted((self.root / "log").glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-tail:]
            out.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(out)

    # --- tear-down -------------------------------------------------------------------------------
    def stop(self) -> None:
        self.run("scancel", "--full", "--user", "root", check=False)  # jobs of this cluster only
        pids = []
        for pid_file in reversed(self._procs):  # slurmd(s), slurmctld, then munged
            try:
                pid = int(pid_file.read_text().strip())
                os.kill(pid, signal.SIGTERM)
                pids.append(pid)
            except (OSError, ValueError):
                continue
        deadline = time.monotonic() + 10
        for pid in pids:
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except OSError:
                    break
                time.sleep(0.1)
        self._procs.clear()


# --- two nodes on one machine: each a network namespace with its own address, hostname and slurmd ---
class NetnsNodes:
    """Network namespaces <prefix>-n1.. on a bridge (10.77.0.0/24; the controller side is .254).

    Each node's processes see /etc/netns/<ns>/hosts as /etc/hosts and their own hostname (unshare
    --mount --uts), so a node resolves its own name to its own address, as a real node would.
    """

    def __init__(self, count: int = 2, prefix: str = "slimtrain", subnet: str = "10.77.0"):
        self.names = [f"n{i}" for i in range(1, count + 1)]
        self.prefix, self.subnet = prefix, subnet
        self.bridge = f"{prefix}-br"
        self.controller_addr = f"{subnet}.254"

    def ns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def addr(self, node: str) -> str:
        return f"{self.subnet}.{self.names.index(node) + 1}"

    @staticmethod
    def _ip(*args: str) -> None:
        proc = subprocess.run(["ip", *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SlurmUnavailable(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")

    def create(self) -> None:
        if os.geteuid() != 0 or not all(shutil.which(b) for b in ("ip", "unshare", "nsenter")):
            raise SlurmUnavailable("network namespaces need root, ip (iproute2), unshare and nsenter")
        self.destroy()  # leftovers of an interrupted run
        self._ip("link", "add", self.bridge, "type", "bridge")
        self._ip("addr", "add", f"{self.controller_addr}/24", "dev", self.bridge)
        self._ip("link", "set", self.bridge, "up")
        hosts = "127.0.0.1 localhost\n" + "".join(f"{self.addr(n)} {n}\n" for n in self.names)
        for i, node in enumerate(self.names, 1):
            ns, veth = self.ns(node), f"{self.prefix}-v{i}"
            self._ip("netns", "add", ns)
            self._ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            self._ip("link", "set", veth, "master", self.bridge, "up")
            self._ip("-n", ns, "addr", "add", f"{self.addr(node)}/24", "dev", "eth0")
            self._ip("-n", ns, "link", "set", "eth0", "up")
            self._ip("-n", ns, "link", "set", "lo", "up")
            etc = Path("/etc/netns") / ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(hosts + f"{self.controller_addr} {socket.gethostname().split('.')[0]}\n")

    def command(self, node: str, args: list[str]) -> list[str]:
        """args run inside the node: its network namespace, its /etc/hosts, its hostname.

        (Not `ip netns exec`: that remounts /sys, and slurmd needs the host's cgroup mounts.)
        """
        hosts = Path("/etc/netns") / self.ns(node) / "hosts"
        script = (
            f'hostname {node} && mount --bind {hosts} /etc/hosts && exec nsenter --net=/run/netns/{self.ns(node)} "$@"'
        )
        return ["unshare", "--mount", "--uts", "--propagation", "private", "sh", "-c", script, "sh", *args]

    def destroy(self) -> None:
        for i, node in enumerate(self.names, 1):
            subprocess.run(["ip", "netns", "del", self.ns(node)], capture_output=True)
            subprocess.run(["ip", "link", "del", f"{self.prefix}-v{i}"], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / self.ns(node), ignore_errors=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


def start_two_nodes(root: str | os.PathLike, cpus: int = 2) -> tuple[LocalSlurm, NetnsNodes]:
    """slurmctld on the host, one slurmd in each of two network namespaces (nodes n1, n2)."""
    net = NetnsNodes(2)
    net.create()
    cluster = LocalSlurm(root, cpus)
    try:
        cluster.host = f"{cluster.host}({net.controller_addr})"  # SlurmctldHost=name(address)
        nodes = "\n".join(f"NodeName={n} NodeAddr={net.addr(n)} CPUs={cpus} State=UNKNOWN" for n in net.names)
        cluster.write_config(nodes)
        for n in net.names:
            (cluster.root / "spool" / f"slurmd-{n}").mkdir(parents=True, exist_ok=True)
        cluster.start_munge()
        cluster.start_daemons([net.command(n, ["slurmd", "-f", str(cluster.conf), "-N", n]) for n in net.names])
    except BaseException:
        cluster.stop()
        net.destroy()
        raise
    return cluster, net
