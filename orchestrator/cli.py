"""The command line: `orchestrator serve` runs the service; every other command talks to a
server (default the local one) through the Python API."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from orchestrator.client import Orchestrator
from orchestrator.errors import JobFailed, OrchestratorError
from orchestrator.plugins.worker import GPU_DEVICES_VARIABLE

DEFAULT_URL = "http://127.0.0.1:8080"


# ---- serve and config ---------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from orchestrator.config import Settings

    overrides = {
        "host": args.host, "port": args.port, "data_dir": args.data_dir, "storage": args.storage,
        "scheduler": args.scheduler, "max_upload_bytes": args.max_upload_bytes,
        "workers": args.workers, "cluster": args.cluster, "cluster_options": args.cluster_options,
        "cluster_can_grow": args.cluster_can_grow, "worker_loss_retries": args.worker_loss_retries,
        "max_queued_per_user": args.max_queued_per_user, "max_sweep_runs": args.max_sweep_runs,
        "trusted_users": args.trusted_users or None,
        "allowed_hosts": args.allowed_host, "max_upload_parts": args.max_upload_parts,
        "body_idle_timeout_s": args.body_idle_timeout_s,
        **{name: getattr(args, name) for name in TLS_OPTIONS},
    }
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    os.umask(0o077)  # the ledger, storage and workers' folders: never readable by others
    _configure_logging(args.log_level)
    asyncio.run(_serve(settings))
    return 0


def _configure_logging(level: str) -> None:
    """The orchestrator's own records (one line per request at INFO) at `level`; other
    libraries' at WARNING, so Dask's chatter does not bury them."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("orchestrator").setLevel(level.upper())


async def _serve(settings: Any) -> None:
    from orchestrator.server import start_server

    server = await start_server(settings)
    print(f"orchestrator API: {server.url}/api/v1", flush=True)
    dashboard = server.service.dashboard_link or "none (the scheduler serves no dashboard)"
    print(f"Dask dashboard:   {dashboard}", flush=True)
    print(f"data: {settings.data_dir.resolve()}  storage: {settings.storage_url}", flush=True)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    await stopped.wait()
    print("shutting down", flush=True)
    await server.close()


def cmd_worker(args: argparse.Namespace) -> int:
    """Become a `dask worker` that declares this machine's resources (or those given)."""
    argv, env = worker_command(args)
    print("starting:", " ".join(argv), file=sys.stderr, flush=True)
    os.umask(0o077)  # the worker's folders: job folders get their own modes (orchestrator.jobuser)
    os.execve(sys.executable, argv, env)
    return 0  # not reached


TLS_OPTIONS = ("tls_ca_file", "tls_cert", "tls_key")  # settings, and flags of serve and worker


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def add_tls_flags(parser: argparse.ArgumentParser, whose: str) -> None:
    """--tls-ca-file, --tls-cert, --tls-key: a cluster's TLS, as `dask worker` names them."""
    helps = ("CA certificate (PEM) that signed the cluster's certificates",
             f"{whose} certificate (PEM)", f"private key (PEM) of {whose} certificate, unless "
             "the certificate file holds it")
    for option, text in zip(TLS_OPTIONS, helps, strict=True):
        parser.add_argument(_flag(option), metavar="PATH",
                            help=f"{text} (default: Dask's distributed.comm.tls configuration)")


def tls_argv(args: argparse.Namespace) -> list[str]:
    """The TLS flags given, as `dask worker` takes them (the same names)."""
    return [arg for name in TLS_OPTIONS if getattr(args, name)
            for arg in (_flag(name), getattr(args, name))]


