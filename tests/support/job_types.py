"""Scale's example job type (`test` 1.0.0) as the tests register it: its manifest, its script
uploaded as the binary it runs, and its configuration with a secret setting."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import httpx

FOLDER = Path(__file__).resolve().parent.parent / "data" / "job_types" / "test"
DB_PASS = "s3cr3t-pa55word-never-shown"
CONFIGURATION = {"settings": {"DB_HOST": "db.example", "DB_PASS": DB_PASS}}


def manifest(**job: Any) -> dict[str, Any]:
    """The manifest, with `job` fields replaced (a new version, another command, ...)."""
    seed = json.loads((FOLDER / "manifest.json").read_text())
    seed = copy.deepcopy(seed)
    seed["job"].update(job)
    return seed


def register(admin: httpx.Client, **job: Any) -> dict[str, Any]:
    """Upload run.sh as a binary of the admin and register the type; the details answered."""
    uploaded = admin.post("/binaries/run.sh", content=(FOLDER / "run.sh").read_bytes())
    assert uploaded.status_code == 201, uploaded.text
    created = admin.post("/job-types", json={"manifest": manifest(**job), "configuration": CONFIGURATION})
    assert created.status_code == 201, created.text
    return created.json()


def run(client: httpx.Client, text: bytes, length: Any = 5, ref: str = "test@1.0.0", **extra: Any) -> httpx.Response:
    """POST /jobs of the type with INPUT_TEXT uploaded as a file part."""
    fields = {"job_type": ref, "inputs": json.dumps({"files": {"INPUT_TEXT": ["in.txt"]},
                                                    "json": {"READ_LENGTH": length}}),
              **{k: v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()}}
    return client.post("/jobs", data=fields, files=[("file[]", ("in.txt", text, "text/plain"))])
