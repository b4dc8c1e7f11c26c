"""Chaos soak: a sweep and single jobs on a real TLS cluster, undisturbed and then under chaos.

Everything runs as real processes on 127.0.0.1 (free ports) in a temporary folder: an
external `dask scheduler` on TLS (certificates made here with
`orchestrator.certs`, 0600 files), 3 `orchestrator worker`
processes (`--cores 2 --nthreads 2`) and `orchestrator serve --scheduler ...` on its own data
folder. Each process runs in its own session, so a kill takes its whole group (a worker's
nanny and worker process together).

The workload, measured twice on the same cluster:

- one shell sweep of `--runs` runs (POST /api/v1/sweeps, cases), each sleeping a seeded
  0-200 ms, appending its attempt's Dask key to a shared execution ledger, and writing
  `outputs.json` = {"seen": <index>, "key": "$JOB_TASK_KEY"};
- `--jobs` single jobs (POST /api/v1/jobs) doing the same with their own number, submitted at
  seeded times spread over `--spread-s` seconds, each under a unique name.

1. undisturbed (baseline): the workload alone;
2. chaos: the same workload while, on a schedule drawn from `--seed` (printed first), a
   random worker's process group is SIGKILLed every few seconds and a replacement started,
   the scheduler is SIGKILLed once and started again on the same port (workers that exit
   with it are replaced, as a process supervisor would), and the server is SIGKILLed once
   and started again on the same data folder and port. Single jobs keep being submitted
   meanwhile: a POST is retried until the server answers, and a POST whose answer was lost
   (the server died mid-request) is looked up by its name before it is ever sent again. A
   POST refused with 400 "no worker can satisfy" (nothing was created) is reported as a
   problem and sent again, so that the rest of the checks still cover that job.

Then every job of both phases is checked: COMPLETED exactly once (its status history), the
sweep's results table has each index once, each outputs.json value (results table, or GET
/jobs/{id}/result) equals its index and its key names the attempt the record names, the
stored outputs.json file says the same, no attempt executed twice (the ledger), and no
process of any job is left on the machine (psutil: environment JOB_ID / JOB_TASK_KEY). It
prints the chaos events, retries grouped by reason, the elapsed times and

    ratio chaos/undisturbed = X.XX   (time)

and exits 1 on any loss, duplicate, wrong value, wrong attempt or leftover process, printing
each problem with its job id and status history.

    python benchmarks/chaos.py [--seed N] [--runs 2000] [--jobs 200] [--quick]
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
from chaos_checks import check_phase, history_text, leftovers, read_ledger, single_name  # noqa: E402
from chaos_cluster import REQUEST_TIMEOUT_S, START_TIMEOUT_S, TERMINAL, Api, Cluster  # noqa: E402

from orchestrator.certs import write_tls_files  # noqa: E402

POLL_S = 0.5
PROGRESS_EVERY_S = 10.0
WORKERS = 3
SLEEP_MAX_MS = 200


# ---- the workload -----------------------------------------------------------------------


def sleep_ms(seed: int, index: int, kind: str) -> int:
    """A run's or job's sleep, seeded by its index: the same in both phases."""
    return random.Random(f"{seed}-{kind}-{index}").randrange(SLEEP_MAX_MS + 1)


def sweep_body(label: str, runs: int, seed: int, ledger: Path) -> dict:
    command = ('sleep ${ms}; echo "$JOB_TASK_KEY" >> ' + str(ledger)
               + "; printf '{\"seen\": %s, \"key\": \"%s\"}' ${i} \"$JOB_TASK_KEY\" > outputs.json")
    cases = [{"i": i, "ms": sleep_ms(seed, i, "run") / 1000} for i in range(runs)]
    return {"name": f"{label}-sweep", "command": command, "cases": cases}


def single_body(label: str, number: int, seed: int, ledger: Path) -> dict:
    seconds = sleep_ms(seed, number, "job") / 1000
    command = (f'sleep {seconds}; echo "$JOB_TASK_KEY" >> {ledger}; '
               f"printf '{{\"seen\": %s, \"key\": \"%s\"}}' {number} \"$JOB_TASK_KEY\" > outputs.json")
    return {"name": single_name(label, number), "command": command}


def submit_times(seed: int, jobs: int, spread_s: float) -> list[float]:
    rng = random.Random(f"{seed}-submit")
    return sorted(rng.uniform(0, spread_s) for _ in range(jobs))


class Submitter(threading.Thread):
    """POSTs the single jobs at their times. A POST that may have reached the server (its
    answer lost) is looked up by the job's unique name before it is ever sent again."""

    def __init__(self, url: str, label: str, seed: int, times: list[float], ledger: Path,
                 started: float, deadline: float):
        super().__init__(daemon=True, name=f"submit-{label}")
        self.url, self.label, self.seed, self.times = url, label, seed, times
        self.ledger, self.started, self.deadline = ledger, started, deadline
        self.ids: dict[int, str] = {}
        self.counts: Counter[str] = Counter()
        self.problems: list[str] = []
        self.refusals: list[tuple[str, datetime, str]] = []  # (job name, when, answer)
        self.finished_at: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url + "/api/v1", timeout=REQUEST_TIMEOUT_S) as http:
            for number, at in enumerate(self.times):
                wait = self.started + at - time.monotonic()
                if wait > 0 and self.stop.wait(wait):
                    return
                try:
                    self.ids[number] = self._submit(http, number)
                except Exception as exc:  # noqa: BLE001 - reported, the rest go on
                    self.problems.append(f"{single_name(self.label, number)}: never submitted: {exc}")
                if self.stop.is_set():
                    return
        self.finished_at = time.monotonic()

    def _submit(self, http: httpx.Client, number: int) -> str:
        body = single_body(self.label, number, self.seed, self.ledger)
        name = body["name"]
        tries = 0
        while True:
            if time.monotonic() > self.deadline:
                raise RuntimeError("deadline passed")
            tries += 1
            try:
                response = http.post("/jobs", json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                self.counts["POST refused (server down), retried"] += 1
                time.sleep(0.25)  # never reached the server: safe to send again
                continue
            except httpx.TransportError as exc:
                self.counts[f"POST answer lost ({type(exc).__name__}), looked up"] += 1
                found = self._lookup(http, name)
                if found:
                    return found
                continue
            if response.status_code == 201:
                if tries > 1:
                    self.counts["POST answered after retries"] += 1
                return response.json()["id"]
            if response.status_code >= 500:
                self.counts[f"POST answered {response.status_code}, looked up"] += 1
                found = self._lookup(http, name)
                if found:
                    return found
                continue
            if response.status_code == 400 and "no worker can satisfy" in response.text:
                # Nothing was created, so sending it again cannot make a duplicate; the
                # refusal itself is reported as a problem of the orchestrator.
                self.refusals.append((name, datetime.now(timezone.utc), response.text[:300]))
                self.counts["POST refused 400 (no worker can satisfy), retried"] += 1
                time.sleep(0.5)
                continue
            raise RuntimeError(f"POST /jobs answered {response.status_code}: {response.text[:500]}")

    def _lookup(self, http: httpx.Client, name: str) -> str | None:
        """The job of this name if the server recorded it (once it answers again)."""
        deadline = min(self.deadline, time.monotonic() + START_TIMEOUT_S)
        while time.monotonic() < deadline:
            try:
                response = http.get("/jobs", params={"search": name, "page_size": 1000})
                if response.status_code == 200:
                    named = [job["id"] for job in response.json()["results"] if job["name"] == name]
                    if len(named) > 1:
                        self.problems.append(f"{name}: submitted once, recorded {len(named)} times: {named}")
                    if named:
                        self.counts["lost answers found recorded"] += 1
                    return named[0] if named else None
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"could not look {name} up")


