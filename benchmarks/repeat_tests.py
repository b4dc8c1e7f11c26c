"""Run a pytest selection many times in a row, to catch tests that fail only sometimes.

Each round is a fresh `python -m pytest -q -p no:cacheprovider ...` process in the repository
root (no state carried from one round to the next, no cache written). Prints each round's
outcome and time, the last lines of a failed round's output, and then

    passed rounds: X/N

exiting 1 if any round failed (a round that collects no test counts as failed).
Arguments it does not know go to pytest as they are (e.g. `--timeout=300`).

    python benchmarks/repeat_tests.py                        # crash recovery + persistence, 20 rounds
    python benchmarks/repeat_tests.py --count 5 -k worker tests/test_crash_recovery.py
    python benchmarks/repeat_tests.py --stop-on-failure tests/test_cluster.py
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TESTS = ["tests/test_crash_recovery.py", "tests/test_persistence.py"]
TAIL_LINES = 40


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tests", nargs="*", default=DEFAULT_TESTS,
                        help=f"pytest paths or node ids (default: {' '.join(DEFAULT_TESTS)})")
    parser.add_argument("--count", type=int, default=20, help="rounds (default 20)")
    parser.add_argument("-k", dest="keyword", default=None, help="pytest -k expression")
    parser.add_argument("--stop-on-failure", action="store_true",
                        help="stop after the first failed round")
    parser.add_argument("--round-timeout-s", type=float, default=1800.0,
                        help="most seconds one round may take (default 1800)")
    args, extra = parser.parse_known_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    args.pytest_args = extra  # anything else goes to pytest as it is
    return args


def pytest_command(args: argparse.Namespace) -> list[str]:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    if args.keyword:
        command += ["-k", args.keyword]
    return [*command, *args.pytest_args, *args.tests]


def summary_line(output: str) -> str:
    """pytest's last line (`3 passed in 41.20s`), or the last non-empty one."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1].strip("= ") if lines else "(no output)"


def run_round(command: list[str], timeout_s: float) -> tuple[int, str, float]:
    """One pytest process in its own session. A round that runs out of time is killed with
    everything it started (servers and workers that tests start in sessions of their own)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = process.communicate(timeout=timeout_s)
        code, output = process.returncode, out.decode(errors="replace")
    except subprocess.TimeoutExpired:
        kill_tree(process)
        out, _ = process.communicate()
        code = -1
        output = out.decode(errors="replace") + f"\nround timed out after {timeout_s:.0f} s"
    except BaseException:  # Ctrl-C: take the round's processes down with us
        kill_tree(process)
        process.wait()
        raise
    return code, output, time.perf_counter() - started


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the round's process, its descendants and their process groups."""
    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    groups = {process.pid}
    for child in descendants:
        with contextlib.suppress(psutil.Error, OSError):
            groups.add(os.getpgid(child.pid))
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    for child in descendants:
        with contextlib.suppress(psutil.Error):
            child.kill()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = pytest_command(args)
    print("running:", " ".join(command[1:]), f"x {args.count}", flush=True)
    passed = ran = 0
    failed_rounds: list[int] = []
    durations: list[float] = []
    for number in range(1, args.count + 1):
        code, output, seconds = run_round(command, args.round_timeout_s)
        ran += 1
        durations.append(seconds)
        ok = code == 0  # pytest's 5 (nothing collected) is no pass either
        passed += ok
        verdict = "pass" if ok else f"FAIL (exit {code})"
        print(f"round {number}/{args.count}: {verdict} in {seconds:.1f} s: {summary_line(output)}", flush=True)
        if not ok:
            failed_rounds.append(number)
            tail = output.splitlines()[-TAIL_LINES:]
            print("\n".join(f"    | {line}" for line in tail), flush=True)
            if args.stop_on_failure:
                break
    print(f"passed rounds: {passed}/{args.count}"
          + (f" (stopped after round {ran}: the rest did not run)" if ran < args.count else ""))
    if failed_rounds:
        print(f"failed rounds: {', '.join(map(str, failed_rounds))}")
    if durations:
        print(f"round time: min {min(durations):.1f} s, max {max(durations):.1f} s, "
              f"total {sum(durations):.1f} s")
    return 0 if passed == ran else 1


if __name__ == "__main__":
    sys.exit(main())
