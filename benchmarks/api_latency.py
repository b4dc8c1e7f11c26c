"""Read latency of the REST API over a large ledger, while a sweep runs, against bare Tornado.

One run:

1. records ``--rows`` jobs (default 1,000,000) in a fresh data directory's SQLite ledger, with
   Store's own schema: single jobs and runs of finished sweeps, of several owners, in every
   status a ledger keeps after a restart (CREATED and ended ones: QUEUED or RUNNING rows would
   be resubmitted when the server starts), each with its status history and result;
2. starts ``orchestrator serve`` on that directory (a subprocess, 127.0.0.1, a free port) and a
   bare Tornado app (another subprocess) answering the same JSON (one job record, a page of
   100, /health's), taken from the server once and encoded again per request, no database;
3. creates a ``--sweep-runs`` sweep (timed) and, while it runs, measures ``GET /jobs/{id}``,
   ``GET /jobs?page=N`` (first, middle, deep and last pages), the ``status=``, ``owner=``,
   ``search=`` and ``sweep_id=`` filters, ``GET /sweeps``, ``GET /sweeps/{id}`` and ``/health``
   (and the bare app's three answers): ``--concurrency`` keep-alive
   connections for ``--seconds`` each; p50, p99, max and requests/s, and the ratio of the p50
   to the bare handler's (measured in the same run, with the same client);
4. stops that sweep (timed), then creates and stops a ``--large-runs`` sweep (timed), probing
   ``/health`` every 50 ms meanwhile: its worst latency says whether the server stayed
   responsive.

    python benchmarks/api_latency.py                 # 1M rows, 1,000-run sweep, 100k-run sweep
    python benchmarks/api_latency.py --quick         # 20k rows, small sweeps: a smoke run
    python benchmarks/api_latency.py --large-runs 1000000
    python benchmarks/api_latency.py --ledger-cache /tmp/ledger-1m.db   # reruns skip step 1

Everything listens on 127.0.0.1 only. On a small shared machine numbers are noisy: compare
ratios within one run, and runs with each other only as ranges.

After the table it prints one line per goal of issue 20 (`goal search p50 = N ms (<= 50)`,
`GET /sweeps`, `status=`): the worst p50 of the lines the goal covers. A cached ledger written
by an older version is migrated when the server opens it (counted in "server: up in").
"""

from __future__ import annotations

import abc
import argparse
import contextlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from ledger_fill import Ledger, describe, populate
from loopback import free_port

API = "/api/v1"
HEALTH_PROBE_S = 0.05
RESPONSIVE_S = 1.0  # a /health slower than this during a sweep's creation or stop: blocked


# ---- the servers --------------------------------------------------------------------------

BARE_APP = textwrap.dedent('''
    import json, sys
    import tornado.ioloop, tornado.web
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    with open(sys.argv[1]) as f:
        bodies = json.load(f)

    class Bare(tornado.web.RequestHandler):
        def get(self, what):
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps(bodies[what]))

    app = tornado.web.Application([(r"/bare/(job|page|health)", Bare)])
    sockets = bind_sockets(0, address="127.0.0.1")[:1]
    HTTPServer(app).add_sockets(sockets)
    print(sockets[0].getsockname()[1], flush=True)
    tornado.ioloop.IOLoop.current().start()
''')


@dataclass
class Process:
    popen: subprocess.Popen
    port: int
    log: Path | None = None

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(60)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()

    def close(self) -> None:
        """Stop it, and say how it exited if not as asked, with the tail of its log."""
        self.stop()
        if self.popen.returncode not in (0, None, -15):
            print(f"server exited {self.popen.returncode}; log tail:\n"
                  f"{self.log.read_text()[-2000:] if self.log else ''}")