def worker_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The `dask worker` command line and environment `orchestrator worker` runs."""
    from dask.utils import parse_bytes

    from orchestrator.config import count_gpus, machine_resources

    machine = machine_resources()
    if args.gpu_devices is not None:
        devices = [d.strip() for d in args.gpu_devices.split(",") if d.strip()]
    else:
        devices = [str(i) for i in range(args.gpus if args.gpus is not None else count_gpus())]
    cores = args.cores if args.cores is not None else machine["CPU"]
    memory = parse_bytes(args.memory) if args.memory else machine["MEMORY"]
    resources = {"CPU": cores, "MEMORY": memory, **({"GPU": len(devices)} if devices else {})}
    argv = [sys.executable, "-m", "distributed.cli.dask_worker", args.scheduler,
            "--resources", ",".join(f"{k}={v:g}" for k, v in resources.items()),
            "--nthreads", str(args.nthreads or max(1, int(cores))), "--no-dashboard",
            "--preload", "orchestrator.plugins.worker"]
    if args.name:
        argv += ["--name", args.name]
    argv += tls_argv(args)
    env = {**os.environ, GPU_DEVICES_VARIABLE: ",".join(devices)}
    return argv, env


def cmd_certs(args: argparse.Namespace) -> int:
    """Write a self-signed certificate for a cluster's TLS (see orchestrator.certs)."""
    from orchestrator.certs import write_tls_files

    files = write_tls_files(Path(args.folder))
    print(f"wrote {files.ca_file}, {files.cert} and {files.key} (mode 0600, folder 0700)")
    print("give dask scheduler, orchestrator worker and orchestrator serve:", " ".join(files.flags))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from orchestrator.config import Settings

    settings = Settings()
    rows = settings.describe()
    if args.json:
        _print_json({name: value for name, value, _ in rows})
    else:
        _print_table(["variable", "value", "meaning"], [[n, str(v), h] for n, v, h in rows])
    return 0


@contextlib.contextmanager
def _ledger_tokens(data_dir: str | None) -> Iterator[Any]:
    """The tokens of the ledger in `data_dir` (default ORCHESTRATOR_DATA_DIR), opened beside
    any running server: it reads changes from its next request on."""
    from orchestrator.auth import Tokens
    from orchestrator.config import Settings
    from orchestrator.store import Store

    store = Store(Settings(**({"data_dir": data_dir} if data_dir else {})).database_path)
    try:
        yield Tokens(store)
    finally:
        store.close()


def cmd_token(args: argparse.Namespace) -> int:
    """Tokens are managed beside the ledger, like `gc`: no server needs to run."""
    if args.action != "list" and not args.user:
        raise ValueError(f"token {args.action} needs the USER")
    with _ledger_tokens(args.data_dir) as tokens:
        store = tokens.store
        if args.action == "create":
            role = "admin" if args.admin else "user"
            print(f"token for {args.user} ({role}), shown only now: {tokens.create(args.user, args.admin)}")
            _warn_if_open(tokens.state())
        elif args.action == "revoke":
            print(f"revoked {tokens.revoke(args.user)} token(s) of {args.user}")
            _warn_if_locked(tokens.state())
        else:
            rows = store.list_tokens()
            if args.json:
                _print_json(rows)
            else:
                _print_table(["id", "user", "admin", "created", "revoked"],
                             [[r["id"], r["user"], bool(r["admin"]), r["created_at"], r["revoked_at"] or ""]
                              for r in rows])
    return 0


def cmd_auth(args: argparse.Namespace) -> int:
    """Whether the API requires tokens: on once a token was ever created, until an admin turns
    it off here; each choice is recorded in the ledger with the OS user who made it."""
    with _ledger_tokens(args.data_dir) as tokens:
        if args.action == "status":
            state = tokens.state()
        else:
            state = tokens.set_required(args.action == "enable", _os_user())
        if args.json:
            _print_json({**dataclasses.asdict(state), "locked": state.locked})
            return 0
        print(state.describe())
        if args.action == "disable":
            print("warning: a request without a token now runs as the admin 'anonymous'; a "
                  "server on a non-loopback address refuses to start", file=sys.stderr)
    return 0


def _os_user() -> str:
    """The account running this command: its uid's name, not $USER, which anyone can set."""
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"


def _warn_if_locked(state: Any) -> None:
    if state.locked:
        print("note: no token is active: the API answers 401 to all but /health until one is "
              "created (orchestrator token create USER --admin)", file=sys.stderr)


def _warn_if_open(state: Any) -> None:
    if not state.required:
        print(f"note: {state.describe()}; tokens are not required until "
              "`orchestrator auth enable`", file=sys.stderr)


