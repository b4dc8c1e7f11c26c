"""Secret environment entries: sealed with a key the ledger never holds, shown as '****'.

Values are encrypted with Fernet (AES-128-CBC plus HMAC-SHA256, from `cryptography`) rather
than a home-made scheme. The key comes from ORCHESTRATOR_SECRET_KEY, or from
`<data dir>/secret.key`, created once with owner-only permissions; a copied SQLite file alone
therefore reveals no secret. Workers receive the opened values inside their task, because the
process needs them; nothing else (records, history, events, logs, dashboard) ever does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from orchestrator.errors import SecretsUnreadable

__all__ = ["MASK", "Sealer", "SecretsUnreadable", "masked"]

MASK = "****"
KEY_ENV = "ORCHESTRATOR_SECRET_KEY"
KEY_FILE = "secret.key"


def masked(env: dict[str, str]) -> dict[str, str]:
    return dict.fromkeys(env, MASK)


class Sealer:
    def __init__(self, key: bytes):
        self._fernet = Fernet(key)

    @classmethod
    def for_data_dir(cls, data_dir: Path, key: str | None = None) -> Sealer:
        """With `key` (the secret_key setting, ORCHESTRATOR_SECRET_KEY), else the data
        folder's key file."""
        return cls(key.encode() if key else _key_file(data_dir / KEY_FILE))

    def seal(self, env: dict[str, str]) -> bytes | None:
        return self._fernet.encrypt(json.dumps(env).encode()) if env else None

    def open(self, sealed: bytes) -> dict[str, str]:
        try:
            return json.loads(self._fernet.decrypt(sealed))
        except InvalidToken:
            raise SecretsUnreadable(
                f"the secret environment cannot be decrypted: sealed with another key "
                f"(was {KEY_FILE} replaced, or {KEY_ENV} changed?)"
            ) from None


def _key_file(path: Path) -> bytes:
    """The data folder's key, created on first use; O_EXCL so two servers agree on one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    key = Fernet.generate_key()
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return key
