"""Uploaded binaries, versioned per owner and name (`binaries`)."""

from __future__ import annotations

from orchestrator.models import BinaryRecord
from orchestrator.server.ledger.connection import Connection, like_escape, ts


class BinariesTable(Connection):
    def next_binary_version(self, owner: str, name: str) -> int:
        rows = self._query("SELECT MAX(version) FROM binaries WHERE owner = ? AND name = ?", (owner, name))
        return (rows[0][0] or 0) + 1

    def insert_binary(self, binary: BinaryRecord) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO binaries (owner, name, version, size, sha256, content_type, uploaded_at)"
                " VALUES (?,?,?,?,?,?,?)",
                (binary.owner, binary.name, binary.version, binary.size, binary.sha256,
                 binary.content_type, ts(binary.uploaded_at)),
            )

    def get_binary(self, owner: str, name: str, version: int | None = None) -> BinaryRecord | None:
        if version is None:
            rows = self._query(
                "SELECT * FROM binaries WHERE owner = ? AND name = ? ORDER BY version DESC LIMIT 1",
                (owner, name),
            )
        else:
            rows = self._query(
                "SELECT * FROM binaries WHERE owner = ? AND name = ? AND version = ?",
                (owner, name, version),
            )
        return BinaryRecord(**dict(rows[0])) if rows else None

    def list_binaries(
        self, owner: str | None = None, search: str | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[int, list[BinaryRecord]]:
        """The latest version of each binary name (of one owner, or of everyone)."""
        clauses, params = [], []
        if owner is not None:
            clauses.append("owner = ?")
            params.append(owner)
        if search:
            clauses.append("name LIKE ? ESCAPE '\\'")
            params.append(f"%{like_escape(search)}%")
        where = "WHERE " + " AND ".join(clauses) if clauses else ""
        latest = (
            f"SELECT b.* FROM binaries b JOIN (SELECT owner, name, MAX(version) v FROM binaries {where}"
            " GROUP BY owner, name) m ON b.owner = m.owner AND b.name = m.name AND b.version = m.v"
        )
        count = self._query(f"SELECT COUNT(*) FROM ({latest})", params)[0][0]
        rows = self._query(f"{latest} ORDER BY b.name, b.owner LIMIT ? OFFSET ?", [*params, limit, offset])
        return count, [BinaryRecord(**dict(row)) for row in rows]

    def binary_versions(self, owner: str, name: str) -> list[BinaryRecord]:
        rows = self._query("SELECT * FROM binaries WHERE owner = ? AND name = ? ORDER BY version",
                           (owner, name))
        return [BinaryRecord(**dict(row)) for row in rows]

    def delete_binary(self, owner: str, name: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM binaries WHERE owner = ? AND name = ?", (owner, name))

    def binary_versions_known(self) -> set[tuple[str, str, int]]:
        """(owner, name, version) of every binary in the ledger: a small table, read whole."""
        return {(row[0], row[1], row[2]) for row in self._query("SELECT owner, name, version FROM binaries")}