def start_orchestrator(data_dir: Path, timeout: float = 600) -> Process:
    """`orchestrator serve` on 127.0.0.1, its own Dask dashboard on a free loopback port."""
    port = free_port()
    log = data_dir / "server.log"
    env = {**os.environ, "ORCHESTRATOR_DASHBOARD_ADDRESS": f"127.0.0.1:{free_port()}",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "serve", "--host", "127.0.0.1",
             "--port", str(port), "--data-dir", str(data_dir)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
    process = Process(popen, port, log)
    deadline = time.monotonic() + timeout
    while True:
        if popen.poll() is not None:
            raise RuntimeError(f"the server exited: {log.read_text()[-3000:]}")
        try:
            if request(port, f"{API}/health", timeout=5)[0] == 200:
                return process
        except OSError:
            pass
        if time.monotonic() > deadline:
            process.stop()
            raise TimeoutError(f"the server did not answer within {timeout} s")
        time.sleep(0.2)


def start_bare(bodies: dict[str, object], folder: Path) -> Process:
    path = folder / "bare-bodies.json"
    path.write_text(json.dumps(bodies))
    popen = subprocess.Popen([sys.executable, "-c", BARE_APP, str(path)],
                             stdout=subprocess.PIPE, text=True)
    line = popen.stdout.readline() if popen.stdout else ""
    if not line.strip().isdigit():
        popen.kill()
        raise RuntimeError("the bare Tornado app did not start")
    return Process(popen, int(line))


# ---- the client ---------------------------------------------------------------------------


def request(
    port: int, path: str, method: str = "GET", body: object = None, timeout: float = 600,
    connection: http.client.HTTPConnection | None = None,
) -> tuple[int, bytes]:
    own = connection is None
    conn = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        if own:
            conn.close()


def get_json(port: int, path: str) -> dict:
    status, body = request(port, path)
    if status != 200:
        raise RuntimeError(f"GET {path} answered {status}: {body[:500]!r}")
    return json.loads(body)


@dataclass
class Stats:
    label: str
    latencies: list[float]
    seconds: float
    errors: int = 0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def quantile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def hammer(port: int, label: str, paths: list[str], seconds: float, concurrency: int) -> Stats:
    """`concurrency` keep-alive connections, each GETting `paths` in turn for `seconds`."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    started = time.perf_counter()
    deadline = started + seconds

    def worker(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        mine = latencies[n]
        i = n
        try:
            while time.perf_counter() < deadline or not mine:
                path = paths[i % len(paths)]
                i += concurrency
                begun = time.perf_counter()
                try:
                    status, _ = request(port, path, connection=conn)
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
                    status = 0
                mine.append(time.perf_counter() - begun)
                if status != 200:
                    errors[n] += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return Stats(label, [x for mine in latencies for x in mine], elapsed, sum(errors))


class Background(abc.ABC):
    """A loop (`_run`, until `_stop` is set) in a thread for the length of a `with` block."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Background:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @abc.abstractmethod
    def _run(self) -> None:
        """Sample until `_stop` is set."""


class HealthProbe(Background):
    """GET /health every HEALTH_PROBE_S in a thread; the worst latency says whether the event
    loop stayed free. Also the server's peak memory (its process tree)."""

    def __init__(self, port: int, pid: int):
        self.port, self.pid = port, pid
        self.samples: list[tuple[float, float]] = []  # (when, latency)
        self.peak_rss = 0
        super().__init__()

    def _run(self) -> None:
        import psutil

        server = psutil.Process(self.pid)
        while not self._stop.is_set():
            begun = time.perf_counter()
            with contextlib.suppress(OSError, http.client.HTTPException):
                request(self.port, f"{API}/health", timeout=600)
            self.samples.append((begun, time.perf_counter() - begun))
            try:
                rss = server.memory_info().rss + sum(
                    child.memory_info().rss for child in server.children(recursive=True))
                self.peak_rss = max(self.peak_rss, rss)
            except psutil.Error:
                pass
            self._stop.wait(HEALTH_PROBE_S)

    def worst(self, start: float, end: float) -> tuple[float, int]:
        """The worst latency of the probes sent between start and end, and their count."""
        chosen = [latency for when, latency in self.samples if start <= when <= end]
        return (max(chosen) if chosen else float("nan")), len(chosen)


# ---- sweeps -------------------------------------------------------------------------------


def sweep_body(name: str, runs: int, command: str, max_parallel: int | None = None) -> dict:
    body = {"name": name, "command": command,
            "variables": [{"name": "i", "range": {"start": 0, "stop": runs - 1, "step": 1}}]}
    if max_parallel:
        body["max_parallel"] = max_parallel
    return body


@dataclass
class SweepTiming:
    label: str
    runs: int
    create_s: float = float("nan")  # POST /sweeps answered
    stop_s: float = float("nan")  # POST /sweeps/{id}/stop answered
    ended_s: float = float("nan")  # from the stop until GET /sweeps/{id} says it ended
    counts: dict[str, int] = field(default_factory=dict)
    health_create: tuple[float, int] = (float("nan"), 0)
    health_stop: tuple[float, int] = (float("nan"), 0)
    peak_rss: int = 0
    error: str | None = None


def create_sweep(port: int, body: dict) -> tuple[str, float]:
    begun = time.perf_counter()
    status, answer = request(port, f"{API}/sweeps", "POST", body)
    elapsed = time.perf_counter() - begun
    if status != 201:
        raise RuntimeError(f"POST /sweeps answered {status}: {answer[:500]!r}")
    return json.loads(answer)["id"], elapsed


def stop_sweep(port: int, sweep_id: str, timing: SweepTiming, timeout: float = 1800) -> None:
    begun = time.perf_counter()
    status, answer = request(port, f"{API}/sweeps/{sweep_id}/stop", "POST", {})
    timing.stop_s = time.perf_counter() - begun
    if status != 202:
        raise RuntimeError(f"POST /sweeps/{sweep_id}/stop answered {status}: {answer[:500]!r}")
    deadline = time.monotonic() + timeout
    while True:
        sweep = get_json(port, f"{API}/sweeps/{sweep_id}")
        if sweep["status"] in ("COMPLETED", "FAILED", "STOPPED"):
            timing.ended_s = time.perf_counter() - begun
            timing.counts = sweep["counts"]
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"sweep {sweep_id} still {sweep['status']} after {timeout} s")
        time.sleep(0.2)


