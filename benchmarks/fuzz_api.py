"""A long schemathesis run against the REST API, authenticated, with every check.

Starts the orchestrator's server in this process (embedded Dask LocalCluster, temporary data
directory, 127.0.0.1 only), creates a token, seeds real resources (a finished job with output
files, an unsubmitted job, a sweep, a binary) and fuzzes every documented operation but the
SSE stream, positive and negative requests alike. The harness is tests/fuzzing.py, as in the
CI run (tests/test_fuzz.py), with more examples and every check schemathesis has (positive
data accepted, negative data rejected, auth enforced, ...) unless --checks ci. Nothing fuzzed
runs a command: created jobs are saved unsubmitted and sweeps are dry runs.

At the end it prints each operation's status counts, each distinct failure with a curl command
reproducing it, and every distinct uncaught server exception with its traceback; the exit
status is 1 when anything failed.

    python benchmarks/fuzz_api.py                       # 100 examples per operation and mode
    python benchmarks/fuzz_api.py --examples 500 --seed 7 --only 'sweeps'
    python benchmarks/fuzz_api.py --checks ci --mode positive
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the harness lives with the tests

from hypothesis.errors import HypothesisDeprecationWarning  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

from orchestrator.config import Settings  # noqa: E402
from orchestrator.loop_thread import LoopThread  # noqa: E402
from orchestrator.server.running import start_server  # noqa: E402
from tests.fuzzing import CI_CHECKS, EXCLUDED, all_checks, fuzz, load_schema, make_seeds  # noqa: E402


class ServerErrors(logging.Handler):
    """Uncaught exceptions the server logged, each distinct one kept once with its request."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: dict[str, tuple[str, str, int]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if not record.exc_info:
            return
        exc_type, exc, tb = record.exc_info
        frame = traceback.extract_tb(tb)[-1] if tb else None
        key = f"{exc_type.__name__} at {frame.filename}:{frame.lineno}" if frame else repr(exc)
        message, text, count = self.seen.get(key, (record.getMessage(), "", 0))
        if not text:
            text = "".join(traceback.format_exception(exc_type, exc, tb))
        self.seen[key] = (message, text, count + 1)

    def summary(self) -> str:
        parts = [f"{len(self.seen)} distinct uncaught server exceptions"]
        for key, (message, text, count) in self.seen.items():
            parts.append(f"--- {key} (x{count})\n{message}\n{text}")
        return "\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=100, help="per operation and generation mode")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random)")
    parser.add_argument("--mode", choices=["all", "positive", "negative"], default="all")
    parser.add_argument("--checks", choices=["all", "ci"], default="all")
    parser.add_argument("--no-coverage", action="store_true",
                        help="skip schemathesis's deterministic coverage cases")
    parser.add_argument("--only", default=None, help="regex: fuzz only the operations it matches")
    parser.add_argument("--workers", type=int, default=1, help="worker processes of the embedded cluster")
    parser.add_argument("--request-timeout", type=float, default=30.0)
    args = parser.parse_args()

    modes = {
        "all": (GenerationMode.POSITIVE, GenerationMode.NEGATIVE),
        "positive": (GenerationMode.POSITIVE,),
        "negative": (GenerationMode.NEGATIVE,),
    }[args.mode]
    warnings.filterwarnings("ignore", category=HypothesisDeprecationWarning)  # schemathesis's own
    errors = ServerErrors()
    logging.getLogger("tornado.application").addHandler(errors)
    logging.getLogger("tornado.application").propagate = False  # summarised at the end instead

    with tempfile.TemporaryDirectory(prefix="fuzz-api-") as data_dir:
        settings = Settings(
            data_dir=Path(data_dir), host="127.0.0.1", port=0,
            dashboard_address="127.0.0.1:0", workers=args.workers,
        )
        loop = LoopThread()
        running = loop.run(start_server(settings), timeout=300)
        try:
            token = running.service.tokens.create("alice")
            api = running.url + "/api/v1"
            print(f"server {running.url}; seeding", flush=True)
            seeds = make_seeds(api, token)
            for problem in seeds.problems:
                print(f"seeding: {problem}", flush=True)
            schema = load_schema(api, token)
            exclude = set(EXCLUDED)
            if args.only:
                pattern = re.compile(args.only)
                exclude |= {
                    op.ok().label for op in schema.get_all_operations()
                    if not pattern.search(op.ok().label)
                }
            report = fuzz(
                schema, token, seeds, max_examples=args.examples,
                checks=all_checks() if args.checks == "all" else CI_CHECKS, modes=modes,
                seed=args.seed, coverage=not args.no_coverage, request_timeout=args.request_timeout, exclude=exclude,
                log=lambda line: print(line, flush=True),
            )
        finally:
            loop.run(running.close(), timeout=120)
            loop.stop()
    print()
    print(report.summary())
    print()
    print(errors.summary())
    return 1 if report.findings or errors.seen else 0


if __name__ == "__main__":
    sys.exit(main())
