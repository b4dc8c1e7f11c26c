"""API tokens: random secrets shown once, kept in the ledger only as sha256 hashes.

A token is 32 random bytes, so a plain sha256 is enough to store it (there is nothing to
brute-force the way a password can be); the stored hash is compared in constant time.
Authentication is required whenever any token exists, and a server that binds a
non-loopback address refuses to start without one.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass

from orchestrator.paths import safe_name
from orchestrator.store import Store

TOKEN_PREFIX = "orch_"
SCHEMES = ("token", "bearer")


@dataclass(frozen=True)
class Principal:
    """Who asks. Services take one to decide what it may see and change; `None` in their
    place means the orchestrator itself (recovery, internal bookkeeping)."""

    user: str
    admin: bool

    @property
    def scope(self) -> str | None:
        """The only owner whose work this principal lists, or None for everyone's (admins)."""
        return None if self.admin else self.user

    def owns(self, owner: str) -> bool:
        return self.admin or owner == self.user


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_authorization(header: str | None) -> str | None:
    """The token of `Token <t>` or `Bearer <t>`; None when absent or malformed."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() not in SCHEMES or not token or len(token) > 512:
        return None
    return token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Tokens:
    def __init__(self, store: Store):
        self.store = store

    def create(self, user: str, admin: bool = False) -> str:
        """A new token for `user`; the only time it is ever seen in clear.

        User names become storage path segments (binaries/<owner>/...), so they follow the
        same rule as binary names."""
        safe_name(user)
        token = new_token()
        self.store.insert_token(user, token_hash(token), admin)
        return token

    def revoke(self, user: str) -> int:
        """Every active token of `user`; how many there were."""
        return self.store.revoke_tokens(user)

    def required(self) -> bool:
        """Asked on every request (a count on a tiny table), so a first token created by the
        CLI beside a running server is required from the next request on."""
        return self.store.active_token_count() > 0

    def authenticate(self, header: str | None) -> Principal | None:
        token = parse_authorization(header)
        if token is None:
            return None
        digest = token_hash(token)
        found = self.store.active_token(digest)
        if found is None or not hmac.compare_digest(found["hash"], digest):
            return None
        return Principal(found["user"], bool(found["admin"]))