def cmd_gc(args: argparse.Namespace) -> int:
    """Remove storage objects no ledger row owns (see orchestrator.gc); safe beside a server."""
    from orchestrator.config import Settings
    from orchestrator.gc import find_garbage, remove
    from orchestrator.storage import Storage
    from orchestrator.store import Store

    overrides = {"data_dir": args.data_dir, "storage": args.storage}
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    if not settings.database_path.is_file():
        # an empty ledger would make every job's files look orphaned
        print(f"error: no job store at {settings.database_path} (give --data-dir)", file=sys.stderr)
        return 2
    store = Store(settings.database_path)
    try:
        storage = Storage(settings.storage_url, **settings.storage_options)
        garbage = find_garbage(store, storage, args.older_than)
    finally:
        store.close()
    failed = {} if args.dry_run else dict(remove(storage, garbage))
    for item, exc in failed.items():
        print(f"error: could not remove {item.kind} {item.key}: {exc}", file=sys.stderr)
    if args.json:
        _print_json([{**g.to_json(), "removed": not args.dry_run and g not in failed,
                      **({"error": str(failed[g])} if g in failed else {})} for g in garbage])
        return 1 if failed else 0
    if garbage:
        _print_table(["kind", "key", "bytes"], [[g.kind, g.key, g.bytes] for g in garbage])
    done = [g for g in garbage if g not in failed]
    verb = "would remove" if args.dry_run else "removed"
    print(f"total: {verb} {len(done)} item(s), {sum(g.bytes for g in done)} bytes"
          + (f"; {len(failed)} failed" if failed else ""))
    return 1 if failed else 0


# ---- jobs -----------------------------------------------------------------------------------


def _secret_env(names: list[str]) -> dict[str, str]:
    """Secret values come from the caller's environment: a command line shows in `ps`."""
    missing = [name for name in names if name not in os.environ]
    if missing:
        raise SystemExit(f"error: --secret-env {missing[0]}: not set in this environment")
    return {name: os.environ[name] for name in names}


def cmd_submit(args: argparse.Namespace) -> int:
    command: str | list[str] = args.command[0] if len(args.command) == 1 else list(args.command)
    resources: dict[str, Any] = {"cores": args.cores, "gpus": args.gpus}
    if args.memory:
        resources["memory"] = args.memory
    env = dict(_key_value(item) for item in args.env)
    with _connect(args) as orch:
        job = orch.submit(
            command, files=args.file, binaries=args.binary, env=env, resources=resources,
            secret_env=_secret_env(args.secret_env),
            timeout_s=args.timeout, retries=args.retries, priority=args.priority, name=args.name,
        )
        if args.wait or args.follow:
            if args.follow:
                for text in job.follow():
                    sys.stdout.write(text)
                    sys.stdout.flush()
            record = job.wait()
        else:
            record = job.record
        _show_job(record, args.json)
        return 0 if record.status.value in ("COMPLETED", "QUEUED", "CREATED", "RUNNING") else 1


