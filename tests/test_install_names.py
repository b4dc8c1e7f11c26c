"""The installed names cannot collide: the repository's storage/ and plugins/ folders install
as orchestrator.storage and orchestrator.plugins. With `pip install -e .` they once installed
as top-level `storage` and `plugins`, and a Dask worker (which puts its local directory, home
of its own spill folder `storage`, on sys.path) imported the spill folder instead: every job
on an external cluster failed."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port, kill_session


@pytest.fixture(scope="module")
def editable_python(tmp_path_factory) -> Path:
    """A virtual environment with this checkout installed the developers' way (editable).

    It sees this interpreter's packages (dask, ...) through a mirror of site-packages that
    leaves out any installed copy of this project, so only the editable install provides it.
    """
    base = tmp_path_factory.mktemp("editable")
    mirror = base / "site"
    mirror.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if entry.name != "orchestrator" and not entry.name.startswith(("dask_orchestrator", "__editable__")):
            (mirror / entry.name).symlink_to(entry)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    own_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
    Path(own_site, "mirror.pth").write_text(f"{mirror}\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(REPO)],
                   check=True, timeout=300, capture_output=True)
    return python


def test_a_worker_of_an_editable_install_runs_jobs_beside_folders_named_storage_and_plugins(
    editable_python: Path, make_server, tmp_path: Path
):
    place = tmp_path / "worker-place"
    for shadow in ("storage", "plugins"):  # what a user's or Dask's own folders may be called
        (place / shadow).mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    port = free_port()
    started = []
    try:
        started.append(subprocess.Popen(
            [str(editable_python), "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
             "--port", str(port), "--no-dashboard"], cwd=place, env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        started.append(subprocess.Popen(
            [str(editable_python), "-m", "distributed.cli.dask_worker", f"tcp://127.0.0.1:{port}",
             "--nthreads", "1", "--resources", "CPU=1", "--no-dashboard", "--local-directory", str(place),
             "--preload", "orchestrator.plugins.worker"],
            cwd=place, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        server = make_server(scheduler=f"tcp://127.0.0.1:{port}", tls_ca_file=None, tls_cert=None, tls_key=None)
        response = server.http.post("/jobs", params={"sync": "true", "timeout": 120}, timeout=180,
                                    files=[("file[]", ("in.txt", b"staged"))], data={"command": "cat in.txt"})
        job = response.json()
        assert job["status"] == "COMPLETED", (job["status_reason"], job)
        assert server.http.get(f"/jobs/{job['id']}/logs").text == "staged"
        assert job["attempt"] == 1  # the worker never died importing the wrong `storage`
    finally:
        for process in started:
            kill_session(process)