# ---- chaos ------------------------------------------------------------------------------


@dataclass
class Event:
    at: float  # seconds after the phase started
    kind: str  # kill-worker, restart-scheduler, kill-server
    pick: float = 0.0  # which worker (a fraction of the live ones, in name order)
    outage_s: float = 0.0  # how long the scheduler or server stays down


def make_schedule(seed: int, chaos_s: float, interval: tuple[float, float]) -> list[Event]:
    rng = random.Random(f"{seed}-chaos")
    big = [Event(rng.uniform(0.25, 0.40) * chaos_s, "restart-scheduler", outage_s=rng.uniform(0.5, 2.0)),
           Event(rng.uniform(0.55, 0.70) * chaos_s, "kill-server", outage_s=rng.uniform(0.5, 2.0))]
    events = list(big)
    t = rng.uniform(*interval) / 2
    while t < chaos_s:
        pick = rng.random()
        if all(abs(t - e.at) > 1.5 for e in big):
            events.append(Event(t, "kill-worker", pick=pick))
        t += rng.uniform(*interval)
    return sorted(events, key=lambda e: e.at)


def describe(event: Event) -> str:
    if event.kind == "kill-worker":
        return f"t={event.at:6.1f}s kill-worker (pick {event.pick:.2f})"
    return f"t={event.at:6.1f}s {event.kind} (down {event.outage_s:.1f} s)"


