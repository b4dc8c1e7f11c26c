"""API tokens: random secrets shown once, kept in the ledger only as sha256 hashes.

A token is 32 random bytes, so a plain sha256 is enough to store it (there is nothing to
brute-force the way a password can be); the stored hash is compared in constant time.

Authentication fails closed: once a ledger has ever held a token it is required (multi-user
mode) until an admin turns it off with `orchestrator auth disable`, which the ledger records
with who and when. Revoking the last token therefore locks the API instead of opening it, and
a server that binds a non-loopback address refuses to start unless authentication is required
and some token is active.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from orchestrator.paths import safe_name

if TYPE_CHECKING:
    from orchestrator.server.ledger import Store

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
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(host: str) -> str:
    """A bare host name as the Host header check compares it: lower case, no brackets around
    an IPv6 address, no trailing dot; refused if it carries a scheme, port or path."""
    name = host.strip().lower().rstrip(".")
    bare = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    if not bare or any(ch in bare for ch in "/@?#[] ") or (":" in bare and not _is_ip(bare)):
        raise ValueError(f"{host!r} is not a host name (give a name or address, without scheme or port)")
    return bare


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def split_host(netloc: str) -> tuple[str, int | None]:
    """(name, port) of a Host header or URL authority; ValueError when malformed."""
    parts = urlsplit("//" + netloc)
    if parts.username is not None or parts.password is not None or parts.path:
        raise ValueError(f"not a host: {netloc!r}")
    return host_name(parts.hostname or ""), parts.port


@dataclass(frozen=True)
class AuthState:
    """Whether the ledger requires tokens, why, and whether anyone could present one."""

    required: bool
    changed_by: str | None  # who ran `orchestrator auth enable/disable` last; None: never
    changed_at: str | None
    active_tokens: int

    @property
    def locked(self) -> bool:
        """Required with no active token: every route but /health answers 401."""
        return self.required and self.active_tokens == 0

    def describe(self) -> str:
        if self.changed_by is not None:
            how = "enabled" if self.required else "disabled"
            reason = f"{how} by {self.changed_by} at {self.changed_at}"
        elif self.required:
            reason = "since the first token was created"
        else:
            reason = "no token was ever created: a one-user machine"
        state = "required" if self.required else "off"
        lock = "; LOCKED: no token is active, create one" if self.locked else ""
        return f"authentication {state} ({reason}); {self.active_tokens} active token(s){lock}"


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
        """Whether requests need a token. Asked on every request (one lookup on tiny tables),
        so a change made by the CLI beside a running server holds from the next request on."""
        return self.store.auth_required()

    def multi_user(self) -> bool:
        """Multi-user mode is exactly 'authentication required': work then belongs to the
        token's user, and nobody is the default admin owner."""
        return self.required()

    def state(self) -> AuthState:
        change = self.store.last_auth_change()
        return AuthState(
            required=self.required(),
            changed_by=change["changed_by"] if change else None,
            changed_at=change["changed_at"] if change else None,
            active_tokens=self.store.active_token_count(),
        )

    def set_required(self, required: bool, by: str) -> AuthState:
        """`orchestrator auth enable/disable`: an explicit choice, recorded with who made it."""
        self.store.record_auth_change(required, by)
        return self.state()

    def authenticate(self, header: str | None) -> Principal | None:
        token = parse_authorization(header)
        if token is None:
            return None
        digest = token_hash(token)
        found = self.store.active_token(digest)
        if found is None or not hmac.compare_digest(found["hash"], digest):
            return None
        return Principal(found["user"], bool(found["admin"]))
