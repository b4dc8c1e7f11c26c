"""Sealed (encrypted) secret environments of jobs and sweeps (`secrets`); orchestrator.server.secrets
seals and opens them, the ledger only keeps the bytes."""

from __future__ import annotations

import sqlite3

from orchestrator.server.ledger.connection import Connection


class SecretsTable(Connection):
    def sealed_secrets(self, holders: list[str]) -> dict[str, bytes]:
        """The encrypted secret environment of each of these jobs (or sweeps) that has one."""
        rows = self.select_in("SELECT holder, sealed FROM secrets WHERE holder IN ({})", holders)
        return {row[0]: bytes(row[1]) for row in rows}


def insert_sealed(db: sqlite3.Connection, holder: str, sealed: bytes | None) -> None:
    """A job's (sweep's) sealed secrets, inside the transaction that records it."""
    if sealed is not None:
        db.execute("INSERT INTO secrets (holder, sealed) VALUES (?, ?)", (holder, sealed))


def replace_sealed(db: sqlite3.Connection, holder: str, sealed: bytes | None) -> None:
    """A holder's sealed secrets as they are now (none: removed), inside the caller's transaction."""
    db.execute("DELETE FROM secrets WHERE holder = ?", (holder,))
    insert_sealed(db, holder, sealed)