class Chaos(threading.Thread):
    """Runs the schedule against the cluster (and supervises it throughout)."""

    def __init__(self, cluster: Cluster, schedule: list[Event], started: float):
        super().__init__(daemon=True, name="chaos")
        self.cluster, self.schedule, self.started = cluster, schedule, started
        self.log: list[tuple[datetime, str]] = []  # (when, what), for attribution
        self.counts: Counter[str] = Counter()
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.not_reached: list[Event] = list(schedule)  # events still to come

    def note(self, what: str) -> None:
        now = datetime.now(timezone.utc)
        self.log.append((now, what))
        print(f"  [chaos {time.monotonic() - self.started:6.1f}s {now.strftime('%H:%M:%S.%f')[:-3]}] {what}",
              flush=True)

    def run(self) -> None:
        pending = self.not_reached
        while not self.stop.is_set():
            for what in self.cluster.supervise():
                self.note(what)
            if pending and time.monotonic() - self.started >= pending[0].at:
                try:
                    self._do(pending.pop(0))
                except Exception as exc:  # noqa: BLE001 - reported at the end
                    self.errors.append(f"chaos event failed: {exc!r}")
                    self.note(f"event failed: {exc!r}")
                continue
            self.stop.wait(0.1)

    def _do(self, event: Event) -> None:
        cluster = self.cluster
        if event.kind == "kill-worker":
            with cluster.lock:
                names = sorted(cluster.workers, key=lambda n: int(n[1:]))
                if not names:
                    self.note("kill-worker: no worker alive, skipped")
                    return
                name = names[min(int(event.pick * len(names)), len(names) - 1)]
                cluster.kill_worker(name)
                replacement = cluster.start_worker()
            self.counts["worker kills"] += 1
            self.note(f"SIGKILLed worker {name} (nanny and worker); started {replacement}")
        elif event.kind == "restart-scheduler":
            cluster.kill_scheduler()
            self.note("SIGKILLed the scheduler")
            time.sleep(event.outage_s)
            cluster.start_scheduler()
            self.counts["scheduler restarts"] += 1
            self.note(f"started the scheduler again on port {cluster.scheduler_port}")
        elif event.kind == "kill-server":
            cluster.kill_server()
            self.note("SIGKILLed the server")
            time.sleep(event.outage_s)
            cluster.start_server()
            cluster.wait_serving()
            self.counts["server restarts"] += 1
            self.note(f"the server answers again on port {cluster.server_port}")

    def preceding(self, at: datetime) -> str | None:
        """The last chaos event at or before `at` (with how long before)."""
        times = [when for when, _ in self.log]
        position = bisect.bisect_right(times, at) - 1
        if position < 0:
            return None
        when, what = self.log[position]
        return f"{what} ({(at - when).total_seconds():.2f} s before)"