def cmd_list(args: argparse.Namespace) -> int:
    with _connect(args) as orch:
        jobs = orch.jobs(status=args.status, search=args.search, sweep_id=args.sweep_id)
    records = [job.record for job in jobs][-args.limit:] if args.limit else [j.record for j in jobs]
    if args.json:
        _print_json([r.model_dump(mode="json") for r in records])
        return 0
    _print_table(
        ["id", "name", "status", "attempt", "worker", "created", "reason"],
        [[r.id, r.name, r.status.value, r.attempt, r.worker or "", _ts(r.created_at),
          (r.status_reason or "")[:60]] for r in records],
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _connect(args) as orch:
        job = orch.job(args.job_id)
        if args.json:
            body = job.record.model_dump(mode="json")
            body["statuses"] = [s.model_dump(mode="json") for s in job.statuses()]
            _print_json(body)
            return 0
        _show_job(job.record, False)
        print()
        _print_table(["status", "at", "reason"],
                     [[s.status.value, _ts(s.at), s.reason or ""] for s in job.statuses()])
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    with _connect(args) as orch:
        job = orch.job(args.job_id)
        if args.follow:
            for text in job.follow(args.stream):
                sys.stdout.write(text)
                sys.stdout.flush()
        else:
            sys.stdout.write(job.logs(args.stream))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    with _connect(args) as orch:
        for job_id in args.job_ids:
            record = orch.job(job_id).stop()
            if args.json:
                _print_json(record.model_dump(mode="json"))
            else:
                print(f"{record.id}: {record.status.value} {record.status_reason or ''}".rstrip())
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with _connect(args) as orch:
        for job_id in args.job_ids:
            orch.job(job_id).delete(stop=args.stop)
            print(f"{job_id}: deleted" + (" once stopped" if args.stop else ""))
    return 0


def cmd_files(args: argparse.Namespace) -> int:
    with _connect(args) as orch:
        files = orch.job(args.job_id).files(args.search)
    if args.json:
        _print_json([f.model_dump() for f in files])
    else:
        _print_table(["path", "size", "sha256"], [[f.path, f.size, f.sha256] for f in files])
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    with _connect(args) as orch:
        job = orch.job(args.job_id)
        paths = args.paths or [f.path for f in job.files()]
        dest = Path(args.dest)
        for path in paths:
            target = dest / path if (len(paths) > 1 or dest.is_dir()) else dest
            saved = job.download(path, target, verify=args.verify)
            print(f"{path} -> {saved}" + (" (sha256 verified)" if args.verify else ""))
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    with _connect(args) as orch:
        record = orch.upload_binary(args.name or Path(args.path).name, args.path)
    if args.json:
        _print_json(record.model_dump(mode="json"))
    else:
        print(f"{record.name}@{record.version}  {record.size} bytes  sha256 {record.sha256}")
    return 0


# ---- sweeps ---------------------------------------------------------------------------------


def cmd_sweep(args: argparse.Namespace) -> int:
    from orchestrator.sweep_client import load_spec_file

    spec, files = load_spec_file(args.spec)
    if args.dry_run:
        spec["dry_run"] = True
    with _connect(args) as orch:
        outcome = orch.sweep_spec(spec, files)
        if spec.get("dry_run"):
            return _show_dry_run(outcome, args.json)
        print(f"sweep {outcome.id}: {outcome.runs} runs queued", file=sys.stderr)
        record = outcome.wait(progress=not args.json) if args.watch else outcome.record
    if args.json:
        _print_json(record.model_dump(mode="json"))
    else:
        _show_sweep(record)
    return 1 if args.watch and record.status.value != "COMPLETED" else 0


def _show_dry_run(preview: Any, as_json: bool) -> int:
    if as_json:
        _print_json(preview.model_dump(mode="json"))
        return 0
    _print_table(["index", *preview.variables, "command"],
                 [[run.index, *(run.variables.get(n, "") for n in preview.variables),
                   run.command if isinstance(run.command, str) else json.dumps(run.command)]
                  for run in preview.runs])
    seed = f", seed {preview.seed}" if preview.seed is not None else ""
    print(f"{preview.count} runs (dry run: nothing was started{seed})", file=sys.stderr)
    return 0


def _show_sweep(record: Any) -> None:
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(record.counts.items()))
    rows = [["id", record.id], ["name", record.name], ["status", record.status.value],
            ["reason", record.status_reason or ""], ["runs", f"{record.runs} ({counts})"],
            ["progress", f"{record.progress:.0%}"], ["variables", ", ".join(record.variables)],
            ["design", record.design or "cases"], ["seed", "" if record.seed is None else record.seed]]
    _print_table(["field", "value"], rows, header=False)


