"""Items made by a thread of their own while the consumer works on the previous one.

A sweep's runs are made as ledger rows (Python, holding the GIL) and recorded (SQLite, which
releases the GIL while it writes): made ahead, the two overlap on two cores, and recording a
million runs takes the longer of the two instead of their sum. At most `depth` items wait, so
memory stays bounded by a few chunks.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")
POLL_S = 0.1  # how often a maker blocked on a full queue checks that it is still wanted


def made_ahead(items: Iterator[T], depth: int = 2, name: str = "made-ahead") -> Iterator[T]:
    """`items`, in order, made up to `depth` ahead by a thread; an exception it meets is
    raised to the consumer, and a consumer that stops early stops it."""
    waiting: queue.Queue = queue.Queue(depth)
    end = object()
    unwanted = threading.Event()

    def put(entry: tuple[object, BaseException | None]) -> bool:
        while not unwanted.is_set():
            try:
                waiting.put(entry, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def make() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put((end, exc))
            return
        put((end, None))

    maker = threading.Thread(target=make, name=name, daemon=True)
    maker.start()
    try:
        while True:
            item, error = waiting.get()
            if item is end:
                if error is not None:
                    raise error
                return
            yield item  # type: ignore[misc]
    finally:
        unwanted.set()
        maker.join()
