"""Finding jobs by a piece of their name, as `name LIKE '%text%'` did (case-insensitive for
ASCII letters only; `%`, `_` and `\\` literal), without scanning a million rows.

`jobs_search` (migration 12) is an FTS5 trigram index over lower(name), kept by triggers.
SQLite's lower() folds ASCII letters only, as LIKE compares, so a case-sensitive trigram
phrase match of the ASCII-lowered text on it is exactly LIKE's substring match. A trigram
index cannot serve fewer than three characters: those scan the index's own short copy of
the names with LIKE instead of the wide jobs rows.
"""

from __future__ import annotations

from typing import Any

from orchestrator.server.ledger.connection import Connection, like_escape

TRIGRAM = 3  # the fewest characters the index serves


def ascii_lower(text: str) -> str:
    """Lower-case ASCII letters only, as SQLite's lower() and LIKE do."""
    return "".join(c.lower() if "A" <= c <= "Z" else c for c in text)


def _matching(text: str) -> tuple[str, list[Any]]:
    """FROM-WHERE over `jobs_search` for the rows (rowid = jobs.seq) whose name contains `text`."""
    if len(text) >= TRIGRAM:
        phrase = '"' + ascii_lower(text).replace('"', '""') + '"'
        return "jobs_search WHERE jobs_search MATCH ?", [phrase]
    return "jobs_search WHERE name LIKE ? ESCAPE '\\'", [f"%{like_escape(text)}%"]


def search_clause(text: str) -> tuple[str, list[Any]]:
    """A WHERE clause on `jobs` (and its parameters) for jobs whose name contains `text`."""
    matching, params = _matching(text)
    return f"seq IN (SELECT rowid FROM {matching})", params


def search_page(ledger: Connection, text: str, offset: int, limit: int) -> tuple[int, list[int]]:
    """When the name is the only filter: the count, and the seqs of one page in seq order,
    read from the index alone (it has one row per job, kept by triggers), never joining the
    matches against the jobs table."""
    matching, params = _matching(text)
    count = ledger._query(f"SELECT COUNT(*) FROM {matching}", params)[0][0]
    rows = ledger._query(f"SELECT rowid FROM {matching} ORDER BY rowid LIMIT ? OFFSET ?",
                         [*params, int(limit), int(offset)]) if offset < count else []
    return count, [row[0] for row in rows]
