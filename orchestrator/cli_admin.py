"""The administrator's commands, run beside the server or the ledger: `serve`, `worker`,
`certs`, `config`, `token`, `auth` and `gc`. Every other command is a client of a server
(orchestrator.cli)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

# ---- serve and config ---------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from orchestrator.config import Settings

    given = {name: getattr(args, name) for name in Settings.model_fields if name not in NOT_FLAGS}
    settings = Settings(**{name: value for name, value in given.items() if value is not None})
    os.umask(0o077)  # the ledger, storage and workers' folders: never readable by others
    _configure_logging(args.log_level)
    asyncio.run(_serve(settings))
    return 0


# Settings that are no flag of `serve`: a secret never goes on a command line (ps shows it),
# and the TLS files get their flags from add_tls_flags (shared with `worker`).
NOT_FLAGS = {"secret_key"}
REPEATED = {"allowed_hosts": ("--allowed-host", "NAME")}  # one value per flag, repeatable


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One `serve` flag per setting, with the setting's own help: declared once, in Settings."""
    from orchestrator.config import Settings

    for name, field in Settings.model_fields.items():
        if name in NOT_FLAGS or name in TLS_OPTIONS:
            continue
        help_text = field.description
        if name in REPEATED:
            flag, metavar = REPEATED[name]
            parser.add_argument(flag, dest=name, action="append", metavar=metavar, help=f"{help_text}; repeatable")
            continue
        kind = _flag_type(field.annotation)
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, type=kind, metavar="JSON" if kind is json.loads else None, help=help_text)


def _flag_type(annotation: Any) -> Callable[[str], Any]:
    """How a flag's text becomes the setting's value; containers are given as JSON."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # X | None
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    kind = typing.get_origin(annotation) or annotation
    if kind in (dict, list, tuple):
        return json.loads
    if kind in (bool, int, float):
        return kind
    return str


def _configure_logging(level: str) -> None:
    """The orchestrator's own records (one line per request at INFO) at `level`; other
    libraries' at WARNING, so Dask's chatter does not bury them."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("orchestrator").setLevel(level.upper())


async def _serve(settings: Any) -> None:
    from orchestrator.server.running import start_server

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
    os.umask(0o077)  # the worker's folders: job folders get their own modes (orchestrator.worker.jobuser)
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
    # Dask is imported here, not at the top: every other command starts without it.
    from dask.utils import parse_bytes

    from orchestrator.config import count_gpus, machine_resources
    from orchestrator.plugins.worker import GPU_DEVICES_VARIABLE

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
    """The settings a server started from this shell would use (ORCHESTRATOR_* variables and
    defaults), secrets masked: settings live in the server's environment, and no server
    answers them over the API, so --url and --token (taken as by every command) change
    nothing here."""
    from orchestrator.config import Settings

    if args.url or args.token:
        where = f"the server at {args.url}" if args.url else "a running server"
        print("note: these are the settings a server started from this shell would use "
              f"(ORCHESTRATOR_* variables and defaults), not those of {where}", file=sys.stderr)
    settings = Settings()
    rows = settings.describe()
    if args.json:
        print_json({name: value for name, value, _ in rows})
    else:
        print_table(["variable", "value", "meaning"], [[n, str(v), h] for n, v, h in rows])
    return 0


@contextlib.contextmanager
def _ledger_tokens(data_dir: str | None) -> Iterator[Any]:
    """The tokens of the ledger in `data_dir` (default ORCHESTRATOR_DATA_DIR), opened beside
    any running server: it reads changes from its next request on."""
    from orchestrator.config import Settings
    from orchestrator.server.auth import Tokens
    from orchestrator.server.ledger import Store

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
                print_json(rows)
            else:
                print_table(["id", "user", "admin", "created", "revoked"],
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
            print_json({**dataclasses.asdict(state), "locked": state.locked})
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
    """Remove storage objects no ledger row owns (see orchestrator.server.gc); safe beside a server."""
    from orchestrator.config import Settings
    from orchestrator.server.gc import find_garbage, remove
    from orchestrator.server.ledger import Store
    from orchestrator.storage import Storage

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
        print_json([{**g.to_json(), "removed": not args.dry_run and g not in failed,
                      **({"error": str(failed[g])} if g in failed else {})} for g in garbage])
        return 1 if failed else 0
    if garbage:
        print_table(["kind", "key", "bytes"], [[g.kind, g.key, g.bytes] for g in garbage])
    done = [g for g in garbage if g not in failed]
    verb = "would remove" if args.dry_run else "removed"
    print(f"total: {verb} {len(done)} item(s), {sum(g.bytes for g in done)} bytes"
          + (f"; {len(failed)} failed" if failed else ""))
    return 1 if failed else 0



# ---- the parser ------------------------------------------------------------------------


def add_admin_commands(sub: Any) -> None:
    """The administrator's subcommands on the `orchestrator` parser."""
    serve = sub.add_parser("serve", help="run the REST API with its Dask cluster")
    add_setting_flags(serve)
    serve.add_argument("--log-level", default="INFO", type=str.upper,
                       choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                       help="the server's log level; INFO logs one line per request (default)")
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

    token = _ledger_command(sub, "token", "create, revoke or list API tokens (stored as hashes)",
                            cmd_token, ["create", "revoke", "list"])
    token.add_argument("user", nargs="?", help="who the token is for (create, revoke)")
    token.add_argument("--admin", action="store_true", help="the token may see and stop everyone's work")
    _ledger_command(sub, "auth", "require API tokens (enable), stop requiring them (disable), or "
                    "show which and who chose it (status)", cmd_auth, ["status", "enable", "disable"])

    config = sub.add_parser(
        "config", help="print the settings a server started here would use",
        description="Print the settings a server started from this shell would use: each "
                    "ORCHESTRATOR_* variable's effective value (secrets masked) and meaning. "
                    "A running server's settings are those of the environment it was started "
                    "with; no server shows them over the API.")
    config.add_argument("--url", default=None,
                        help="accepted as by every command; config reads no server")
    config.add_argument("--token", default=None, help="accepted as by every command; unused")
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



def _ledger_command(sub: Any, name: str, help_text: str, func: Callable, actions: list[str]) -> Any:
    """A command run beside the ledger (no server needed): an action, --data-dir, --json."""
    command = sub.add_parser(name, help=help_text)
    command.add_argument("action", choices=actions)
    command.add_argument("--data-dir", help="folder of the job store (default: ORCHESTRATOR_DATA_DIR)")
    command.add_argument("--json", action="store_true")
    command.set_defaults(func=func)
    return command


# ---- output ------------------------------------------------------------------------------


def print_table(columns: Sequence[str], rows: list[list[Any]], header: bool = True) -> None:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(col) if header else 0] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]
    lines = []
    if header:
        lines.append("  ".join(col.upper().ljust(w) for col, w in zip(columns, widths, strict=False)).rstrip())
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in cells]
    print("\n".join(lines))


def print_json(payload: Any) -> None:
    print(json.dumps(payload, indent=2, default=str))


