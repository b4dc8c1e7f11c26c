"""The ledger (SQLite, WAL): the truth after any crash. One module per table group, the
connections and numbered schema migrations beside them, and `Store` composing them all."""

from orchestrator.server.ledger.job_types import JobTypeRow
from orchestrator.server.ledger.jobs import Admitted, StatusUpdate
from orchestrator.server.ledger.migrations import LATEST, MIGRATIONS
from orchestrator.server.ledger.store import Store
from orchestrator.server.ledger.sweeps import INSERT_CHUNK, SweepRow

__all__ = ["Admitted", "INSERT_CHUNK", "JobTypeRow", "LATEST", "MIGRATIONS", "StatusUpdate", "Store", "SweepRow"]