def large_sweep(port: int, pid: int, runs: int) -> SweepTiming:
    """Create a sweep of `runs` runs and stop it at once, probing /health all along."""
    timing = SweepTiming(f"{runs:,}-run sweep", runs)
    with HealthProbe(port, pid) as probe:
        time.sleep(0.3)  # a few probes at rest first
        begun = time.perf_counter()
        try:
            sweep_id, timing.create_s = create_sweep(port, sweep_body("bench_large", runs, "true"))
            created = time.perf_counter()
            stop_sweep(port, sweep_id, timing)
        except (OSError, RuntimeError, TimeoutError) as exc:
            timing.error = str(exc)[:300]
            created = time.perf_counter()
        ended = time.perf_counter()
        time.sleep(0.3)
    timing.health_create = probe.worst(begun, created)
    timing.health_stop = probe.worst(created, ended)
    timing.peak_rss = probe.peak_rss
    return timing


# ---- the run ------------------------------------------------------------------------------


@dataclass
class Line:
    label: str
    paths: list[str]
    bare: str  # which bare answer it compares with: job, page or health


def read_lines(ledger: Ledger, running_sweep: str) -> list[Line]:
    pages = max(1, -(-ledger.rows // 100))
    old_sweep = ledger.sweeps[0][0] if ledger.sweeps else running_sweep

    def jobs(label: str, **query: object) -> Line:
        return Line(label, [f"{API}/jobs?{urlencode(query)}"], "page")

    return [
        Line("GET /jobs/{id}", [f"{API}/jobs/{job_id}" for job_id in ledger.sample_ids], "job"),
        jobs("GET /jobs?page=1", page=1),
        jobs(f"GET /jobs?page={max(2, pages // 10)}", page=max(2, pages // 10)),
        jobs(f"GET /jobs?page={max(2, pages // 2)} (middle)", page=max(2, pages // 2)),
        jobs(f"GET /jobs?page={pages} (last)", page=pages),
        jobs("GET /jobs?status=FAILED", status="FAILED"),
        jobs("GET /jobs?status=COMPLETED", status="COMPLETED"),
        jobs("GET /jobs?owner=heidi", owner="heidi"),
        jobs("GET /jobs?owner=alice", owner="alice"),
        jobs("GET /jobs?search=render", search="render"),
        jobs("GET /jobs?search=zzz (no match)", search="zzz"),
        jobs("GET /jobs?search=re (2 characters)", search="re"),
        jobs("GET /jobs?sweep_id=(largest, ended)", sweep_id=old_sweep),
        jobs("GET /jobs?sweep_id=(the running one)", sweep_id=running_sweep),
        Line("GET /sweeps (first page)", [f"{API}/sweeps"], "page"),
        Line("GET /sweeps/{largest}", [f"{API}/sweeps/{old_sweep}"], "job"),
        Line("GET /health", [f"{API}/health"], "health"),
    ]


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:9.1f}"


def print_table(rows: list[Stats], bare: dict[str, Stats], kinds: dict[str, str]) -> None:
    print(f"{'endpoint':42s} {'n':>6s} {'p50 ms':>9s} {'p99 ms':>9s} {'max ms':>9s} "
          f"{'req/s':>8s} {'p50/bare':>9s} {'rate/bare':>9s} {'errors':>6s}")
    for stats in rows:
        base = bare.get(kinds.get(stats.label, ""))
        p50_ratio = stats.quantile(0.5) / base.quantile(0.5) if base and stats is not base else 1.0
        rate_ratio = stats.rate / base.rate if base and base.rate else float("nan")
        print(f"{stats.label:42s} {len(stats.latencies):6d} {fmt_ms(stats.quantile(0.5))} "
              f"{fmt_ms(stats.quantile(0.99))} {fmt_ms(max(stats.latencies))} {stats.rate:8.1f} "
              f"{p50_ratio:9.1f} {rate_ratio:9.3f} {stats.errors:6d}")
    print("p50/bare: p50 over the bare handler's p50 for the same answer (one job, a page of "
          "jobs, or /health's); rate/bare: requests/s over the bare handler's")


GOALS = [  # (goal, the lines it covers by label prefix, the p50 it must stay within, ms): issue 20
    ("search", ("GET /jobs?search=render", "GET /jobs?search=zzz"), 50.0),  # 3+ characters: indexed
    ("GET /sweeps", ("GET /sweeps (",), 20.0),
    ("status=", ("GET /jobs?status=",), 30.0),
]


def print_goals(rows: list[Stats]) -> None:
    """One line per goal: the worst p50 of the lines it covers, against its bound."""
    for goal, prefixes, bound in GOALS:
        covered = [s for s in rows if s.label.startswith(prefixes)]
        if not covered:
            continue
        worst = max(s.quantile(0.5) for s in covered) * 1000
        verdict = "met" if worst <= bound else "MISSED"
        print(f"goal {goal} p50 = {worst:.1f} ms (<= {bound:g}) {verdict}")
    for stats in rows:
        if "(2 characters)" in stats.label:  # the trigram index cannot serve it: a scan of the names
            print(f"search under 3 characters p50 = {stats.quantile(0.5) * 1000:.1f} ms (no goal: not indexed)")


def print_sweeps(timings: list[SweepTiming]) -> None:
    """create s: POST /sweeps answered; stop s: POST .../stop answered; ended s: from the stop
    until the sweep reads as ended. /health: the worst of the probes sent meanwhile."""
    print(f"{'sweep':24s} {'create s':>9s} {'stop s':>8s} {'ended s':>8s} "
          f"{'/health max ms (create)':>24s} {'/health max ms (stop)':>22s} {'responsive':>10s} "
          f"{'peak RSS':>9s}  counts")
    for t in timings:
        worst_c, n_c = t.health_create
        worst_s, n_s = t.health_stop
        health_c = f"{fmt_ms(worst_c).strip()} ({n_c} probes)" if n_c else "-"
        health_s = f"{fmt_ms(worst_s).strip()} ({n_s} probes)" if n_s else "-"
        probed = [w for w, n in (t.health_create, t.health_stop) if n]
        verdict = "-" if not probed else "yes" if max(probed) < RESPONSIVE_S else "NO"
        rss = f"{t.peak_rss / 2**30:.2f} GiB" if t.peak_rss else "-"
        counts = ", ".join(f"{k} {v}" for k, v in sorted(t.counts.items()))
        print(f"{t.label:24s} {t.create_s:9.2f} {t.stop_s:8.2f} {t.ended_s:8.2f} "
              f"{health_c:>24s} {health_s:>22s} {verdict:>10s} {rss:>9s}  {counts}")
        if t.error:
            print(f"  error: {t.error}")
    print(f"(responsive: every /health probe answered within {RESPONSIVE_S:g} s; peak RSS: the "
          "server with its Dask workers)")


def cluster_threads(port: int) -> int:
    workers = get_json(port, f"{API}/cluster")["workers"]
    return max(1, sum(worker["nthreads"] for worker in workers))


def run(args: argparse.Namespace, data_dir: Path) -> None:
    db = data_dir / "jobs.db"
    began = time.perf_counter()
    if args.ledger_cache and Path(args.ledger_cache).exists():
        shutil.copyfile(args.ledger_cache, db)
        how = f"copied from {args.ledger_cache}"
    else:
        populate(db, args.rows)
        how = "recorded"
        if args.ledger_cache:
            shutil.copyfile(db, args.ledger_cache)
    ledger = describe(db)
    print(f"ledger: {ledger.rows:,} jobs ({len(ledger.sweeps)} ended sweeps), "
          f"{ledger.history_rows:,} status rows, {db.stat().st_size / 2**20:,.0f} MiB, "
          f"{how} in {time.perf_counter() - began:.1f} s", flush=True)

    began = time.perf_counter()
    server = start_orchestrator(data_dir)
    bare = None
    try:
        print(f"server: up in {time.perf_counter() - began:.1f} s on 127.0.0.1:{server.port}", flush=True)
        bodies = {
            "job": get_json(server.port, f"{API}/jobs/{ledger.sample_ids[len(ledger.sample_ids) // 2]}"),
            "page": get_json(server.port, f"{API}/jobs?page=1"),
            "health": {"status": "ok"},
        }
        bare = start_bare(bodies, data_dir)
        threads = cluster_threads(server.port)
        measured_lines = len(read_lines(ledger, "x")) + len(bodies)
        planned_s = measured_lines * (args.seconds + 0.5)
        run_s = args.run_seconds or max(0.01, round(1.5 * planned_s * threads / args.sweep_runs, 3))
        body = sweep_body("bench_sweep", args.sweep_runs, f"sleep {run_s}")
        sweep_id, create_s = create_sweep(server.port, body)
        small = SweepTiming(f"{args.sweep_runs:,}-run sweep", args.sweep_runs, create_s=create_s)
        print(f"sweep: {args.sweep_runs:,} runs of `sleep {run_s}` on {threads} threads, created in "
              f"{create_s:.2f} s; measuring while it runs ({args.concurrency} connections, "
              f"{args.seconds:g} s per line)", flush=True)

        bare_stats = {
            kind: hammer(bare.port, f"bare tornado: {kind}", [f"/bare/{kind}"], args.seconds, args.concurrency)
            for kind in bodies
        }
        results, kinds = [], {}
        for line in read_lines(ledger, sweep_id):
            stats = hammer(server.port, line.label, line.paths, args.seconds, args.concurrency)
            results.append(stats)
            kinds[line.label] = line.bare
            print(f"  {line.label}: p50 {stats.quantile(0.5) * 1000:.1f} ms", flush=True)
        during = get_json(server.port, f"{API}/sweeps/{sweep_id}")
        stop_sweep(server.port, sweep_id, small)
        print()
        print(f"sweep progress when the measurements ended: {during['status']} "
              f"{during['counts']} ({during['progress']:.0%})")
        print()
        for kind, stats in bare_stats.items():
            kinds[stats.label] = kind
        print_table([*bare_stats.values(), *results], {k: s for k, s in bare_stats.items()}, kinds)
        print()
        print_goals(results)
        print()

        timings = [small]
        for runs in args.large_runs:
            print(f"large sweep: creating and stopping {runs:,} runs ...", flush=True)
            timings.append(large_sweep(server.port, server.popen.pid, runs))
        print()
        print_sweeps(timings)
    finally:
        if bare is not None:
            bare.stop()
        server.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="jobs in the ledger")
    parser.add_argument("--sweep-runs", type=int, default=1000, help="runs of the sweep measured under")
    parser.add_argument("--run-seconds", type=float, default=None,
                        help="sleep of each run (default: the sweep lasts about 1.5x the measurements)")
    parser.add_argument("--large-runs", type=int, nargs="*", default=[100_000],
                        help="sizes of the sweeps created and stopped at the end (0 or none: skip)")
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per endpoint")
    parser.add_argument("--concurrency", type=int, default=2, help="keep-alive client connections")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 20,000 rows, 200-run and 10,000-run sweeps, 1 s per line")
    parser.add_argument("--ledger-cache", help="copy the ledger from this file if it exists, "
                        "else record it and save a copy there (saves minutes on reruns)")
    add_data_dir_options(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.sweep_runs, args.seconds = 20_000, 200, 1.0
        args.large_runs = [10_000]
    args.large_runs = [n for n in args.large_runs if n > 0]
    return args


def add_data_dir_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", help="where the temporary data directory goes")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")


def run_in_data_dir(run: Callable[[argparse.Namespace, Path], None], args: argparse.Namespace, prefix: str) -> None:
    """`run` on a fresh temporary data directory (under --data-root), removed after unless --keep."""
    data_dir = Path(tempfile.mkdtemp(prefix=prefix, dir=args.data_root))
    try:
        run(args, data_dir)
    finally:
        if args.keep:
            print(f"data kept in {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    run_in_data_dir(run, parse_args(argv), "orchestrator-latency-")


if __name__ == "__main__":
    main()
