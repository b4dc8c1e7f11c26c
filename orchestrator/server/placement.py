"""Whether a connected worker could run a job's resources, from a short cache of the offers.

Worker resources are cached briefly: asking the scheduler on every submit would cost a
round trip per job. A refusal always re-asks, so a new worker is seen.
"""

from __future__ import annotations

import time

from orchestrator.errors import ValidationFailed
from orchestrator.models import Resources
from orchestrator.server.connection import SchedulerLink
from orchestrator.server.decisions import NO_WORKER, OFFLINE

RESOURCE_CACHE_S = 2.0
RESOURCE_FIELDS = {"CPU": "cores", "GPU": "gpus", "MEMORY": "memory"}


class Placement:
    def __init__(self, link: SchedulerLink, can_grow: bool = False, shape: dict[str, float] | None = None):
        self.link = link
        self.can_grow = can_grow
        self.shape = shape  # what every worker a growing cluster adds offers, when known
        self._offers: list[dict[str, float]] | None = None
        self._threads = 0
        self._offers_at = 0.0

    async def placement(self, resources: Resources) -> str | None:
        """Refuse work no connected worker could ever run; on a cluster that can grow, the
        reason it waits instead (None when a worker fits now)."""
        if not self.link.online:
            return OFFLINE  # no worker to ask now: accept, and let the scheduler judge later
        wanted = resources.as_dask()
        if self.shape is not None:
            beyond_shape(wanted, self.shape)
        if not wanted or fits_any(wanted, await self.worker_resources(fresh=False)):
            return None
        offers = await self.worker_resources(fresh=True)
        if fits_any(wanted, offers):
            return None
        return refusal(wanted, offers, self.can_grow)

    async def worker_resources(self, fresh: bool) -> list[dict[str, float]]:
        """While the scheduler is away, the last known offers (asking would wait out a timeout)."""
        now = time.monotonic()
        stale = fresh or self._offers is None or now - self._offers_at > RESOURCE_CACHE_S
        if stale and self.link.online:
            identity = await self.link.client.scheduler.identity(n_workers=-1)
            workers = identity.get("workers", {}).values()
            self._offers = [w.get("resources", {}) for w in workers]
            self._threads = sum(w.get("nthreads", 1) for w in workers)
            self._offers_at = now
        return self._offers or []

    def known_threads(self) -> int:
        """Worker threads as last asked, without asking again."""
        return max(self._threads, 1)

    async def cluster_threads(self) -> int:
        """Worker threads in the cluster now (cached like the resource offers)."""
        await self.worker_resources(fresh=False)
        return max(self._threads, 1)


def fits_any(wanted: dict[str, float], offers: list[dict[str, float]]) -> bool:
    return any(all(offer.get(r, 0) >= n for r, n in wanted.items()) for offer in offers)


def beyond_shape(wanted: dict[str, float], shape: dict[str, float]) -> None:
    """Refuse what no worker of the cluster's one shape could run, however far it grows."""
    fields = {f"resources.{RESOURCE_FIELDS[r]}": f"the cluster's workers offer {shape.get(r, 0):g} {r}, "
              f"not {n:g}" for r, n in wanted.items() if n > shape.get(r, 0)}
    if fields:
        raise ValidationFailed("no worker this cluster can start offers the requested resources", fields)


def refusal(wanted: dict[str, float], offers: list[dict[str, float]], can_grow: bool) -> str:
    """Why no offer fits: the reason to wait (a cluster that can grow, or no worker yet), or
    a ValidationFailed naming what is missing."""
    best = {r: max((o.get(r, 0) for o in offers), default=0) for r in wanted}
    missing = [r for r, n in wanted.items() if best[r] < n] or list(wanted)
    if can_grow:
        asked = ", ".join(f"{wanted[r]:g} {r}" for r in missing)
        most = "no worker is connected" if not offers else ", ".join(
            f"the most any worker offers is {best[r]:g} {r}" for r in missing)
        return f"waiting for a worker offering {asked} ({most}; the cluster can grow)"
    if not offers:  # e.g. a restarted scheduler whose workers have not come back yet
        return NO_WORKER
    fields = {
        f"resources.{RESOURCE_FIELDS[r]}": f"no worker offers {wanted[r]:g} {r}; the most is {best[r]:g}"
        for r in missing if best[r] < wanted[r]
    } or {"resources": "no single worker offers all of these together"}
    raise ValidationFailed("no worker can satisfy the requested resources", fields)
