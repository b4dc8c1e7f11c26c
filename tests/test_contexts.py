"""The warm-context pool of a worker, with real child processes and no cluster: artifacts on
the path, reuse, limits, idle and memory-pressure ending, and what cannot be a context."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import psutil
import pytest

from orchestrator.worker import contexts
from orchestrator.worker.contexts import Artifact, ContextFailed, ContextKey, ContextPool
from tests.support.wheels import wordcount_wheel


@pytest.fixture
def store(tmp_path: Path) -> Path:
    folder = tmp_path / "store"
    folder.mkdir()
    (folder / "wordcount-1").write_bytes(wordcount_wheel(1))
    (folder / "greet").write_bytes(b"def hello():\n    return 'hi'\n")
    return folder


def fetcher(store: Path):
    def fetch(key: str, path: str) -> None:
        shutil.copyfile(store / key, path)
    return fetch


def key(*artifacts: Artifact, owner: str = "ada") -> ContextKey:
    return ContextKey(owner, None, "memory://", tuple(artifacts))


WHEEL = Artifact("wordcount@1", "wordcount-1")


def borrow_pid(pool: ContextPool, wanted: ContextKey, store: Path) -> int:
    with pool.borrow(wanted, None, fetcher(store)) as context:
        return context.process.pid


def test_an_idle_context_is_lent_again_and_other_keys_get_their_own(store: Path):
    pool = ContextPool()
    try:
        first = borrow_pid(pool, key(WHEEL), store)
        again = borrow_pid(pool, key(WHEEL), store)
        other_owner = borrow_pid(pool, key(WHEEL, owner="bob"), store)

        assert again == first and other_owner != first
        described = pool.describe()
        assert [c["jobs_run"] for c in described] == [2, 1]
        assert all(c["artifacts"] == ["wordcount@1"] and not c["busy"] for c in described)
    finally:
        pool.end_all()


def test_contexts_past_the_limit_or_their_idle_time_are_ended(store: Path):
    pool = ContextPool()
    pool.configure(idle_s=600, max_contexts=1)
    try:
        first = borrow_pid(pool, key(WHEEL), store)
        second = borrow_pid(pool, key(WHEEL, owner="bob"), store)

        assert [c["pid"] for c in pool.describe()] == [second]  # the older idle one went
        assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE
        pool.configure(idle_s=0.01)
        time.sleep(0.05)
        pool.reap()
        assert pool.describe() == []
    finally:
        pool.end_all()


def test_idle_contexts_go_first_when_memory_is_short(store: Path, monkeypatch):
    pool = ContextPool()
    try:
        borrow_pid(pool, key(WHEEL), store)
        monkeypatch.setattr(contexts, "memory_short", lambda: True)

        ended = pool.reap()

        assert len(ended) == 1 and pool.describe() == []
    finally:
        pool.end_all()


def test_a_single_module_needs_a_module_name(store: Path, tmp_path: Path):
    site = tmp_path / "site"
    site.mkdir()
    contexts.unpack(Artifact("greet.py@1", "greet"), site, fetcher(store))
    assert (site / "greet.py").read_text().startswith("def hello")

    with pytest.raises(ContextFailed, match="cannot be a module name"):
        contexts.unpack(Artifact("my-tool@1", "greet"), site, fetcher(store))


def test_a_wheel_is_extracted_onto_the_path(store: Path, tmp_path: Path):
    site = tmp_path / "site"
    site.mkdir()
    contexts.unpack(WHEEL, site, fetcher(store))

    assert (site / "wordcount" / "jobs.py").is_file()
    assert (site / "wordcount-1.0.dist-info" / "METADATA").is_file()
    assert not list(site.glob(".*download"))


def test_a_reap_while_a_context_starts_leaves_its_site(store: Path):
    """The reaper thread (or another job's end) may reap between a new context's site being
    made and the context being listed: the site must stay, or its job cannot import."""
    pool = ContextPool()
    made = pool._site

    def site_then_reap(*args):
        folder = made(*args)
        pool.reap()
        return folder

    pool._site = site_then_reap
    try:
        with pool.borrow(key(WHEEL), None, fetcher(store)) as context:
            site = Path(psutil.Process(context.process.pid).cwd())
            assert (site / "wordcount" / "jobs.py").is_file(), site
    finally:
        pool.end_all()


def test_each_new_context_has_a_site_of_its_own(store: Path):
    """An ended context's site is removed after the pool's lock is let go: a newer context
    of the same key must not be in the same folder."""
    pool = ContextPool()
    try:
        with pool.borrow(key(WHEEL), None, fetcher(store)) as first:
            first_site = psutil.Process(first.process.pid).cwd()
            first.end()  # died: dropped when it is given back
        with pool.borrow(key(WHEEL), None, fetcher(store)) as second:
            second_site = psutil.Process(second.process.pid).cwd()
        assert second_site != first_site and not Path(first_site).exists()
        assert (Path(second_site) / "wordcount" / "jobs.py").is_file()
    finally:
        pool.end_all()