class Supervisor(threading.Thread):
    """The undisturbed phase's watcher: nothing should need replacing."""

    def __init__(self, cluster: Cluster):
        super().__init__(daemon=True, name="supervisor")
        self.cluster = cluster
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.25):
            self.cluster.supervise()


# ---- one phase --------------------------------------------------------------------------


@dataclass
class PhaseResult:
    label: str
    elapsed_s: float
    sweep_id: str
    singles: dict[int, str]
    submit_counts: Counter
    problems: list[str] = field(default_factory=list)
    chaos: Chaos | None = None
    refusals: list[tuple[str, datetime, str]] = field(default_factory=list)


def run_phase(cluster: Cluster, args: argparse.Namespace, label: str, ledger: Path,
              schedule: list[Event] | None) -> PhaseResult:
    api = Api(cluster.url)
    times = submit_times(args.seed, args.jobs, args.spread_s)
    try:
        started = time.monotonic()
        deadline = started + args.deadline_s
        created = api.http.post("/sweeps", json=sweep_body(label, args.runs, args.seed, ledger),
                                timeout=REQUEST_TIMEOUT_S * 3)
        if created.status_code != 201:
            raise RuntimeError(f"POST /sweeps answered {created.status_code}: {created.text[:500]}")
        sweep_id = created.json()["id"]
        submitter = Submitter(cluster.url, label, args.seed, times, ledger, started, deadline)
        watcher: Chaos | Supervisor = Chaos(cluster, schedule, started) if schedule is not None \
            else Supervisor(cluster)
        submitter.start()
        watcher.start()
        problems: list[str] = []
        try:
            elapsed = _wait_done(api, label, sweep_id, args, submitter, started, deadline, problems)
        finally:
            submitter.stop.set()
            watcher.stop.set()
            submitter.join(timeout=REQUEST_TIMEOUT_S * 2)
            watcher.join(timeout=START_TIMEOUT_S * 2)
        problems += submitter.problems
        if isinstance(watcher, Chaos):
            problems += watcher.errors
        chaos = watcher if isinstance(watcher, Chaos) else None
        result = PhaseResult(label, elapsed, sweep_id, dict(submitter.ids), submitter.counts, problems,
                             chaos, list(submitter.refusals))
        if result.refusals:
            problems.append(_refusals_text(result))
        if elapsed != elapsed:  # NaN: the deadline ran out
            problems += _unfinished(api, result)
        return result
    finally:
        api.close()


def _wait_done(api: Api, label: str, sweep_id: str, args: argparse.Namespace, submitter: Submitter,
               started: float, deadline: float, problems: list[str]) -> float:
    """Seconds from the phase's start until every run and job has ended (NaN: deadline)."""
    last_print = started
    search = f"{label}-job-"
    while True:
        now = time.monotonic()
        try:
            counts = api.get(f"/sweeps/{sweep_id}", deadline_s=30)["counts"]
            ended = {status: api.count("/jobs", search=search, status=status, deadline_s=30) for status in TERMINAL}
        except RuntimeError:
            counts, ended = None, None  # the server is down: ask again
        runs_done = counts is not None and sum(counts.get(s, 0) for s in TERMINAL) >= args.runs
        singles_done = (ended is not None and submitter.finished_at is not None
                        and sum(ended.values()) >= len(submitter.ids))
        if runs_done and singles_done:
            return time.monotonic() - started
        if now - last_print >= PROGRESS_EVERY_S:
            last_print = now
            print(f"  [{label} {now - started:6.1f}s] sweep {counts}; singles submitted {len(submitter.ids)}"
                  f"/{args.jobs}, ended {ended}", flush=True)
        if now > deadline:
            problems.append(f"{label}: not every run and job ended within {args.deadline_s:.0f} s "
                            f"(sweep {counts}, singles ended {ended}, submitted {len(submitter.ids)})")
            return float("nan")
        time.sleep(POLL_S)


