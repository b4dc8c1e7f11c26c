"""The REST application: every route under /api/v1."""

from __future__ import annotations

import tornado.web

from orchestrator.server.api import binaries, job_types, jobs, monitoring, sweeps, system
from orchestrator.server.api.access_log import log_request
from orchestrator.server.api.base import NotFoundHandler
from orchestrator.server.api.origin import HostPolicy
from orchestrator.server.service import Service

ID = r"(?P<job_id>[A-Za-z0-9_-]+)"
NAME = r"(?P<name>[^/]+)"
SWEEP = r"(?P<sweep_id>[A-Za-z0-9_-]+)"
TYPE = r"(?P<name>[A-Za-z0-9-]+)"
TYPE_VERSION = TYPE + r"/(?P<version>[0-9A-Za-z.+-]+)"
PREFIX = "/api/v1"

ROUTES = [  # tried in order: the busiest first
    (r"/jobs", jobs.JobsHandler),
    (r"/health", system.HealthHandler),
    (r"/openapi\.json", system.OpenAPIHandler),
    (r"/cluster", system.ClusterHandler),
    (r"/events", monitoring.EventsHandler),
    (r"/metrics", monitoring.MetricsHandler),
    (r"/binaries", binaries.BinariesHandler),
    (rf"/binaries/{NAME}/content", binaries.BinaryContentHandler),
    (rf"/binaries/{NAME}", binaries.BinaryHandler),
    (r"/jobs/stop", jobs.JobsStopHandler),
    (rf"/jobs/{ID}", jobs.JobHandler),
    (rf"/jobs/{ID}/submit", jobs.JobSubmitHandler),
    (rf"/jobs/{ID}/stop", jobs.JobStopHandler),
    (rf"/jobs/{ID}/rerun", jobs.JobRerunHandler),
    (rf"/jobs/{ID}/statuses", jobs.JobStatusesHandler),
    (rf"/jobs/{ID}/logs", jobs.JobLogsHandler),
    (rf"/jobs/{ID}/files", jobs.JobFilesHandler),
    (rf"/jobs/{ID}/files/(?P<path>.+)", jobs.JobFileHandler),
    (rf"/jobs/{ID}/result", jobs.JobResultHandler),
    (rf"/jobs/{ID}/share", jobs.JobShareHandler),
    (r"/sweeps", sweeps.SweepsHandler),
    (rf"/sweeps/{SWEEP}", sweeps.SweepHandler),
    (rf"/sweeps/{SWEEP}/runs", sweeps.SweepRunsHandler),
    (rf"/sweeps/{SWEEP}/finished", sweeps.SweepFinishedHandler),
    (rf"/sweeps/{SWEEP}/results", sweeps.SweepResultsHandler),
    (rf"/sweeps/{SWEEP}/plot", sweeps.SweepPlotHandler),
    (rf"/sweeps/{SWEEP}/stop", sweeps.SweepStopHandler),
    (rf"/sweeps/{SWEEP}/rerun", sweeps.SweepRerunHandler),
    (rf"/sweeps/{SWEEP}/extend", sweeps.SweepExtendHandler),
    (rf"/sweeps/{SWEEP}/analysis", sweeps.SweepAnalysisHandler),
    (r"/job-types", job_types.JobTypesHandler),
    (r"/job-types/validation", job_types.JobTypeValidationHandler),
    (rf"/job-types/{TYPE}", job_types.JobTypeNameHandler),
    (rf"/job-types/{TYPE_VERSION}", job_types.JobTypeHandler),
    (rf"/job-types/{TYPE_VERSION}/revisions", job_types.JobTypeRevisionsHandler),
    (rf"/job-types/{TYPE_VERSION}/revisions/(?P<revision_num>[0-9]+)", job_types.JobTypeRevisionHandler),
]


def make_app(service: Service) -> tornado.web.Application:
    settings = service.settings
    return tornado.web.Application(
        [(PREFIX + pattern, handler) for pattern, handler in ROUTES],
        service=service,
        host_policy=HostPolicy.for_bind(settings.host, settings.allowed_hosts),
        default_handler_class=NotFoundHandler,
        compress_response=False,
        log_function=log_request,
    )
