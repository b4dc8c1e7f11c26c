"""A real single-node Slurm for the tests: munged, slurmctld and slurmd from Debian's `slurm-wlm`
and `munge` packages (installed by .ci/system-packages.sh), run as background processes whose
config, key, state, sockets and logs all live under one private temp folder.

    with slurm_cluster(tmp_path) as slurm:
        subprocess.run(["sbatch", ...], env=slurm.env)   # env carries SLURM_CONF

Nothing is skipped: when Slurm cannot start, `SlurmStartError` says why, with the daemons' log
tails. The ports are free ones picked at start, so the host's own Slurm (if any) is untouched.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.support.ports import free_port

PARTITION = "debug"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
CLIENT_TIMEOUT_S = 30.0
# Jobs inherit the submitter's environment (sbatch --export=ALL, the default): this marker lets
# teardown find every process a job of this cluster left behind, and only those.
MARKER_VAR = "ORCHESTRATOR_TEST_SLURM"
ENDED = {"", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
         "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
PROGRAMS = ("slurmctld", "slurmd", "munged", "mungekey", "sbatch", "squeue", "scancel", "sinfo",
            "scontrol")


class SlurmStartError(RuntimeError):
    """The test Slurm could not be started; the message says why."""


@dataclass
class SlurmInfo:
    """A running single-node Slurm: what subprocesses and dask-jobqueue need to use it."""

    root: Path
    conf: Path
    env: dict[str, str]
    partition: str
    node: str
    cpus: int
    memory_mb: int
    logs: dict[str, Path] = field(default_factory=dict)

    def run(self, *args: str, timeout: float = CLIENT_TIMEOUT_S,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command (sbatch, squeue, ...) against this cluster."""
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=check)

    def squeue_ids(self) -> list[str]:
        """Ids of the jobs this cluster still knows as pending, running or completing."""
        out = self.run("squeue", "--noheader", "--format=%i").stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def job_state(self, job_id: str) -> tuple[str, str]:
        """A job's state and exit code as slurmctld reports them; ('', '') once it has forgotten
        the job (MinJobAge seconds after the job ended)."""
        out = self.run("scontrol", "show", "job", job_id, check=False).stdout
        state = re.search(r"\bJobState=(\S+)", out)
        code = re.search(r"\bExitCode=(\S+)", out)
        return (state.group(1) if state else "", code.group(1) if code else "")

    def sbatch_wait(self, script: str, *args: str, timeout: float = 60.0) -> str:
        """Submit `script` (a batch script starting with '#!', else a command for --wrap), wait
        for the job to end and return its output. `args` are more sbatch options. Raises if the
        job does not complete (exit 0) within `timeout` seconds. Polls scontrol rather than
        using `sbatch --wait`, whose first poll comes only after 2 s and then 4 s."""
        out_dir = Path(tempfile.mkdtemp(prefix="sbatch-", dir=self.root))
        output = out_dir / "job.out"
        command = ["sbatch", "--parsable", f"--partition={self.partition}",
                   f"--output={output}", f"--chdir={out_dir}", *args]
        if script.startswith("#!"):
            script_path = out_dir / "job.sh"
            script_path.write_text(script)
            command.append(str(script_path))
        else:
            command.append(f"--wrap={script}")
        job_id = self.run(*command).stdout.strip().split(";")[0]
        deadline = time.monotonic() + timeout
        while (state := self.job_state(job_id))[0] not in ENDED:
            if time.monotonic() > deadline:
                show = self.run("scontrol", "show", "job", job_id, check=False).stdout
                raise AssertionError(f"job {job_id} did not end within {timeout} s\n{show}\n"
                                     f"{self.log_tails()}")
            time.sleep(0.1)
        text = output.read_text() if output.exists() else ""
        if state != ("COMPLETED", "0:0") and state != ("", ""):
            raise AssertionError(f"job {job_id} ended {state[0]} (exit {state[1]})\n"
                                 f"output: {text}")
        return text

    def cancel_all(self) -> None:
        ids = self.squeue_ids()
        if ids:
            self.run("scancel", *ids, check=False)

    def log_tails(self, lines: int = 30) -> str:
        parts = []
        for name, path in self.logs.items():
            text = path.read_text(errors="replace") if path.exists() else "(no log)"
            tail = "\n".join(text.splitlines()[-lines:])
            parts.append(f"--- {name} ({path}) ---\n{tail}")
        return "\n".join(parts)