def _refusals_text(result: PhaseResult) -> str:
    """Single jobs the server refused as impossible (then sent again until accepted)."""
    names = sorted({name for name, _, _ in result.refusals})
    first, last = result.refusals[0][1], result.refusals[-1][1]
    text = (f"{result.label}: POST /jobs answered 400 {len(result.refusals)} times for {len(names)} jobs "
            f"({names[0]} .. {names[-1]}) between {first.strftime('%H:%M:%S.%f')[:-3]} and "
            f"{last.strftime('%H:%M:%S.%f')[:-3]} UTC: {result.refusals[0][2]}")
    if result.chaos is not None and (before := result.chaos.preceding(first)):
        text += f"\n      first refusal preceded by: {before}"
    return text


def _unfinished(api: Api, result: PhaseResult) -> list[str]:
    """The jobs still active at the deadline, with their histories (a few of them)."""
    problems = []
    for status in ("QUEUED", "RUNNING", "CREATED"):
        runs = api.get(f"/sweeps/{result.sweep_id}/runs", status=status, page_size=20)["results"]
        singles = api.get("/jobs", search=f"{result.label}-job-", status=status, page_size=20)["results"]
        for job in runs + singles:
            history = api.get(f"/jobs/{job['id']}/statuses")
            problems.append(f"stuck {status}: job {job['id']} ({job['name']}, attempt {job['attempt']}): "
                            + history_text(history))
    return problems


