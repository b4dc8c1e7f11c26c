"""The ledger's SQLite connections: one writer shared by the service's threads behind a lock,
one reader that sees the last commit without waiting for a write, and the helpers every table
group uses (transactions, reads, `select_in` for any number of keys)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from orchestrator.paths import private_file, private_folder
from orchestrator.server.ledger.migrations import migrate

IN_CHUNK = 900  # keys per `IN (...)`: SQLite limits the parameters of one statement


# Pages each connection keeps (SQLite's default is 2 MiB): a million-row ledger's indexes churn
# through a small cache when a sweep's runs are recorded or stopped as a set.
CACHE_KIB = 64 * 1024


class Connection:
    """A writer connection shared by the service's threads, serialised by a lock, and a
    reader connection, so reads see the last commit without waiting for a write.

    Opening brings the ledger's schema up to date (numbered migrations, see migrations.py).
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        private_folder(self.path.parent)
        private_file(self.path)  # the ledger holds token hashes and sealed secrets
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        self._db.execute("PRAGMA temp_store=MEMORY")  # a set-based change's scratch tables
        migrate(self._db, self.path)
        # Reads get their own connection: under WAL they see the last commit without waiting
        # for a long write (a million-run sweep being recorded) to finish.
        self._reader = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._reader.row_factory = sqlite3.Row
        self._reader.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        self._read_lock = threading.Lock()
        self._after_open()

    def _after_open(self) -> None:
        """Repairs a table group makes once the schema is current (see Store)."""

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._reader.close()
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._read_lock:
            return self._reader.execute(sql, tuple(params)).fetchall()

    def select_in(self, sql: str, keys: list[str], params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        """`sql` with its `IN ({})` filled for any number of keys, a chunk per query (SQLite
        limits the parameters of one statement); `params` come before the keys."""
        before = tuple(params)
        rows: list[sqlite3.Row] = []
        for chunk in chunks(keys):
            rows += self._query(sql.format(",".join("?" * len(chunk))), (*before, *chunk))
        return rows


def chunks(items: list[str], size: int = IN_CHUNK) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def marks(count: int) -> str:
    """`?,?,?` for `count` parameters."""
    return ",".join("?" * count)


def ts(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
