"""`orchestrator plot SWEEP_ID`: a sweep's results as a standalone HTML page (bokeh, opens
offline), a scatter of one column against another or, with --parallel, parallel coordinates.
Registered from orchestrator.cli, which hands over its client options (--url, --token,
--json)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from orchestrator.cli_admin import print_json
from orchestrator.cli_job_types import ClientOptions
from orchestrator.client import Orchestrator


def cmd_plot(args: argparse.Namespace) -> int:
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    if args.parallel and (args.x or args.y):
        raise SystemExit("error: --parallel draws every column (or --columns): drop --x and --y")
    if not args.parallel and not (args.x and args.y):
        raise SystemExit("error: give --x and --y (or --parallel)")
    if columns and not args.parallel:
        raise SystemExit("error: --columns goes with --parallel")
    from orchestrator.plots import save_html

    with Orchestrator.connect(args.url, token=args.token) as orch:
        sweep = orch.get_sweep(args.sweep_id)
        if args.parallel:
            figure = sweep.plot_parallel(columns, args.color)
        else:
            figure = sweep.plot(args.x, args.y, args.color)
    target = Path(args.output or f"{args.sweep_id}-plot.html")
    title = "; ".join(figure.title.text.splitlines())  # what it shows; then what it left out
    save_html(figure, target, f"sweep {args.sweep_id}: {title}")
    if args.json:
        print_json({"file": str(target), "title": title})
    else:
        print(f"{title} -> {target}", file=sys.stderr)
    return 0


def add_plot_commands(sub: Any, client_options: ClientOptions) -> None:
    """`plot SWEEP_ID ...` under the top-level subparsers `sub`."""
    plot = client_options(sub.add_parser(
        "plot", help="plot a sweep's results as a standalone HTML page"), cmd_plot)
    plot.add_argument("sweep_id")
    plot.add_argument("--x", metavar="COLUMN", help="the results column on the x axis")
    plot.add_argument("--y", metavar="COLUMN", help="the results column on the y axis")
    plot.add_argument("--color", metavar="COLUMN",
                      help="colour by this column (numbers: a colour bar; text such as status: a colour each)")
    plot.add_argument("--parallel", action="store_true",
                      help="parallel coordinates of the variables and outputs instead")
    plot.add_argument("--columns", metavar="A,B,...", help="with --parallel: these columns, in this order")
    plot.add_argument("-o", "--output", metavar="FILE", help="the HTML file (default: SWEEP_ID-plot.html)")