# ---- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1, help="draws the sleeps, submit times and chaos schedule")
    parser.add_argument("--runs", type=int, default=None, help="runs of the sweep (default 2000; quick 300)")
    parser.add_argument("--jobs", type=int, default=None, help="single jobs (default 200; quick 30)")
    parser.add_argument("--quick", action="store_true", help="a ~1-minute check: 300 runs, 30 jobs, shorter chaos")
    parser.add_argument("--spread-s", type=float, default=None,
                        help="single jobs are submitted over this many seconds (default 40; quick 12)")
    parser.add_argument("--chaos-s", type=float, default=None,
                        help="length of the chaos schedule (default: the undisturbed time)")
    parser.add_argument("--kill-every", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                        help="seconds between worker kills (default 4 8; quick 2 3.5)")
    parser.add_argument("--deadline-s", type=float, default=None,
                        help="most seconds a phase may take (default 600; quick 240)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (kept anyway on failure)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.runs = args.runs if args.runs is not None else (300 if quick else 2000)
    args.jobs = args.jobs if args.jobs is not None else (30 if quick else 200)
    args.spread_s = args.spread_s if args.spread_s is not None else (12.0 if quick else 40.0)
    args.kill_every = tuple(args.kill_every) if args.kill_every else ((2.0, 3.5) if quick else (4.0, 8.0))
    args.deadline_s = args.deadline_s if args.deadline_s is not None else (240.0 if quick else 600.0)
    return args


@contextlib.contextmanager
def started_cluster(folder: Path) -> Iterator[Cluster]:
    tls = write_tls_files(folder / "tls")
    cluster = Cluster(folder, tls)
    try:
        cluster.start_scheduler()
        for _ in range(WORKERS):
            cluster.start_worker()
        cluster.wait_workers(WORKERS)
        cluster.start_server()
        cluster.wait_serving()
        yield cluster
    finally:
        cluster.close()


def report_phase(result: PhaseResult, args: argparse.Namespace) -> None:
    total = args.runs + args.jobs
    elapsed = result.elapsed_s
    rate = total / elapsed if elapsed and elapsed == elapsed else float("nan")
    print(f"{result.label}: {args.runs} runs + {args.jobs} jobs in {elapsed:.2f} s = {rate:.1f} jobs/s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="orchestrator-chaos-"))
    print(f"chaos soak: seed {args.seed}, {args.runs} runs + {args.jobs} jobs, folder {folder}", flush=True)
    try:
        with started_cluster(folder) as cluster:
            print(f"scheduler {cluster.scheduler_address} (TLS), {WORKERS} workers (2 cores, 2 threads), "
                  f"server {cluster.url}", flush=True)
            ok = soak(cluster, folder, args)
    except Exception as exc:  # noqa: BLE001 - every process is gone (started_cluster); say why
        import traceback

        traceback.print_exc()
        print(f"chaos soak aborted: {exc!r}")
        print(f"kept {folder} (logs/, data/, executions.txt)")
        return 2
    if ok and not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        print(f"kept {folder} (logs/, data/, executions.txt)")
    return 0 if ok else 1


def soak(cluster: Cluster, folder: Path, args: argparse.Namespace) -> bool:
    """Both phases, the checks and the report; True when nothing was wrong."""
    ledger = folder / "executions.txt"
    baseline = run_phase(cluster, args, "base", ledger, None)
    report_phase(baseline, args)

    measured = baseline.elapsed_s == baseline.elapsed_s
    chaos_s = args.chaos_s or (max(10.0, round(baseline.elapsed_s, 1)) if measured else 60.0)
    schedule = make_schedule(args.seed, chaos_s, args.kill_every)
    print(f"chaos schedule (seed {args.seed}, {chaos_s:.1f} s; replay with --chaos-s {chaos_s}):")
    for event in schedule:
        print(f"  {describe(event)}")
    chaotic = run_phase(cluster, args, "chaos", ledger, schedule)
    report_phase(chaotic, args)

    lines, by_job = read_ledger(ledger)
    checks = {r.label: check_phase(cluster, r, args, lines, by_job) for r in (baseline, chaotic)}
    job_ids = set().union(*(c.job_ids for c in checks.values()))
    left = leftovers(job_ids)

    problems = [*baseline.problems, *chaotic.problems]
    for checked in checks.values():
        problems += checked.problems
    problems += [f"leftover job process: {what}" for what in left]
    problems += [f"unexpected exit: {what}" for what in cluster.unexpected]

    chaos = chaotic.chaos
    done = chaos.counts if chaos else Counter()
    print("chaos events:")
    print(f"  worker kills: {done['worker kills']}")
    print(f"  worker exits replaced (not killed by the script): {cluster.counts['worker exits (replaced)']}")
    print(f"  scheduler restarts: {done['scheduler restarts']}")
    print(f"  server restarts: {done['server restarts']}")
    if chaos is not None and chaos.not_reached:
        print(f"  not reached before the workload ended: {', '.join(describe(e) for e in chaos.not_reached)}")
    for label, result in (("undisturbed", baseline), ("chaos", chaotic)):
        checked = checks[result.label]
        print(f"{label}: {len(checked.job_ids)} jobs checked, jobs by final attempt "
              f"{dict(sorted(checked.attempts.items()))}, executions {checked.executions} "
              f"({checked.superseded_executions} of superseded attempts)")
        print(f"  requeues: {sum(checked.requeues.values())}")
        for reason, n in checked.requeues.most_common():
            print(f"  requeued: {n} x {reason}")
        for reason, n in checked.first_queued.most_common():
            print(f"  first queued: {n} x {reason}")
        for what, n in sorted(result.submit_counts.items()):
            print(f"  submitting: {n} x {what}")
    print(f"leftover job processes: {len(left)}")
    print(f"problems: {len(problems)}")
    for problem in problems:
        print(f"  PROBLEM {problem}")
    print(f"undisturbed: {baseline.elapsed_s:.2f} s")
    print(f"chaos: {chaotic.elapsed_s:.2f} s")
    print(f"ratio chaos/undisturbed = {chaotic.elapsed_s / baseline.elapsed_s:.2f}")
    return not problems


if __name__ == "__main__":
    sys.exit(main())
