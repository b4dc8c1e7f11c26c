"""Finding jobs by a piece of their name, as `name LIKE '%text%'` did (case-insensitive for
ASCII letters only; `%`, `_` and `\\` literal), without scanning a million rows.

Migration 12 keeps each distinct ASCII-lowered name once (`job_names`, with how many jobs
bear it) in an FTS5 trigram index (`names_search`), and indexes jobs by lower(name). SQLite's
lower() folds ASCII letters only, as LIKE compares, so a case-sensitive trigram phrase match of
the ASCII-lowered text is exactly LIKE's substring match. The matching names are few (a sweep's
runs share one), so the jobs bearing them are found through the lower(name) index. A trigram
index cannot serve fewer than three characters: those scan the distinct names with LIKE.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any

from orchestrator.server.ledger.connection import Connection, like_escape

TRIGRAM = 3  # the fewest characters the index serves
MAX_MERGED_NAMES = 64  # more matching names than this: one query over them all


def ascii_lower(text: str) -> str:
    """Lower-case ASCII letters only, as SQLite's lower() and LIKE do."""
    return "".join(c.lower() if "A" <= c <= "Z" else c for c in text)


def _names(text: str) -> tuple[str, list[Any]]:
    """FROM-WHERE over `job_names` for the distinct names containing `text` (borne by a job)."""
    if len(text) >= TRIGRAM:
        phrase = '"' + ascii_lower(text).replace('"', '""') + '"'
        return ("job_names WHERE n > 0 AND id IN (SELECT rowid FROM names_search WHERE names_search MATCH ?)",
                [phrase])
    return "job_names WHERE n > 0 AND name LIKE ? ESCAPE '\\'", [f"%{like_escape(text)}%"]


def search_clause(text: str) -> tuple[str, list[Any]]:
    """A WHERE clause on `jobs` (and its parameters) for jobs whose name contains `text`."""
    names, params = _names(text)
    return f"lower(name) IN (SELECT name FROM {names})", params


def search_page(ledger: Connection, text: str, offset: int, limit: int) -> tuple[int, list[int]]:
    """When the name is the only filter: the count (kept per name) and the seqs of one page in
    seq order. Few matching names (the usual case: a sweep's runs share one) are each read in
    seq order from the lower(name) index and merged, so a page costs its own rows, never a
    scan of the jobs for the rare ones or a sort of the many."""
    names, params = _names(text)
    matched = ledger._query(f"SELECT name, n FROM {names}", params)
    count = sum(row[1] for row in matched)
    if offset >= count:
        return count, []
    if len(matched) > MAX_MERGED_NAMES:
        rows = ledger._query(f"SELECT seq FROM jobs WHERE lower(name) IN (SELECT name FROM {names})"
                             " ORDER BY seq LIMIT ? OFFSET ?", [*params, int(limit), int(offset)])
        return count, [row[0] for row in rows]
    wanted = int(offset) + int(limit)
    runs = [[row[0] for row in ledger._query(
        "SELECT seq FROM jobs WHERE lower(name) = ? ORDER BY seq LIMIT ?", (name, wanted))]
        for name, _ in matched]
    return count, list(itertools.islice(heapq.merge(*runs), int(offset), wanted))
