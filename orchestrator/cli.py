"""The command line: every command here talks to a server (default the local one) through
the Python API; `serve` and the other administrator's commands live in orchestrator.cli_admin."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from orchestrator.cli_admin import add_admin_commands, print_json, print_table, worker_command  # noqa: F401
from orchestrator.cli_job_types import (
    add_configuration_flags,
    add_job_type_commands,
    configuration_from,
    key_value,
)
from orchestrator.cli_plots import add_plot_commands
from orchestrator.client import Orchestrator
from orchestrator.errors import JobFailed, OrchestratorError

DEFAULT_URL = "http://127.0.0.1:8080"


# ---- jobs -----------------------------------------------------------------------------------


def _secret_env(names: list[str]) -> dict[str, str]:
    """Secret values come from the caller's environment: a command line shows in `ps`."""
    missing = [name for name in names if name not in os.environ]
    if missing:
        raise SystemExit(f"error: --secret-env {missing[0]}: not set in this environment")
    return {name: os.environ[name] for name in names}


def cmd_submit(args: argparse.Namespace) -> int:
    command: str | list[str] = args.command[0] if len(args.command) == 1 else list(args.command)
    call: dict[str, Any] = {}
    if args.entrypoint is not None:
        if args.command:
            raise SystemExit("error: give a command or --entrypoint, not both")
        command, call = args.entrypoint, {"kwargs": _json_object(args.kwargs, "--kwargs")}
    elif args.kwargs is not None:
        raise SystemExit("error: --kwargs goes with --entrypoint")
    elif not args.command:
        raise SystemExit("error: give a command, or --entrypoint MODULE:FUNCTION")
    resources: dict[str, Any] = {"cores": args.cores, "gpus": args.gpus}
    if args.memory:
        resources["memory"] = args.memory
    env = dict(_key_value(item) for item in args.env)
    with _connect(args) as orch:
        job = orch.submit(
            command, files=args.file, binaries=args.binary, env=env, resources=resources,
            secret_env=_secret_env(args.secret_env),
            timeout_s=args.timeout, retries=args.retries, priority=args.priority, name=args.name, **call,
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


def cmd_run(args: argparse.Namespace) -> int:
    """A job of a registered type: its id, or with --wait its record (exit 1 unless COMPLETED)."""
    inputs = {name: _json_or_text(value) for name, value in map(key_value, args.input)}
    files: dict[str, list[str]] = {}
    for name, path in map(key_value, args.file):
        files.setdefault(name, []).append(path)
    with _connect(args) as orch:
        job = orch.run(args.job_type, inputs, files=files, configuration=configuration_from(args),
                       name=args.name, priority=args.priority, wait=args.wait)
    record = job.record
    if not args.wait:
        print_json(record.model_dump(mode="json")) if args.json else print(record.id)
        return 0
    _show_job(record, args.json)
    return 0 if record.status.value == "COMPLETED" else 1


def _json_or_text(value: str) -> Any:
    """An --input value: JSON when it parses (5, true, [1, 2], {...}), else the text itself."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def cmd_list(args: argparse.Namespace) -> int:
    with _connect(args) as orch:
        jobs = orch.jobs(status=args.status, search=args.search, sweep_id=args.sweep_id)
    records = [job.record for job in jobs][-args.limit:] if args.limit else [j.record for j in jobs]
    if args.json:
        print_json([r.model_dump(mode="json") for r in records])
        return 0
    print_table(
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
            print_json(body)
            return 0
        _show_job(job.record, False)
        print()
        print_table(["status", "at", "reason"],
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
                print_json(record.model_dump(mode="json"))
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
        print_json([f.model_dump() for f in files])
    else:
        print_table(["path", "size", "sha256"], [[f.path, f.size, f.sha256] for f in files])
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
        print_json(record.model_dump(mode="json"))
    else:
        print(f"{record.name}@{record.version}  {record.size} bytes  sha256 {record.sha256}")
    return 0


# ---- sweeps ---------------------------------------------------------------------------------


def cmd_sweep(args: argparse.Namespace) -> int:
    from orchestrator.client.sweeps import load_spec_file

    spec, files = load_spec_file(args.spec)
    if args.dry_run:
        spec["dry_run"] = True
    with _connect(args) as orch:
        outcome = orch.sweep_spec(spec, files)
        if spec.get("dry_run"):
            return _show_dry_run(outcome, args.json)
        print(f"sweep {outcome.id}: {outcome.record.runs} runs queued", file=sys.stderr)
        record = outcome.wait(progress=not args.json) if args.watch else outcome.record
    if args.json:
        print_json(record.model_dump(mode="json"))
    else:
        _show_sweep(record)
    return 1 if args.watch and record.status.value != "COMPLETED" else 0


def _show_dry_run(preview: Any, as_json: bool) -> int:
    if as_json:
        print_json(preview.model_dump(mode="json"))
        return 0
    print_table(["index", *preview.variables, "command"],
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
    print_table(["field", "value"], rows, header=False)


def cmd_rerun(args: argparse.Namespace) -> int:
    """Sweep ids start with 's' (job ids are hex): a sweep reruns its ended runs."""
    with _connect(args) as orch:
        for run_id in args.ids:
            if run_id.startswith("s"):
                record = orch.get_sweep(run_id).rerun(status=args.status.split(",") if args.status else None)
                print_json(record.model_dump(mode="json")) if args.json else _show_sweep(record)
            else:
                job = orch.job(run_id).rerun()
                print_json(job.model_dump(mode="json")) if args.json else print(
                    f"{job.id}: {job.status.value} (attempt {job.attempt}) {job.status_reason or ''}".rstrip())
    return 0


def cmd_sweeps(args: argparse.Namespace) -> int:
    with _connect(args) as orch:
        if args.stop:
            record = orch.get_sweep(args.stop).stop()
            print_json(record.model_dump(mode="json")) if args.json else _show_sweep(record)
            return 0
        if args.delete:
            orch.get_sweep(args.delete).delete(stop=args.force)
            print(f"sweep {args.delete} deleted" + (" once stopped" if args.force else ""))
            return 0
        if args.sweep_id:
            record = orch.get_sweep(args.sweep_id).record
            print_json(record.model_dump(mode="json")) if args.json else _show_sweep(record)
            return 0
        records = orch.sweeps()
    if args.json:
        print_json([r.model_dump(mode="json") for r in records])
        return 0
    print_table(["id", "name", "status", "runs", "progress", "created"],
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
        print_json(record.model_dump(mode="json"))
        return
    rows = [
        ["id", record.id], ["name", record.name], ["status", record.status.value],
        ["reason", record.status_reason or ""], ["worker", record.worker or ""],
        ["attempt", record.attempt], ["created", _ts(record.created_at)],
    ]
    if record.job_type is not None:
        ref = record.job_type
        rows.insert(2, ["job type", f"{ref.name}@{ref.version} (revision {ref.revision})"])
    if record.result is not None:
        rows += [["exit code", record.result.exit_code],
                 ["duration", f"{record.result.duration_s or 0:.3f} s"]]
        if record.result.value is not None:
            rows.append(["value", json.dumps(record.result.value)])
        rows += [[f"output {k}", v] for k, v in record.result.outputs.items()]
    print_table(["field", "value"], rows, header=False)


def _ts(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _json_object(text: str | None, flag: str) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise SystemExit(f"error: {flag}: not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise SystemExit(f"error: {flag}: must be a JSON object of keyword arguments")
    return value


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {item!r}")
    return key, value


def client_options(cmd: argparse.ArgumentParser, func: Any) -> argparse.ArgumentParser:
    """What every client command takes: the server, a token and --json."""
    cmd.add_argument("--url", default=os.environ.get("ORCHESTRATOR_URL", DEFAULT_URL),
                     help="server URL (env ORCHESTRATOR_URL)")
    cmd.add_argument("--token", default=None, help="API token (env ORCHESTRATOR_TOKEN)")
    cmd.add_argument("--json", action="store_true", help="print JSON")
    cmd.set_defaults(func=func)
    return cmd


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orchestrator", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)

    def client_command(name: str, help_text: str, func) -> argparse.ArgumentParser:
        return client_options(sub.add_parser(name, help=help_text), func)

    add_admin_commands(sub)
    add_job_type_commands(sub, client_options)
    add_plot_commands(sub, client_options)

    submit = client_command("submit", "submit a command (or an entry point) as a job", cmd_submit)
    submit.add_argument("command", nargs="*", help="a shell command line, or program and arguments")
    submit.add_argument("--entrypoint", metavar="MODULE:FUNCTION",
                        help="instead of a command: a function of the -b Python binaries (a wheel, a zip or a .py)")
    submit.add_argument("--kwargs", metavar="JSON", help="the entry point's keyword arguments, a JSON object")
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

    run = client_command("run", "run a registered job type", cmd_run)
    run.add_argument("job_type", metavar="TYPE[@VERSION]", help="default version: the newest active one")
    run.add_argument("-i", "--input", action="append", default=[], metavar="NAME=VALUE",
                     help="a JSON input (VALUE as JSON when it parses, else text); repeatable")
    run.add_argument("-f", "--file", action="append", default=[], metavar="NAME=PATH",
                     help="a file input: a local file (uploaded), a URL or a binary; repeat for several")
    add_configuration_flags(run)
    run.add_argument("--name")
    run.add_argument("--priority", type=int)
    run.add_argument("-w", "--wait", action="store_true", help="wait for the job to end")

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
    sweeps.add_argument("--delete", metavar="SWEEP_ID", help="delete this sweep with its runs and files")
    sweeps.add_argument("--force", action="store_true", help="with --delete: stop an active sweep first")

    rerun = client_command("rerun", "run ended jobs, or a sweep's ended runs, again as new attempts", cmd_rerun)
    rerun.add_argument("ids", nargs="+", metavar="ID", help="job ids, or sweep ids (s...)")
    rerun.add_argument("--status", help="a sweep's runs to rerun, e.g. FAILED,STOPPED (the default)")

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
