"""A job's processes under its owner's own unprivileged identity (multi-user mode, on a worker).

The server names the identity in the run spec (`run_as`); a worker running as root switches
to it, as Slurm runs a job as the submitting user. The worker keeps everything privileged to
itself: it stages stored inputs into a folder only it can enter, then hands the folder to the
job's uid; the job starts with an environment built from scratch (nothing of the worker's:
no storage credentials, no orchestrator settings); inputs named by URL are fetched by a
process of the job's own identity, so a `file://` URL reads only what that uid may read.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

MINIMAL_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
PASSED_THROUGH = ("LANG", "LC_ALL", "TZ")  # locale and time zone: harmless, and jobs expect them
JOB_UMASK = 0o077
FETCH_TIMEOUT_S = 3600.0
# A local file is read by the job's own identity (so only what that uid may read); other
# URLs never carry the worker's credentials: http(s) has none, s3 is read anonymously.
REMOTE_PROTOCOLS = {"http": {}, "https": {}, "s3": {"anon": True}}
# Run by the job's identity, in its folder: $1 the source, $2 the target path inside it.
_COPY = 'mkdir -p -- "$(dirname -- "$2")" && cat -- "$1" > "$2"'
_CREATE = 'mkdir -p -- "$(dirname -- "$2")" && : > "$2"'  # an empty target the job owns


class IdentityUnavailable(RuntimeError):
    """This worker cannot switch to a job's identity (it does not run as root)."""


class FetchFailed(RuntimeError):
    """An input URL the job's identity could not read."""


@dataclass(frozen=True)
class RunAs:
    uid: int
    gid: int
    user: str  # the OS account's name, or the orchestrator user's for a uid from the range

    @classmethod
    def from_spec(cls, value: dict[str, Any] | None) -> RunAs | None:
        return cls(int(value["uid"]), int(value["gid"]), str(value["user"])) if value else None

    def check_possible(self) -> None:
        if os.geteuid() != 0:
            raise IdentityUnavailable(
                f"this worker cannot run jobs as another user (uid {self.uid}): it does not run "
                "as root; start multi-user workers as root"
            )
        if self.uid == 0 or self.gid == 0:
            raise IdentityUnavailable("jobs never run as root")

    def popen_options(self) -> dict[str, Any]:
        """Popen's identity switch: no supplementary groups of the worker survive it."""
        return {"user": self.uid, "group": self.gid, "extra_groups": [], "umask": JOB_UMASK}


def can_switch_identity() -> bool:
    """Asked on every worker (`Client.run`) before multi-user jobs are accepted."""
    return os.geteuid() == 0


def clean_environment(run_as: RunAs, workdir: Path, job_env: dict[str, str]) -> dict[str, str]:
    """What a job sees: a minimal PATH, HOME in its folder, locale, then the job's own."""
    env = {
        "PATH": job_path(), "HOME": str(workdir), "USER": run_as.user, "LOGNAME": run_as.user,
        "SHELL": "/bin/sh", "LANG": "C.UTF-8",
    }
    env.update({name: os.environ[name] for name in PASSED_THROUGH if name in os.environ})
    env.update(job_env)
    return env


@lru_cache(maxsize=1)
def job_path() -> str:
    """The system's bin folders, after the worker's own Python's when others may run it."""
    own = os.path.dirname(sys.executable)
    folders = [own, *MINIMAL_PATH] if enterable_by_anyone(own) else list(MINIMAL_PATH)
    return ":".join(dict.fromkeys(folders))


def enterable_by_anyone(folder: str) -> bool:
    path = Path(folder).resolve()
    return all(os.stat(part).st_mode & 0o001 for part in (path, *path.parents))


@lru_cache(maxsize=1)
def folders_root() -> Path:
    """Where job folders of this worker process live: entered by anyone (0711), listed by
    no one, so a job reaches only the folder it was handed."""
    root = Path(tempfile.mkdtemp(prefix="orchestrator-jobs-"))
    root.chmod(0o711)
    atexit.register(shutil.rmtree, root, True)
    return root


@contextlib.contextmanager
def job_folder() -> Iterator[Path]:
    """A fresh folder for one run, the worker's own (0700) until handed over; removed after
    (rmtree does not follow links the job left)."""
    folder = Path(tempfile.mkdtemp(dir=folders_root()))
    folder.chmod(0o700)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def hand_over(folder: Path, run_as: RunAs) -> None:
    """Give the staged folder and everything staged in it to the job's identity.

    Safe to walk: until now only the worker could enter the folder."""
    for parent, dirs, files in os.walk(folder):
        for name in dirs + files:
            os.lchown(os.path.join(parent, name), run_as.uid, run_as.gid)
    os.chown(folder, run_as.uid, run_as.gid)


def fetch_as(run_as: RunAs, url: str, relative: str, folder: Path, executable: bool) -> None:
    """Copy `url` to `folder/relative` for a job, never with more rights than the job has."""
    protocol, has_protocol, path = url.partition("://")
    if "::" in url or (has_protocol and protocol not in {"file", *REMOTE_PROTOCOLS}):
        raise FetchFailed(
            f"cannot fetch {url}: inputs of multi-user jobs are file://, http(s):// or s3:// URLs "
            "(s3 read anonymously)")
    if not has_protocol or protocol == "file":
        source = path if has_protocol else url
        _as_job(run_as, folder, _COPY, source, relative, f"cannot read {source}")
    else:
        _download(url, REMOTE_PROTOCOLS[protocol], folder, relative, run_as)
    if executable:
        os.chmod(os.path.join(folder, relative), 0o755, follow_symlinks=False)


def _as_job(run_as: RunAs, folder: Path, script: str, source: str, target: str, failure: str) -> None:
    """A shell step of staging, with the job's identity and clean environment."""
    done = subprocess.run(
        ["/bin/sh", "-c", script, "stage", source, target],
        cwd=folder, env=clean_environment(run_as, folder, {}), stdin=subprocess.DEVNULL,
        capture_output=True, timeout=FETCH_TIMEOUT_S, check=False, **run_as.popen_options(),
    )
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        raise FetchFailed(f"{failure} as uid {run_as.uid}: {lines[-1] if lines else done.returncode}")


def _download(url: str, options: dict[str, Any], folder: Path, relative: str, run_as: RunAs) -> None:
    """Into a file the job's identity made in its folder (opened without following links)."""
    import fsspec

    _as_job(run_as, folder, _CREATE, url, relative, f"cannot create {relative}")
    fd = os.open(os.path.join(folder, relative), os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
    with fsspec.open(url, "rb", **options) as source, os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(source, out, 4 * 2**20)
