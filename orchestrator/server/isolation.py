"""Whose identity a job runs under, decided on the server (multi-user mode).

With tokens in use, users do not trust each other, so each user's job processes run under
their own unprivileged uid (workers as root switch to it, see jobuser.py): from a configured
mapping of users to OS accounts, else a uid from a range handed out once per user and kept in
the ledger. Where that cannot hold (the scheduler link is not authenticated, or a worker is
not root), jobs of non-admin users are refused unless the server was told users are trusted;
a job already accepted never silently falls back to the worker's identity: its worker fails
it instead, saying why.
"""

from __future__ import annotations

import pwd
import time
from collections.abc import Callable
from typing import Any

from orchestrator.errors import IsolationUnavailable
from orchestrator.server.auth import Principal
from orchestrator.server.ledger import Store
from orchestrator.worker.jobuser import can_switch_identity

WORKER_CHECK_S = 10.0
Identity = dict[str, Any]  # {"uid", "gid", "user"}: what a run spec's `run_as` holds


class JobIdentities:
    """Each orchestrator user's OS identity for their jobs; stable across restarts."""

    def __init__(self, store: Store, uid_range: tuple[int, int], accounts: dict[str, str]):
        self.store = store
        self.low, self.high = uid_range
        self.accounts = accounts
        self._known: dict[str, Identity] = {}
        for user in accounts:
            self.for_user(user)  # a mapping to a missing account fails at start, not per job

    def for_user(self, user: str) -> Identity:
        if user not in self._known:
            self._known[user] = self._mapped(user) if user in self.accounts else self._allocated(user)
        return self._known[user]

    def _mapped(self, user: str) -> Identity:
        account = self.accounts[user]
        try:
            entry = pwd.getpwnam(account)
        except KeyError:
            raise ValueError(f"job_accounts maps {user} to {account!r}, which is no OS account") from None
        if entry.pw_uid == 0 or entry.pw_gid == 0:
            raise ValueError(f"job_accounts maps {user} to {account!r}: jobs never run as root")
        return {"uid": entry.pw_uid, "gid": entry.pw_gid, "user": account}

    def _allocated(self, user: str) -> Identity:
        """The user's uid from the range, handed out on their first job (gid = uid)."""
        uid = self.store.job_uid(user, self._next_free)
        return {"uid": uid, "gid": uid, "user": user}

    def _next_free(self, highest: int | None) -> int:
        uid = max(self.low, (highest or 0) + 1)
        while uid <= self.high and _is_account(uid):
            uid += 1  # never share a uid with a real account of this machine
        if uid > self.high:
            raise IsolationUnavailable(f"no free uid is left in the job uid range {self.low}-{self.high}")
        return uid


def _is_account(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


class Isolation:
    """Decides each job's `run_as`, and whether a user's job may be accepted at all."""

    def __init__(
        self,
        identities: JobIdentities | None,
        multi_user: Callable[[], bool],
        *,
        trusted_users: bool,
        cluster_authenticated: Callable[[], bool],
        is_admin: Callable[[str], bool],
    ):
        self.identities = identities
        self.multi_user = multi_user
        self.trusted_users = trusted_users
        self.cluster_authenticated = cluster_authenticated
        self.is_admin = is_admin
        self._workers_can_switch: bool | None = None  # None: no worker seen yet
        self._checked_at = float("-inf")

    @classmethod
    def single_user(cls) -> Isolation:
        """Jobs keep the worker's identity: the one user owns the machine."""
        return cls(None, lambda: False, trusted_users=True, cluster_authenticated=lambda: True,
                   is_admin=lambda _: True)

    async def refresh(self, client: Any) -> None:
        """Ask every worker whether it can switch identities (runs as root)."""
        try:
            answers = await client.run(can_switch_identity)
        except Exception:  # noqa: BLE001 - scheduler away: keep what was known
            return
        self._workers_can_switch = all(answers.values()) if answers else None
        self._checked_at = time.monotonic()

    @property
    def available(self) -> bool:
        return (self.identities is not None and self.cluster_authenticated()
                and self._workers_can_switch is not False)

    def why_unavailable(self) -> str:
        reasons = []
        if self.identities is None:
            reasons.append("no job identities are configured")
        if not self.cluster_authenticated():
            reasons.append("the Dask scheduler link is not authenticated (no TLS), so a job could reach it")
        if self._workers_can_switch is False:
            reasons.append("a Dask worker does not run as root, so it cannot run jobs as their users")
        return "; ".join(reasons) or "isolation is available"

    def run_as(self, owner: str) -> Identity | None:
        """The identity `owner`'s job runs under; None: the worker's own."""
        if self.identities is None or not self.multi_user():
            return None
        if not self.available and (self.trusted_users or self.is_admin(owner)):
            return None
        return self.identities.for_user(owner)

    async def check(self, principal: Principal | None, client: Any) -> None:
        """Refuse a non-admin user's work where their jobs would run as the orchestrator."""
        if principal is None or principal.admin or self.trusted_users or not self.multi_user():
            return
        if time.monotonic() - self._checked_at > WORKER_CHECK_S:
            await self.refresh(client)
        if not self.available:
            raise IsolationUnavailable(
                f"this server cannot run {principal.user}'s jobs under their own identity: "
                f"{self.why_unavailable()}. Run workers as root with TLS, or start the server "
                "with --trusted-users if every user may act as the server",
                {"isolation": self.why_unavailable()},
            )
