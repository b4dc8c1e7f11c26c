"""The ledger (SQLite, WAL): the truth after any crash. One module per table group, the
connections and numbered schema migrations beside them, and `Store` composing them all."""

from orchestrator.ledger.jobs import StatusUpdate
from orchestrator.ledger.migrations import LATEST, MIGRATIONS
from orchestrator.ledger.store import Store
from orchestrator.ledger.sweeps import INSERT_CHUNK, SweepRow

__all__ = ["INSERT_CHUNK", "LATEST", "MIGRATIONS", "StatusUpdate", "Store", "SweepRow"]
