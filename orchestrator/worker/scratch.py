"""Where a worker runs jobs: a scratch folder and log files per task, and the Dask worker the
task runs in (None when called outside one, as tests do)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from orchestrator.storage import layout
from orchestrator.worker.jobuser import RunAs, job_folder


def current_worker():
    from distributed import get_worker

    try:
        return get_worker()
    except ValueError:
        return None


def worker_address() -> str | None:
    worker = current_worker()
    return worker.address if worker else None


@lru_cache(maxsize=4)
def scratch_root_in(base: str) -> Path:
    """Working folders of runs, and their logs while they run (kept out of the outputs)."""
    root = Path(base) / "orchestrator-jobs"
    (root / "logs").mkdir(parents=True, exist_ok=True)
    return root


def scratch_root() -> Path:
    worker = current_worker()
    return scratch_root_in(worker.local_directory if worker else tempfile.gettempdir())



class Scratch:
    """A working folder and log files on the worker, emptied between the runs of a batch.

    Reused rather than made per run: creating and removing folders costs as much as
    starting a short process on some filesystems. A run under its owner's identity gets a
    fresh folder instead: one the worker stages into while no job can enter it.
    """

    def __enter__(self) -> Scratch:
        root = scratch_root()
        self.workdir = Path(tempfile.mkdtemp(dir=root))
        self.logs = {stream: root / "logs" / f"{self.workdir.name}.{stream}" for stream in layout.LOG_STREAMS}
        return self

    @contextlib.contextmanager
    def folder(self, run_as: RunAs | None) -> Iterator[Path]:
        """The working folder of one run, emptied (or removed) when it ends."""
        if run_as is not None:
            run_as.check_possible()
            with job_folder() as folder:
                yield folder
            return
        try:
            yield self.workdir
        finally:
            self.empty()

    def empty(self) -> None:
        for entry in os.scandir(self.workdir):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)

    def __exit__(self, *_: Any) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
        for path in self.logs.values():
            path.unlink(missing_ok=True)
