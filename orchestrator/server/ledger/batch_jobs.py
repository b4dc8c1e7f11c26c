"""The batch-system jobs of a cluster's workers (`batch_jobs`): recorded when submitted,
forgotten when closed; what is left after a crash is cancelled at the next start."""

from __future__ import annotations

from orchestrator.models import utcnow
from orchestrator.server.ledger.connection import Connection, ts


class BatchJobsTable(Connection):
    def record_batch_job(self, job_id: str, cancel_command: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO batch_jobs (job_id, cancel_command, submitted_at) VALUES (?,?,?)",
                       (job_id, cancel_command, ts(utcnow())))

    def forget_batch_job(self, job_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM batch_jobs WHERE job_id = ?", (job_id,))

    def batch_jobs(self) -> list[tuple[str, str]]:
        """(job id, cancel command) of every batch job recorded and not closed."""
        return [(row[0], row[1]) for row in self._query("SELECT job_id, cancel_command FROM batch_jobs")]
