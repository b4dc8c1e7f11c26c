"""The one Store callers use: every table group over one pair of connections."""

from __future__ import annotations

from orchestrator.server.ledger.accounts import AccountsTable
from orchestrator.server.ledger.batch_jobs import BatchJobsTable
from orchestrator.server.ledger.binaries import BinariesTable
from orchestrator.server.ledger.job_types import JobTypesTable
from orchestrator.server.ledger.jobs import JobFilesTable, JobsTable
from orchestrator.server.ledger.secrets import SecretsTable
from orchestrator.server.ledger.sweeps import SweepsTable


class Store(JobsTable, JobFilesTable, SweepsTable, BinariesTable, AccountsTable, SecretsTable, JobTypesTable,
            BatchJobsTable):
    """The ledger (SQLite, WAL): jobs, their status history, output manifests, shares, sweeps,
    binaries, job types, tokens and sealed secrets. It is the truth after any crash: the engine rebuilds
    its view of the world from it."""

    def _after_open(self) -> None:
        self.drop_half_created_sweeps()
