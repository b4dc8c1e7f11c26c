"""Who may use the API and as whom their jobs run: API tokens (`tokens`), explicit
auth enable/disable choices (`auth_changes`) and each user's job uid (`job_uids`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from orchestrator.server.ledger.connection import Connection, ts


class AccountsTable(Connection):
    def insert_token(self, user: str, digest: str, admin: bool) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO tokens (user, hash, admin, created_at) VALUES (?,?,?,?)",
                       (user, digest, int(admin), ts(datetime.now(timezone.utc))))

    def revoke_tokens(self, user: str) -> int:
        with self.transaction() as db:
            return db.execute("UPDATE tokens SET revoked_at = ? WHERE user = ? AND revoked_at IS NULL",
                              (ts(datetime.now(timezone.utc)), user)).rowcount

    def active_token(self, digest: str) -> dict[str, Any] | None:
        rows = self._query("SELECT user, hash, admin FROM tokens WHERE hash = ? AND revoked_at IS NULL",
                           (digest,))
        return dict(rows[0]) if rows else None

    def active_token_count(self) -> int:
        return self._query("SELECT COUNT(*) FROM tokens WHERE revoked_at IS NULL")[0][0]

    def list_tokens(self) -> list[dict[str, Any]]:
        """Who holds tokens, never the hashes."""
        rows = self._query("SELECT seq AS id, user, admin, created_at, revoked_at FROM tokens ORDER BY seq")
        return [dict(row) for row in rows]

    def auth_required(self) -> bool:
        """The last explicit choice, or else whether any token was ever created (revoked ones
        too: revoking the last token locks the API rather than opening it). Asked per request."""
        return bool(self._query(
            "SELECT COALESCE((SELECT required FROM auth_changes ORDER BY seq DESC LIMIT 1), "
            "EXISTS (SELECT 1 FROM tokens))"
        )[0][0])

    def record_auth_change(self, required: bool, by: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO auth_changes (required, changed_by, changed_at) VALUES (?,?,?)",
                       (int(required), by, ts(datetime.now(timezone.utc))))

    def last_auth_change(self) -> dict[str, Any] | None:
        rows = self._query("SELECT required, changed_by, changed_at FROM auth_changes ORDER BY seq DESC LIMIT 1")
        return dict(rows[0]) if rows else None

    def job_uid(self, user: str, next_free: Callable[[int | None], int]) -> int:
        """`user`'s uid for their jobs, handed out on first use: `next_free(highest uid handed
        out so far, or None)` picks it, inside the transaction that records it."""
        with self.transaction() as db:
            row = db.execute("SELECT uid FROM job_uids WHERE user = ?", (user,)).fetchone()
            if row is not None:
                return int(row[0])
            uid = next_free(db.execute("SELECT MAX(uid) FROM job_uids").fetchone()[0])
            db.execute("INSERT INTO job_uids (user, uid) VALUES (?, ?)", (user, uid))
            return uid