def cmd_sweeps(args: argparse.Namespace) -> int:
    with _connect(args) as orch:
        if args.stop:
            record = orch.get_sweep(args.stop).stop()
            _print_json(record.model_dump(mode="json")) if args.json else _show_sweep(record)
            return 0
        if args.sweep_id:
            record = orch.get_sweep(args.sweep_id).record
            _print_json(record.model_dump(mode="json")) if args.json else _show_sweep(record)
            return 0
        records = orch.sweeps()
    if args.json:
        _print_json([r.model_dump(mode="json") for r in records])
        return 0
    _print_table(["id", "name", "status", "runs", "progress", "created"],
                 [[r.id, r.name, r.status.value, r.runs, f"{r.progress:.0%}", _ts(r.created_at)]
                  for r in records])
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    with _connect(args) as orch:
        table = orch.get_sweep(args.sweep_id).results()
    if args.csv:
        table.to_csv(args.csv)
        print(f"{len(table)} rows -> {args.csv}", file=sys.stderr)
    elif args.json:
        print(table.reset_index().to_json(orient="records", indent=2))
    else:
        print(table.to_string())
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    with _connect(args) as orch:
        try:
            for event in orch.events(job_id=args.job_id, sweep_id=args.sweep_id):
                if args.json:
                    print(json.dumps(event), flush=True)
                elif event.get("event") == "status":
                    where = f" [{event['sweep_id']}#{event['index']}]" if event.get("sweep_id") else ""
                    print(f"{event['at'][:19]}  {event['job_id']}  {event['status']:<9}  "
                          f"{event['name']}{where}  {event.get('reason') or ''}".rstrip(), flush=True)
                else:
                    print(f"# {event.get('message', event)}", file=sys.stderr)
        except KeyboardInterrupt:
            pass
    return 0


# ---- plumbing -------------------------------------------------------------------------------


def _connect(args: argparse.Namespace) -> Orchestrator:
    return Orchestrator.connect(args.url, token=args.token)


def _show_job(record: Any, as_json: bool) -> None:
    if as_json:
        _print_json(record.model_dump(mode="json"))
        return
    rows = [
        ["id", record.id], ["name", record.name], ["status", record.status.value],
        ["reason", record.status_reason or ""], ["worker", record.worker or ""],
        ["attempt", record.attempt], ["created", _ts(record.created_at)],
    ]
    if record.result is not None:
        rows += [["exit code", record.result.exit_code],
                 ["duration", f"{record.result.duration_s or 0:.3f} s"]]
        rows += [[f"output {k}", v] for k, v in record.result.outputs.items()]
    _print_table(["field", "value"], rows, header=False)


def _print_table(columns: Sequence[str], rows: list[list[Any]], header: bool = True) -> None:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(col) if header else 0] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]
    lines = []
    if header:
        lines.append("  ".join(col.upper().ljust(w) for col, w in zip(columns, widths, strict=False)).rstrip())
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in cells]
    print("\n".join(lines))


def _print_json(payload: Any) -> None:
    print(json.dumps(payload, indent=2, default=str))


