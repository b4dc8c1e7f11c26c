"""The orchestrator service: store, storage, cluster and engine wired together.

The REST server and the embedded Python API each run one of these on an event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from orchestrator.config import Settings
from orchestrator.paths import private_folder
from orchestrator.plugins.worker import OrchestratorWorkerPlugin
from orchestrator.server import batch_jobs, cluster
from orchestrator.server.auth import Tokens
from orchestrator.server.binaries import BinaryService
from orchestrator.server.board import BoardFeed
from orchestrator.server.engine import Engine
from orchestrator.server.events import EventHub
from orchestrator.server.explorer_feed import ExplorerFeed
from orchestrator.server.isolation import Isolation, JobIdentities
from orchestrator.server.job_types import JobTypeService
from orchestrator.server.jobs import JobService
from orchestrator.server.ledger import Store
from orchestrator.server.metrics import Metrics
from orchestrator.server.secrets import Sealer
from orchestrator.server.sweeps import SweepService
from orchestrator.storage import Storage

logger = logging.getLogger(__name__)


class Service:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.store: Store
        self.storage: Storage
        self.connection: cluster.ClusterConnection
        self.engine: Engine
        self.binaries: BinaryService
        self.job_types: JobTypeService
        self.jobs: JobService
        self.sweeps: SweepService
        self.events: EventHub
        self.metrics: Metrics
        self.board: BoardFeed
        self.explorer: ExplorerFeed
        self.tokens: Tokens
        self.api_url: str | None = None  # the REST API's URL once it listens (explorer links)

    async def start(self) -> Service:
        settings = self.settings
        private_folder(settings.data_dir)  # ledger, secret.key and local storage: no job may read them
        self.store = Store(settings.database_path)
        self.tokens = Tokens(self.store)
        key = settings.secret_key.get_secret_value() if settings.secret_key else None
        self.sealer = Sealer.for_data_dir(settings.data_dir, key)
        self.storage = Storage(settings.storage_url, **settings.storage_options)
        if os.path.isabs(self.storage.root):  # a local folder (made now, not mid-request)
            private_folder(Path(self.storage.root))
        await asyncio.to_thread(batch_jobs.cancel_leftovers, self.store)
        self.connection = await cluster.connect(settings)
        if self.connection.batch_jobs is not None:
            batch_jobs.record(self.store, self.connection.batch_jobs)
        self.engine = Engine(
            self.connection.client, self.store, settings.storage_url,
            can_grow=settings.can_grow, worker_loss_retries=settings.worker_loss_retries,
            sealer=self.sealer, reconnect=self.connection.reconnect, isolation=self._isolation(),
            worker_shape=self.connection.worker_shape,
            worker_plugin=OrchestratorWorkerPlugin(context_idle_s=settings.context_idle_s,
                                                   max_contexts=settings.max_contexts),
        )
        self.binaries = BinaryService(self.store, self.storage)
        self.job_types = JobTypeService(self.store, self.binaries, self.sealer, self.engine.fixed_offers)
        self.engine.contracts = self.job_types.revision_contract
        self.job_types.on_flags_changed.append(lambda row: self.engine.release_type(row.key))
        self.jobs = JobService(
            self.store, self.storage, self.engine, self.binaries, self.sealer,
            settings.max_queued_per_user, self.job_types,
        )
        self.sweeps = SweepService(
            self.store, self.storage, self.engine, self.binaries, self.sealer, settings.max_sweep_runs,
            self.job_types,
        )
        self.sweeps.dashboard_link = self.dashboard_link  # each sweep's record links its explorer
        self.events = EventHub(self.engine)
        self.metrics = Metrics(self.store, self.engine)
        self.board = BoardFeed(self.store, self.engine)
        self.explorer = ExplorerFeed(
            self.store, self.engine, api_url=lambda: self.api_url,
            allowed=lambda: settings.dashboard_outputs or not self.tokens.required(),
        )
        await self.engine.start()
        self.board.start()
        self.explorer.start()
        await self.sweeps.resume()
        await self.jobs.finish_pending_deletes()
        return self

    def _isolation(self) -> Isolation:
        """Multi-user mode (tokens in use) runs each user's jobs under their own uid."""
        settings = self.settings
        identities = JobIdentities(self.store, settings.job_uid_range, settings.job_accounts)
        return Isolation(
            identities, self.tokens.required, trusted_users=settings.trusted_users,
            cluster_authenticated=lambda: self.connection.authenticated,
            is_admin=self._is_admin,
        )

    def _is_admin(self, user: str) -> bool:
        return any(row["user"] == user and row["admin"] and not row["revoked_at"]
                   for row in self.store.list_tokens())

    @property
    def dashboard_link(self) -> str | None:
        return self.connection.dashboard_link

    @property
    def cluster_authenticated(self) -> bool:
        """Whether the Dask scheduler admits only holders of the cluster's certificates (TLS).
        When False, anyone who reaches it, a job included, can run code in it."""
        return self.connection.authenticated

    async def close(self) -> None:
        await self.board.close()
        await self.explorer.close()
        await self.sweeps.close()
        await self.engine.close()
        await self.connection.close()
        self.store.close()
