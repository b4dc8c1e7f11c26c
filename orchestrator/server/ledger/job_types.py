"""Job types (`job_types`), the manifest revisions of each (`job_type_revisions`), and their
sealed secret settings (in `secrets`, held as `type:name@version`)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from orchestrator.server.ledger.connection import Connection, ts
from orchestrator.server.ledger.secrets import replace_sealed

_JSON_COLUMNS = ("tags", "maintainer", "configuration")


@dataclass
class JobTypeRow:
    """A job type as stored: `configuration` holds the non-secret settings' values and only
    the names of secret ones (`secret_settings`); their values are sealed apart."""

    name: str
    version: str
    title: str
    description: str
    revision_num: int
    configuration: dict[str, Any]
    created_by: str
    created: datetime
    last_modified: datetime
    tags: list[str] = field(default_factory=list)
    icon_code: str | None = None
    maintainer: dict[str, Any] | None = None
    is_active: bool = True
    is_paused: bool = False
    max_scheduled: int | None = None
    paused: datetime | None = None
    deprecated: datetime | None = None

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def secret_holder(self) -> str:
        return secret_holder(self.name, self.version)


def secret_holder(name: str, version: str) -> str:
    return f"type:{name}@{version}"


class JobTypesTable(Connection):
    def save_job_type(self, row: JobTypeRow, manifest: dict[str, Any] | None, sealed: bytes | None) -> None:
        """Insert or replace the type; with `manifest`, also record it as revision
        `row.revision_num`. Its sealed secret settings are replaced in the same transaction."""
        values = _encoded(row)
        with self.transaction() as db:
            db.execute(
                f"INSERT OR REPLACE INTO job_types ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                list(values.values()),
            )
            if manifest is not None:
                db.execute(
                    "INSERT INTO job_type_revisions (name, version, revision_num, manifest, created)"
                    " VALUES (?,?,?,?,?)",
                    (row.name, row.version, row.revision_num, json.dumps(manifest), ts(row.last_modified)),
                )
            replace_sealed(db, row.secret_holder, sealed)

    def get_job_type(self, name: str, version: str) -> JobTypeRow | None:
        rows = self._query("SELECT * FROM job_types WHERE name = ? AND version = ?", (name, version))
        return _decoded(rows[0]) if rows else None

    def job_types(self, name: str | None = None) -> list[JobTypeRow]:
        """Every type (of one name): a small table, read whole and ordered by the caller."""
        if name is None:
            rows = self._query("SELECT * FROM job_types")
        else:
            rows = self._query("SELECT * FROM job_types WHERE name = ?", (name,))
        return [_decoded(row) for row in rows]

    def job_type_revisions(self, name: str, version: str) -> list[tuple[int, dict[str, Any], str]]:
        """(revision_num, manifest, created) of every revision, oldest first."""
        rows = self._query(
            "SELECT revision_num, manifest, created FROM job_type_revisions WHERE name = ? AND version = ?"
            " ORDER BY revision_num", (name, version))
        return [(row[0], json.loads(row[1]), row[2]) for row in rows]

    def job_type_manifest(self, name: str, version: str, revision: int) -> dict[str, Any] | None:
        rows = self._query(
            "SELECT manifest FROM job_type_revisions WHERE name = ? AND version = ? AND revision_num = ?",
            (name, version, revision))
        return json.loads(rows[0][0]) if rows else None

    def delete_job_type(self, name: str, version: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM job_type_revisions WHERE name = ? AND version = ?", (name, version))
            db.execute("DELETE FROM job_types WHERE name = ? AND version = ?", (name, version))
            db.execute("DELETE FROM secrets WHERE holder = ?", (secret_holder(name, version),))

    def count_jobs_of_type(self, name: str, version: str, statuses: list[str] | None = None) -> int:
        sql, params = "SELECT COUNT(*) FROM jobs WHERE job_type = ?", [f"{name}@{version}"]
        if statuses is not None:
            sql += f" AND status IN ({', '.join('?' * len(statuses))})"
            params += statuses
        return self._query(sql, params)[0][0]


def _encoded(row: JobTypeRow) -> dict[str, Any]:
    values = asdict(row)
    for column in _JSON_COLUMNS:
        values[column] = json.dumps(values[column]) if values[column] is not None else None
    for column in ("created", "last_modified", "paused", "deprecated"):
        values[column] = ts(values[column])
    values["is_active"], values["is_paused"] = int(row.is_active), int(row.is_paused)
    return values


def _decoded(row: sqlite3.Row) -> JobTypeRow:
    values = dict(row)
    for column in _JSON_COLUMNS:
        values[column] = json.loads(values[column]) if values[column] is not None else None
    for column in ("created", "last_modified", "paused", "deprecated"):
        values[column] = datetime.fromisoformat(values[column]) if values[column] else None
    values["is_active"], values["is_paused"] = bool(values["is_active"]), bool(values["is_paused"])
    return JobTypeRow(**values)