def _ts(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {item!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orchestrator", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)

    def client_command(name: str, help_text: str, func) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--url", default=os.environ.get("ORCHESTRATOR_URL", DEFAULT_URL),
                         help="server URL (env ORCHESTRATOR_URL)")
        cmd.add_argument("--token", default=None, help="API token (env ORCHESTRATOR_TOKEN)")
        cmd.add_argument("--json", action="store_true", help="print JSON")
        cmd.set_defaults(func=func)
        return cmd

    serve = sub.add_parser("serve", help="run the REST API with its Dask cluster")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8080)")
    serve.add_argument("--data-dir", help="folder of the job store and default storage")
    serve.add_argument("--storage", help="fsspec URL of storage (e.g. s3://bucket/prefix)")
    serve.add_argument("--scheduler", help="address of an existing Dask scheduler")
    serve.add_argument("--cluster", metavar="MODULE:CALLABLE",
                       help="build the Dask cluster with this factory, e.g. dask_jobqueue:SLURMCluster")
    serve.add_argument("--cluster-options", type=json.loads, metavar="JSON",
                       help='keyword arguments of the factory, e.g. \'{"cores": 8, "memory": "16GB"}\'')
    serve.add_argument("--cluster-can-grow", action=argparse.BooleanOptionalAction, default=None,
                       help="work no worker fits yet waits for one instead of being refused "
                            "(default: on with --cluster)")
    serve.add_argument("--worker-loss-retries", type=int,
                       help="re-runs of a job whose worker died under it (default 3)")
    serve.add_argument("--workers", type=int, help="worker processes of the embedded cluster")
    serve.add_argument("--max-upload-bytes", type=int, help="largest accepted upload")
    serve.add_argument("--max-queued-per-user", type=int,
                       help="most QUEUED jobs one user may have (default 10000; 429 beyond)")
    serve.add_argument("--max-sweep-runs", type=int, help="most runs in one sweep (default 1000000)")
    serve.add_argument("--allowed-host", action="append", metavar="NAME",
                       help="another name clients use for this server (a DNS or proxy name), "
                            "accepted in the Host header; repeatable")
    serve.add_argument("--max-upload-parts", type=int,
                       help="most parts of one multipart body (default 1000; 413 beyond)")
    serve.add_argument("--body-idle-timeout-s", type=float,
                       help="close a request body that sends nothing for this long (default 120)")
    serve.add_argument("--log-level", default="INFO", type=str.upper,
                       choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                       help="the server's log level; INFO logs one line per request (default)")
    serve.add_argument("--trusted-users", action="store_true",
                       help="with tokens in use, run every user's jobs even where they would "
                       "have the orchestrator's own identity (workers not root, or no TLS)")
    add_tls_flags(serve, "the server's client")
    serve.set_defaults(func=cmd_serve)

    certs = sub.add_parser("certs", help="write a self-signed certificate for a cluster's TLS")
    certs.add_argument("folder", help="a new folder for ca.pem, cert.pem and key.pem")
    certs.set_defaults(func=cmd_certs)

    worker = sub.add_parser("worker", help="run a Dask worker that declares its CPU, GPU, MEMORY")
    worker.add_argument("scheduler", help="address of the Dask scheduler, e.g. tls://HOST:8786")
    gpus = worker.add_mutually_exclusive_group()
    gpus.add_argument("--gpus", type=int, help="own devices 0..N-1 (default: the devices found)")
    gpus.add_argument("--gpu-devices", help="own these device ids, e.g. 0,2")
    worker.add_argument("--cores", type=float, help="CPU cores to declare (default: all)")
    worker.add_argument("--memory", help="memory to declare, e.g. 64GiB (default: all)")
    worker.add_argument("--nthreads", type=int, help="job slots (default: the cores)")
    worker.add_argument("--name", help="worker name")
    add_tls_flags(worker, "this worker's")
    worker.set_defaults(func=cmd_worker)

    token = sub.add_parser("token", help="create, revoke or list API tokens (stored as hashes)")
    token.add_argument("action", choices=["create", "revoke", "list"])
    token.add_argument("user", nargs="?", help="who the token is for (create, revoke)")
    token.add_argument("--admin", action="store_true", help="the token may see and stop everyone's work")
    token.add_argument("--data-dir", help="folder of the job store (default: ORCHESTRATOR_DATA_DIR)")
    token.add_argument("--json", action="store_true")
    token.set_defaults(func=cmd_token)

    auth = sub.add_parser("auth", help="require API tokens (enable), stop requiring them "
                                       "(disable), or show which and who chose it (status)")
    auth.add_argument("action", choices=["status", "enable", "disable"])
    auth.add_argument("--data-dir", help="folder of the job store (default: ORCHESTRATOR_DATA_DIR)")
    auth.add_argument("--json", action="store_true")
    auth.set_defaults(func=cmd_auth)

    config = sub.add_parser("config", help="print the effective settings")
    config.add_argument("--json", action="store_true")
    config.set_defaults(func=cmd_config)

    gc = sub.add_parser("gc", help="remove storage objects that no job, sweep or binary owns")
    gc.add_argument("--data-dir", help="folder of the job store and default storage")
    gc.add_argument("--storage", help="fsspec URL of storage (e.g. s3://bucket/prefix)")
    gc.add_argument("--older-than", type=float, default=3600, metavar="SECONDS",
                    help="only what nobody wrote to for this long (default 3600; 0: all, "
                         "even uploads in progress)")
    gc.add_argument("--dry-run", action="store_true", help="list what would go, remove nothing")
    gc.add_argument("--json", action="store_true", help="print JSON")
    gc.set_defaults(func=cmd_gc)

    submit = client_command("submit", "submit a command as a job", cmd_submit)
    submit.add_argument("command", nargs="+", help="a shell command line, or program and arguments")
    submit.add_argument("--name")
    submit.add_argument("-f", "--file", action="append", default=[], help="local file to stage")
    submit.add_argument("-b", "--binary", action="append", default=[], help="binary name[@version] or URL")
    submit.add_argument("-e", "--env", action="append", default=[], help="NAME=VALUE")
    submit.add_argument("--secret-env", action="append", default=[], metavar="NAME",
                        help="pass $NAME from this shell as a secret (never on the command line)")
    submit.add_argument("--cores", type=float, default=1)
    submit.add_argument("--gpus", type=int, default=0)
    submit.add_argument("--memory", help="e.g. 2GiB")
    submit.add_argument("--timeout", type=float, help="seconds")
    submit.add_argument("--retries", type=int, default=0)
    submit.add_argument("--priority", type=int, default=0)
    submit.add_argument("-w", "--wait", action="store_true", help="wait for the job to end")
    submit.add_argument("--follow", action="store_true", help="print stdout while it runs")

    listing = client_command("list", "list jobs", cmd_list)
    listing.add_argument("--status")
    listing.add_argument("--search")
    listing.add_argument("--sweep-id")
    listing.add_argument("--limit", type=int, default=50, help="newest N (0: all)")

    status = client_command("status", "show a job and its status history", cmd_status)
    status.add_argument("job_id")

    logs = client_command("logs", "print a job's log", cmd_logs)
    logs.add_argument("job_id")
    logs.add_argument("--stream", default="stdout", choices=["stdout", "stderr"])
    logs.add_argument("-f", "--follow", action="store_true", help="follow until the job ends")

    stop = client_command("stop", "stop jobs", cmd_stop)
    stop.add_argument("job_ids", nargs="+")

    delete = client_command("delete", "delete finished jobs and their files", cmd_delete)
    delete.add_argument("job_ids", nargs="+")
    delete.add_argument("--stop", action="store_true", help="stop running jobs first")

    files = client_command("files", "list a job's output files", cmd_files)
    files.add_argument("job_id")
    files.add_argument("--search")

    download = client_command("download", "download output files", cmd_download)
    download.add_argument("job_id")
    download.add_argument("paths", nargs="*", help="output paths (default: all)")
    download.add_argument("-o", "--dest", default=".", help="file or folder")
    download.add_argument("--verify", action="store_true",
                          help="check each file against the sha256 recorded when it was stored")

    sweep = client_command("sweep", "run a parameter sweep from a spec file", cmd_sweep)
    sweep.add_argument("spec", help="spec.yaml or spec.json (the JSON shape of POST /sweeps)")
    sweep.add_argument("--dry-run", action="store_true", help="print the run table, run nothing")
    sweep.add_argument("-w", "--watch", action="store_true", help="show progress until the sweep ends")

    sweeps = client_command("sweeps", "list sweeps, show or stop one", cmd_sweeps)
    sweeps.add_argument("sweep_id", nargs="?", help="show this sweep")
    sweeps.add_argument("--stop", metavar="SWEEP_ID", help="stop this sweep")

    results = client_command("results", "print a sweep's results table", cmd_results)
    results.add_argument("sweep_id")
    results.add_argument("--csv", metavar="FILE", help="write the table as CSV")

    watch = client_command("watch", "print status changes as they happen", cmd_watch)
    watch.add_argument("--job-id", help="only this job")
    watch.add_argument("--sweep-id", help="only this sweep's runs")

    upload = client_command("upload", "upload a binary", cmd_upload)
    upload.add_argument("path")
    upload.add_argument("--name", help="binary name (default: the file name)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except JobFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OrchestratorError as exc:
        detail = "".join(f"\n  {k}: {v}" for k, v in exc.fields.items())
        print(f"error: {exc.message}{detail}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # settings from flags or ORCHESTRATOR_* variables
        detail = "".join(f"\n  {'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        print(f"error: invalid settings{detail}", file=sys.stderr)
        return 2
    except (OSError, TimeoutError, ValueError, httpx.HTTPError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
