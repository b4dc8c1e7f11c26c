"""`orchestrator job-type ...`: register, validate, list, show, pause and retire job types,
and the configuration flags `run` shares. Registered from orchestrator.cli, which hands over
its client options (--url, --token, --json) so both speak the same way."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.cli_admin import print_json, print_table
from orchestrator.client import Orchestrator
from orchestrator.client.job_types import split_ref

ClientOptions = Callable[[argparse.ArgumentParser, Callable[[argparse.Namespace], int]], argparse.ArgumentParser]


# ---- commands -------------------------------------------------------------------------------


def cmd_create(args: argparse.Namespace) -> int:
    with _connect(args) as orch:
        details = orch.job_types.create(
            args.manifest, configuration_from(args), is_paused=args.paused,
            max_scheduled=args.max_scheduled, icon_code=args.icon_code)
    if args.json:
        print_json(details.model_dump(mode="json"))
    else:
        paused = " (paused)" if details.is_paused else ""
        print(f"{details.name}@{details.version}: revision {details.revision_num}{paused}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Exit 1 when invalid, so a script can check a manifest before registering it."""
    with _connect(args) as orch:
        result = orch.job_types.validate(args.manifest, configuration_from(args))
    if args.json:
        print_json(result.model_dump(mode="json"))
    else:
        print("valid" if result.is_valid else "invalid")
        for kind, issues in (("error", result.errors), ("warning", result.warnings)):
            for issue in issues:
                print(f"{kind}: {issue.name}: {issue.description}")
    return 0 if result.is_valid else 1


def cmd_list(args: argparse.Namespace) -> int:
    with _connect(args) as orch:
        rows = orch.job_types.list(args.keyword)
        if args.all:  # the service lists active or inactive names: --all asks for both
            rows = sorted(rows + orch.job_types.list(args.keyword, is_active=False), key=lambda r: r.name)
    if args.json:
        print_json([row.model_dump(mode="json") for row in rows])
        return 0
    print_table(["name", "latest", "versions", "active", "title"],
                [[r.name, r.latest_version, r.num_versions, "yes" if r.is_active else "no", r.title]
                 for r in rows])
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    name, version = split_ref(args.ref)
    with _connect(args) as orch:
        details = orch.job_types.get(name, version)
    if args.json:
        print_json(details.model_dump(mode="json"))
        return 0
    interface = details.manifest.get("job", {}).get("interface", {})
    inputs = interface.get("inputs", {})
    outputs = interface.get("outputs", {})
    rows = [
        ["name", details.name], ["version", details.version], ["title", details.title],
        ["description", details.description], ["revision", details.revision_num],
        ["active", details.is_active], ["paused", details.is_paused],
        ["max scheduled", "" if details.max_scheduled is None else details.max_scheduled],
        ["command", interface.get("command", "")],
        ["inputs", _names(inputs.get("files", []) + inputs.get("json", []))],
        ["outputs", _names(outputs.get("files", []) + outputs.get("json", []))],
        ["settings", ", ".join(f"{k}={v}" for k, v in details.configuration.get("settings", {}).items())],
        ["created by", details.created_by], ["modified", details.last_modified.strftime("%Y-%m-%d %H:%M:%S")],
    ]
    print_table(["field", "value"], rows, header=False)
    return 0


def _names(specs: list[dict[str, Any]]) -> str:
    return ", ".join(spec.get("name", "?") + ("" if spec.get("required", True) else "?") for spec in specs)


def _flag_command(action: str, done: str) -> Callable[[argparse.Namespace], int]:
    """pause, resume, activate, deactivate: one call on one version each."""

    def command(args: argparse.Namespace) -> int:
        with _connect(args) as orch:
            details = getattr(orch.job_types, action)(*split_ref(args.ref))
        if args.json:
            print_json(details.model_dump(mode="json"))
        else:
            print(f"{details.name}@{details.version}: {done}")
        return 0

    return command


def cmd_delete(args: argparse.Namespace) -> int:
    with _connect(args) as orch:
        orch.job_types.delete(*split_ref(args.ref))
    print(f"{args.ref}: deleted")
    return 0


# ---- configuration flags (also `run`'s) ------------------------------------------------------


def add_configuration_flags(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--configuration", metavar="CONF.json", help="{settings, mounts, priority} as JSON")
    cmd.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE", help="repeatable")
    cmd.add_argument("--secret-setting", action="append", default=[], metavar="NAME",
                     help="the setting NAME from $NAME in this shell (never on the command line)")
    cmd.add_argument("--mount", action="append", default=[], metavar="NAME=HOST_PATH", help="repeatable")


def configuration_from(args: argparse.Namespace) -> dict[str, Any] | None:
    """--configuration's file with --setting, --secret-setting and --mount laid over it."""
    configuration: dict[str, Any] = {}
    if args.configuration:
        configuration = json.loads(Path(args.configuration).read_text())
        if not isinstance(configuration, dict):
            raise ValueError(f"{args.configuration}: not a JSON object")
    settings = {**configuration.get("settings", {}), **dict(key_value(i) for i in args.setting)}
    missing = [name for name in args.secret_setting if name not in os.environ]
    if missing:
        raise SystemExit(f"error: --secret-setting {missing[0]}: not set in this environment")
    settings.update({name: os.environ[name] for name in args.secret_setting})
    mounts = {**configuration.get("mounts", {}), **dict(key_value(i) for i in args.mount)}
    for key, value in (("settings", settings), ("mounts", mounts)):
        if value:
            configuration[key] = value
    return configuration or None


def key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"expected NAME=VALUE, got {item!r}")
    return key, value


# ---- the parser -----------------------------------------------------------------------------


def add_job_type_commands(sub: Any, client_options: ClientOptions) -> None:
    """`job-type ACTION ...` under the top-level subparsers `sub`."""
    group = sub.add_parser("job-type", help="register and manage job types (Seed manifests)")
    actions = group.add_subparsers(dest="action", required=True)

    def action(name: str, help_text: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        return client_options(actions.add_parser(name, help=help_text), func)

    for name, help_text, func in (("create", "register a job type, or edit its version", cmd_create),
                                  ("validate", "check a manifest; exit 1 when invalid", cmd_validate)):
        cmd = action(name, help_text, func)
        cmd.add_argument("manifest", help="the Seed manifest, a JSON file")
        add_configuration_flags(cmd)
        if name == "create":
            cmd.add_argument("--max-scheduled", type=int, metavar="N", help="most of its jobs sent or running at once")
            cmd.add_argument("--paused", action="store_true", help="register it paused")
            cmd.add_argument("--icon-code")

    listing = action("list", "list job types (active ones unless --all)", cmd_list)
    listing.add_argument("--keyword", help="part of a name, title or tag")
    listing.add_argument("--all", action="store_true", help="inactive ones too")

    action("show", "show a job type (default: its newest version)", cmd_show).add_argument(
        "ref", metavar="NAME[@VERSION]")
    for name, done in (("pause", "paused"), ("resume", "resumed"), ("deactivate", "deactivated"),
                       ("activate", "activated")):
        action(name, f"{name} one version", _flag_command(name, done)).add_argument("ref", metavar="NAME@VERSION")
    action("delete", "delete a version no job references", cmd_delete).add_argument("ref", metavar="NAME@VERSION")


def _connect(args: argparse.Namespace) -> Orchestrator:
    return Orchestrator.connect(args.url, token=args.token)
