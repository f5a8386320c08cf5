"""ChangeWatcher (api/changes.py): a waiting supervisor wakes when the queue changed in any process,
on SQLite (max(events.id) polled) and on PostgreSQL (LISTEN/NOTIFY), fixtures ``db_url``/``queue``."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import text

from api.changes import LISTENER_NAME, ChangeWatcher
from api.database import Database
from api.features_file import FeatureSpec
from api.queue import FeatureQueue

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

# A second OS process: connects, says "ready", waits for "go", imports one feature and prints the
# wall-clock times just before the import and just after its commit.
CHILD = """
import sys, time
from api.database import Database
from api.features_file import FeatureSpec
from api.queue import FeatureQueue
queue = FeatureQueue(Database(sys.argv[1]))
queue.status_report()
print("ready", flush=True)
sys.stdin.readline()
before = time.time()
queue.import_specs([FeatureSpec(name="late")])
print(before, time.time(), flush=True)
"""


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 60))


@pytest.fixture
def watcher(queue: FeatureQueue) -> Iterator[ChangeWatcher]:
    w = ChangeWatcher(queue.db)
    yield w
    w.close()


def add(queue: FeatureQueue, *names: str) -> None:
    queue.import_specs([FeatureSpec(name=name) for name in names])


def test_a_feature_imported_by_another_process_wakes_the_waiting_watcher_within_a_second(
    queue: FeatureQueue, watcher: ChangeWatcher
) -> None:
    async def scenario() -> tuple[bool, float, float, float]:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            queue.db.url.render_as_string(hide_password=False),
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert child.stdin is not None and child.stdout is not None
        try:
            assert not await watcher.wait(0.3)  # the child connecting and reading changes nothing
            assert await child.stdout.readline() == b"ready\n"
            waiting = asyncio.create_task(watcher.wait(30))
            child.stdin.write(b"go\n")
            await child.stdin.drain()
            changed = await waiting
            woke = time.time()
            before, committed = map(float, (await child.stdout.readline()).split())
        finally:
            if child.returncode is None:
                child.kill()
            await child.wait()
        return changed, before, committed, woke

    changed, before, committed, woke = run(scenario())
    assert changed
    assert woke >= before, "woke before the child started its import"
    latency = woke - committed  # may be a hair below 0: PostgreSQL notifies before the child hears "committed"
    print(f"\n{queue.db.url.get_backend_name()}: woke {latency * 1000:.1f} ms after the child's commit")
    assert latency < 1.0
    assert [f.name for f in queue.claim(1, "sup")] == ["late"]


def test_wait_returns_false_at_the_timeout_when_nothing_changed_without_blocking_the_event_loop(
    queue: FeatureQueue,
) -> None:
    add(queue, "a")  # before the watcher: not a change since its construction
    w = ChangeWatcher(queue.db)
    try:

        async def scenario() -> tuple[bool, float, float]:
            gaps: list[float] = []

            async def tick() -> None:
                last = time.monotonic()
                while True:
                    await asyncio.sleep(0.01)
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now

            ticker = asyncio.create_task(tick())
            start = time.monotonic()
            changed = await w.wait(0.3)
            elapsed = time.monotonic() - start
            ticker.cancel()
            return changed, elapsed, max(gaps)

        changed, elapsed, worst_gap = run(scenario())
        assert not changed
        assert 0.3 <= elapsed < 1.0
        assert worst_gap < 0.25  # the loop kept running while the watcher waited
        # A later window with nothing in it is just as quiet (a poll that saw nothing new).
        assert not run(w.wait(0.7))
    finally:
        w.close()


def test_changes_made_before_a_wait_are_reported_by_it_coalesced_into_one_true(
    queue: FeatureQueue, watcher: ChangeWatcher
) -> None:
    add(queue, "a")
    add(queue, "b")
    (claim,) = queue.claim(1, "sup")  # three transactions, three events
    assert run(watcher.wait(5))
    assert not run(watcher.wait(0.3))

    queue.release(claim.id, "sup", claim.lease_token, "passing")  # between two waits: not lost
    assert run(watcher.wait(5))
    assert not run(watcher.wait(0.3))

    async def change_while_waiting() -> bool:
        waiting = asyncio.create_task(watcher.wait(5))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(add, queue, "c")
        return await waiting

    assert run(change_while_waiting())


@pytest.mark.postgres
def test_a_notification_arriving_after_the_wake_up_that_covered_its_commit_wakes_no_one(
    pg_url: str, project: Path
) -> None:
    # PostgreSQL sends each commit's notification when the listening backend gets to it: on a busy
    # host, that of a commit made before a wait() can arrive after the wait() woke for an earlier
    # one. Here the backend is stopped (SIGSTOP) to hold one back until after the first wake-up.
    db = Database(pg_url)
    db.migrate()
    queue = FeatureQueue(db, project_dir=project)
    watcher = ChangeWatcher(db)
    backend = text("SELECT pid FROM pg_stat_activity WHERE application_name = :name AND datname = current_database()")
    pid = int(db.run(lambda s: s.scalar(backend, {"name": LISTENER_NAME})))
    resume = threading.Timer(0.3, os.kill, (pid, signal.SIGCONT))
    try:
        add(queue, "a")
        listen_fd = watcher._listener._conn.fileno()  # type: ignore[union-attr]
        assert select.select([listen_fd], [], [], 5)[0]  # a's notification has arrived, unread
        os.kill(pid, signal.SIGSTOP)
        add(queue, "b")  # committed before the wait; its notification is held back
        resume.start()
        assert run(watcher.wait(5))
        assert not run(watcher.wait(0.5))  # b was covered by the wake-up above
        add(queue, "c")
        assert run(watcher.wait(5))
    finally:
        resume.cancel()
        os.kill(pid, signal.SIGCONT)
        watcher.close()
        db.dispose()


def test_a_claim_that_finds_nothing_wakes_no_one(queue: FeatureQueue, watcher: ChangeWatcher) -> None:
    # An idle supervisor claims, finds nothing and waits for a change: if its empty claim counted
    # as one, every idle supervisor (and dashboard) on the queue would spin.
    add(queue, "a")
    assert len(queue.claim(1, "sup")) == 1
    assert run(watcher.wait(5))
    for _ in range(3):
        assert queue.claim(1, "sup") == []
    assert not run(watcher.wait(0.8))


def test_a_cancelled_wait_loses_no_change(queue: FeatureQueue, watcher: ChangeWatcher) -> None:
    async def scenario() -> bool:
        waiting = asyncio.create_task(watcher.wait(30))
        await asyncio.sleep(0.1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await asyncio.to_thread(add, queue, "a")
        return await watcher.wait(5)

    assert run(scenario())


def test_close_leaves_no_thread_and_no_connection_behind(queue: FeatureQueue) -> None:
    before = set(threading.enumerate())

    def listeners() -> int:
        sql = text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name")
        return int(queue.db.run(lambda s: s.scalar(sql, {"name": LISTENER_NAME})))

    async def scenario() -> list[threading.Thread]:
        w = ChangeWatcher(queue.db)
        if not queue.db.is_sqlite:
            assert listeners() == 1
        assert not await w.wait(0.6)  # at least one poll in the worker thread
        waiting = asyncio.create_task(w.wait(30))  # closed while a wait is running: it returns False
        await asyncio.sleep(0.1)
        started = time.monotonic()
        w.close()
        assert time.monotonic() - started < 0.5
        left = [t for t in threading.enumerate() if t not in before]
        assert await waiting is False
        w.close()  # twice is fine
        with pytest.raises(RuntimeError):
            await w.wait(0.1)
        return left

    assert run(scenario()) == []
    if not queue.db.is_sqlite:
        deadline = time.monotonic() + 10
        while listeners() and time.monotonic() < deadline:
            time.sleep(0.02)  # the server ends the backend shortly after the client hangs up
        assert listeners() == 0


@pytest.mark.postgres
def test_a_dropped_listen_connection_is_remade_and_reported_as_a_change(pg_url: str, project: Path) -> None:
    db = Database(pg_url)
    db.migrate()
    queue = FeatureQueue(db, project_dir=project)
    watcher = ChangeWatcher(db)
    kill = text(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = :name AND datname = current_database()"
    )
    try:
        assert not run(watcher.wait(0.3))
        assert db.run(lambda s: s.scalar(kill, {"name": LISTENER_NAME})) == 1
        started = time.monotonic()
        assert run(watcher.wait(10))  # the reconnect: a notification may have been missed meanwhile
        assert time.monotonic() - started < 2.0
        assert not run(watcher.wait(0.3))

        async def change_while_waiting() -> bool:  # and it listens again
            waiting = asyncio.create_task(watcher.wait(1.0))
            await asyncio.sleep(0.05)
            await asyncio.to_thread(add, queue, "a")
            return await waiting

        assert run(change_while_waiting())
    finally:
        watcher.close()
        db.dispose()
