"""How many runs one Dask task should carry: the rule sweep batches and batched single jobs share.

Dask costs about a millisecond of scheduler and worker time per task, more than a trivial run
itself, so cheap runs travel several to a task. A batch holds about TARGET_BATCH_S of the work
timed so far, never more than its fair share of what waits (so the tail still spreads over every
slot) nor MAX_BATCH_RUNS; near the end batches shrink, but not below MIN_BATCH_S of work.
"""

from __future__ import annotations

import math

TARGET_BATCH_S = 0.5
MIN_BATCH_S = 0.05  # the tail's batches stay worth a Dask round trip
MAX_BATCH_RUNS = 1000
SMOOTHING = 0.5  # weight of the newest timing in the running estimate
MAX_GROWING_SLOTS = 2000  # tasks a growable cluster is shown at once: adaptive scaling grows for them


def batch_size(run_seconds: float | None, waiting: int, slots: int) -> int:
    """Runs for the next task, given the seconds a run took so far (None: never timed, so
    one: a run of unknown length never holds others back), the runs waiting and the slots."""
    if run_seconds is None:
        return 1
    run_s = max(run_seconds, 1e-6)
    fair_share = max(math.ceil(waiting / max(slots, 1)), int(MIN_BATCH_S / run_s))
    return max(1, min(int(TARGET_BATCH_S / run_s), fair_share, MAX_BATCH_RUNS))


def smoothed(old: float | None, new: float | None) -> float | None:
    """The running estimate of a run's seconds after one more timing."""
    if new is None:
        return old
    return new if old is None else SMOOTHING * new + (1 - SMOOTHING) * old
