"""Entry points (and callables sent over REST) on a worker: a function called in a warm
context process of its owner's (contexts.py), in the job's working folder, with the job's
environment and log files, supervised like a command: stop and timeout end the context,
and a context that dies fails only its job."""

from __future__ import annotations

import base64
import contextlib
import json
import pickle
from pathlib import Path
from typing import Any

from orchestrator.kinds import JobKind
from orchestrator.plugins.worker import job_processes
from orchestrator.storage import Storage
from orchestrator.worker import outputs
from orchestrator.worker.contexts import (
    Artifact,
    ContextDied,
    ContextKey,
    WarmContext,
    context_pool,
)
from orchestrator.worker.jobuser import RunAs
from orchestrator.worker.logship import LogShipper
from orchestrator.worker.runner import (
    CommandExecutor,
    Outcome,
    RunSpec,
    ended_early,
    promised_environment,
    wait_deadline,
)
from orchestrator.worker.scratch import current_worker

MULTI_USER_CLUSTER_REFUSAL = (
    "jobs cannot reach the cluster in multi-user mode: its scheduler runs what a client sends with "
    "the orchestrator's rights, so only the orchestrator holds its certificate")


class EntrypointExecutor(CommandExecutor):
    """Staging, logs, outputs and declared outputs as for a command; the launch differs."""

    kind = JobKind.ENTRYPOINT


def run_in_context(
    workdir: Path, log_paths: dict[str, Path], spec: RunSpec, storage: Storage, worker: str | None,
) -> Outcome:
    run_as = RunAs.from_spec(spec.run_as)
    key = ContextKey(spec.owner or "", run_as.uid if run_as else None, spec.storage_url,
                     tuple(Artifact(**item) for item in spec.artifacts))
    payload = _read_payload(storage, spec.callable_key) if spec.callable_key else None
    request = {
        "cwd": str(workdir), "entrypoint": spec.entrypoint, "pickled": payload is not None,
        "kwargs": {**(spec.kwargs or {}), **(spec.variables or {})}, "task_key": spec.key,
        "env": {**promised_environment(spec, workdir), **({"HOME": str(workdir)} if run_as else {})},
    }
    shipper = LogShipper(storage, spec.job_id, log_paths)
    with open(log_paths["stdout"], "wb") as out, open(log_paths["stderr"], "wb") as err:
        try:
            with context_pool().borrow(key, run_as, storage.get_file) as context:
                if not context.told_cluster:
                    request["cluster"] = cluster_access(run_as)
                    context.told_cluster = True
                context.send(request, payload, (out.fileno(), err.fileno()))
                return _await_reply(context, spec, worker, shipper)
        except ContextDied as exc:
            return Outcome("FAILED", str(exc), worker=worker, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - an artifact that cannot be put on the path
            reason = f"preparing the entry point's context failed: {type(exc).__name__}: {exc}"[:2000]
            err.write(reason.encode() + b"\n")
            return Outcome("FAILED", reason, worker=worker, error=reason)


def _await_reply(context: WarmContext, spec: RunSpec, worker: str | None, shipper: LogShipper) -> Outcome:
    registry = job_processes()
    registry.register(spec.key, context.process)
    deadline = wait_deadline(spec)
    seceded = False
    try:
        while registry.stop_requested(spec.key) is None and not deadline.passed():
            try:
                frame = context.receive(0.1)
            except ContextDied:
                if registry.stop_requested(spec.key) is not None:
                    break  # the stop's signal ended it
                raise
            shipper.ship_if_due()
            if frame is None:
                continue
            if frame.get("event") == "uses_cluster":
                seceded = seceded or _secede()
                continue
            _end_leftovers(context)
            return _outcome(frame, worker, context)
        context.alive = False  # never lent again: a stopped or timed-out function may be anywhere
        outcome = ended_early(context.process, spec, registry.stop_requested(spec.key), worker)
        context.end()
        return outcome
    finally:
        registry.unregister(spec.key)
        if seceded:
            _rejoin()


def _outcome(reply: dict[str, Any], worker: str | None, context: WarmContext) -> Outcome:
    if "error" in reply:
        if reply.get("fatal"):
            context.alive = False
        return Outcome("FAILED", reply["error"], worker=worker, error=reply["error"])
    outcome = Outcome("COMPLETED", None, None, worker=worker)
    if reply.get("pickled"):  # a callable's value JSON cannot hold: kept as return.pkl
        outcome.value = reply["value"]
        return outcome
    text = reply["value_json"]
    if len(text) > outputs.MAX_OUTPUTS_BYTES:
        reason = f"the return value is larger than {outputs.MAX_OUTPUTS_BYTES} bytes of JSON: write big results as files"
        return Outcome("FAILED", reason, worker=worker, error=reason)
    value = json.loads(text)
    problem = outputs.too_big(value)
    if problem:
        reason = f"the return value is {problem}"
        return Outcome("FAILED", reason, worker=worker, error=reason)
    outcome.value = value
    if isinstance(value, dict):
        outcome.outputs, outcome.error = outputs.checked_outputs(value)
    return outcome


def _end_leftovers(context: WarmContext) -> None:
    """Processes the function started and left running die with its job, as a command's
    group does; the context itself lives on. Reading the kernel's list of its children is
    cheap, so a function that started nothing costs nothing here."""
    pid = context.process.pid
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return
    if not children:
        return
    import psutil

    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()


def cluster_access(run_as: RunAs | None) -> dict[str, Any] | None:
    """What the context needs for orchestrator.get_client(): the scheduler's address and a
    client's TLS credentials (in memory, never in an environment or a file); nothing in
    multi-user mode, where the job's identity must not reach the scheduler."""
    if run_as is not None:
        return {"refused": MULTI_USER_CLUSTER_REFUSAL}
    worker = current_worker()
    if worker is None:
        return None
    security = _client_security(worker.security)
    return {"address": worker.scheduler.address,
            "security": base64.b64encode(pickle.dumps(security)).decode() if security else None}


def _client_security(security: Any) -> Any:
    if security is None or not (security.require_encryption or security.tls_ca_file):
        return None
    from distributed.security import Security

    return Security(
        tls_ca_file=security.tls_ca_file, require_encryption=security.require_encryption,
        tls_client_cert=security.tls_client_cert or security.tls_worker_cert,
        tls_client_key=security.tls_client_key or security.tls_worker_key,
    )


def _secede() -> bool:
    """The job fans out across the cluster: its worker thread is free for those tasks while
    the job waits (a worker with one thread would otherwise deadlock)."""
    if current_worker() is None:
        return False
    from distributed import secede

    try:
        secede()
    except (KeyError, ValueError):
        return False
    return True


def _rejoin() -> None:
    from distributed import rejoin

    with contextlib.suppress(KeyError, ValueError):
        rejoin()


def _read_payload(storage: Storage, key: str) -> bytes:
    with storage.open(key) as source:
        return source.read()