def missing_commands() -> list[str]:
    """The Slurm and munge programs that are not installed (see .ci/system-packages.sh)."""
    return [name for name in PROGRAMS if shutil.which(name) is None]


def outer_slurm_vars(environ: dict[str, str]) -> list[str]:
    """Variables of an outer Slurm job (pytest run under Slurm) that must not leak into ours."""
    return [name for name in environ if name != "SLURM_CONF"
            and name.startswith(("SLURM_", "SBATCH_", "SQUEUE_", "SRUN_", "SALLOC_"))]


def _hardware() -> tuple[int, int]:
    """CPUs and memory (MiB) of this machine, as slurmd sees them (else nproc / psutil)."""
    cpus, memory = os.cpu_count() or 1, psutil.virtual_memory().total // 2**20
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=20).stdout
        if found := re.search(r"\bCPUs=(\d+)", out):
            cpus = int(found.group(1))
        if found := re.search(r"\bRealMemory=(\d+)", out):
            memory = int(found.group(1))
    return cpus, memory


def _slurm_conf(root: Path, spool: Path, node: str, cpus: int, memory_mb: int, ports: tuple[int, int],
                munge_socket: Path) -> str:
    return f"""\
# Written by tests/support/slurm.py for one test run; everything lives under {root}
ClusterName=orchtest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={spool}
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups here: plain process tracking, no task containment
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
SchedulerType=sched/backfill
# schedule batch jobs at once (default: up to 3 s later)
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# a job that asks for no memory gets a little, not the whole node
DefMemPerCPU=256
# the node as written here is the truth (no drain for a slurmd -C mismatch)
SlurmdParameters=config_overrides
ReturnToService=2
# short timeouts: tests start, use and stop the whole cluster in seconds
SlurmctldTimeout=10
SlurmdTimeout=10
MessageTimeout=5
InactiveLimit=0
KillWait=1
MinJobAge=5
Waittime=0
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def _stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT_S)


def _ours(proc: psutil.Process, marker: str) -> bool:
    """A job process of this cluster (its environment carries the marker), or a slurmstepd of
    it (it keeps this cluster's slurmd log open)."""
    if proc.name() == "slurmstepd":
        return any(f.path.startswith(marker + os.sep) for f in proc.open_files())
    return proc.environ().get(MARKER_VAR) == marker


def _kill_leftovers(marker: str) -> None:
    """Kill what this cluster's jobs left running once the daemons are gone (none, normally)."""
    me = os.getpid()
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if proc.pid != me and proc.status() != psutil.STATUS_ZOMBIE and _ours(proc, marker):
                found.append(proc)
    for proc in found:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for proc in found:  # gone or a zombie (not our child: init reaps it) counts as stopped
        with contextlib.suppress(psutil.Error):
            while proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE \
                    and time.monotonic() < deadline:
                time.sleep(0.05)


def _socket_dir(root: Path, node: str) -> tuple[Path, bool]:
    """The folder for Unix sockets (munged's, and slurmd's spool, where each job step gets
    `<node>_<job>.<step>`; at most 108 bytes a path): `root` when its path is short enough, else
    a new folder under /tmp. Says whether it was created here (to remove it on exit)."""
    if len(str(root)) + len("/spool/") + len(node) + len("_12345678.4294967291") < 100:
        return root, False
    return Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp")), True


@contextlib.contextmanager
def slurm_cluster(tmp_path: Path, timeout: float = START_TIMEOUT_S) -> Iterator[SlurmInfo]:
    """Configure and start a single-node Slurm under `tmp_path / "slurm"`; yield its SlurmInfo;
    on exit cancel every job, stop the daemons and kill what the jobs left running."""
    if missing := missing_commands():
        raise SlurmStartError(f"Slurm/munge programs missing: {', '.join(missing)}; "
                              "install them with `bash .ci/system-packages.sh` (as root)")
    if os.geteuid() != 0:
        raise SlurmStartError("the test Slurm runs its daemons as root (SlurmUser=root)")

    node = socket.gethostname().split(".")[0]
    root = Path(tmp_path) / "slurm"
    root.mkdir()
    (root / "state").mkdir()
    (root / "log").mkdir()
    sockets, sockets_are_ours = _socket_dir(root, node)
    munge_dir, spool = sockets / "munge", sockets / "spool"
    munge_dir.mkdir()
    spool.mkdir()
    munge_socket = munge_dir / "munge.socket"
    key = munge_dir / "munge.key"

    cpus, memory = _hardware()
    memory_mb = max(512, memory * 9 // 10)
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, spool, node, cpus, memory_mb,
                                (free_port(), free_port()), munge_socket))

    marker = str(root)
    env = {**os.environ, "SLURM_CONF": str(conf), MARKER_VAR: marker}
    for var in outer_slurm_vars(env):
        del env[var]
    logs = {"munged": root / "log" / "munged.log", "slurmctld": root / "log" / "slurmctld.log",
            "slurmd": root / "log" / "slurmd.log"}
    info = SlurmInfo(root=root, conf=conf, env=env, partition=PARTITION, node=node, cpus=cpus,
                     memory_mb=memory_mb, logs=logs)
    # Daemons run without the marker (teardown stops them itself) and without outer SLURM_ vars.
    daemon_env = {k: v for k, v in env.items() if k != MARKER_VAR}

    processes: dict[str, subprocess.Popen] = {}
    try:
        subprocess.run(["mungekey", "--create", "--keyfile", str(key), "--bits", "1024"],
                       check=True, capture_output=True, timeout=20)
        key.chmod(0o600)
        processes["munged"] = _start(
            ["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={munge_socket}",
             f"--pid-file={munge_dir / 'munged.pid'}", f"--seed-file={munge_dir / 'munged.seed'}",
             f"--log-file={logs['munged']}"], logs["munged"], daemon_env)
        _wait(lambda: munge_socket.exists(), timeout, "munged's socket", info, processes)

        processes["slurmctld"] = _start(["slurmctld", "-D", "-i", "-f", str(conf)],
                                        root / "log" / "slurmctld.out", daemon_env)
        _wait(lambda: info.run("scontrol", "ping", check=False, timeout=10).returncode == 0,
              timeout, "slurmctld answering `scontrol ping`", info, processes)
        processes["slurmd"] = _start(["slurmd", "-D", "-f", str(conf), "-N", node],
                                     root / "log" / "slurmd.out", daemon_env)
        _wait(lambda: _node_state(info) == "idle", timeout, f"node {node} idle in sinfo", info,
              processes)
        yield info
    finally:
        with contextlib.suppress(Exception):
            if "slurmctld" in processes and processes["slurmctld"].poll() is None:
                info.cancel_all()
                deadline = time.monotonic() + STOP_TIMEOUT_S
                while info.squeue_ids() and time.monotonic() < deadline:
                    time.sleep(0.2)
        for name in ("slurmd", "slurmctld", "munged"):
            _stop(processes.get(name))
        _kill_leftovers(marker)
        if sockets_are_ours:
            shutil.rmtree(sockets, ignore_errors=True)


def _node_state(info: SlurmInfo) -> str:
    out = info.run("sinfo", "--noheader", f"--nodes={info.node}", "--format=%t", check=False,
                   timeout=10).stdout
    return out.strip()


def _wait(predicate, timeout: float, what: str, info: SlurmInfo,
          processes: dict[str, subprocess.Popen]) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            if predicate():
                return
        dead = {name: p.returncode for name, p in processes.items() if p.poll() is not None}
        if dead or time.monotonic() > deadline:
            reason = f"exited: {dead}" if dead else f"not reached within {timeout} s"
            extra = ""
            for name in ("slurmctld.out", "slurmd.out"):
                path = info.root / "log" / name
                if path.exists() and path.stat().st_size:
                    extra += f"\n--- {name} ---\n{path.read_text(errors='replace')[-3000:]}"
            raise SlurmStartError(f"test Slurm did not start: {what} {reason}\n"
                                  f"{info.log_tails()}{extra}")
        time.sleep(0.2)
