"""Per-key slots end to end: a batch of 60 rows from a CSV, submitted on the batch page as one
run on one key, a real `manage.py qcluster` worker, and the simulator (served by the live
server) as the gateway.

The proof is the gateway's own record, not ours: every SimulatedJob the key created is an
interval [created_at, created_at + run_seconds) during which the gateway was working for it.
At no moment may more than the key's limit overlap, and the limit must actually be reached, or
the test would pass for an engine that sends one task at a time. Every task must succeed, be
created at the gateway once, never be turned away (429), and the ledger must balance.

It prints how long the run took and how busy the slots were: a freed slot that waits for a
waiting task's next look (SLOT_WAIT_SECONDS) instead of being handed on shows up there.
"""

import contextlib
import os
import signal
import subprocess
import time
from datetime import timedelta

import pytest
from django.test import Client

from accounts import ledger
from accounts.models import ProviderKey
from generations.models import Run, Task
from generations.simulator.models import SimulatedJob
from tests.test_batch import preview_csv, submit
from tests.test_engine_live import Worker, make_key, wait_until_finished

LIMIT = 4
TASKS = 60
# One-second simulated jobs keep the run near 40 s: a slot is held for the job, the poll that
# finds it done (polls are capped at 1 s here) and the next send.
RUN_SECONDS = 1
SECRET = "sk-live-slots-7q4z"


@pytest.fixture
def fresh_cache():
    """Batons and queued jobs of earlier tests (in the cache table or Redis) must not leak in."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def workers(tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path
    started: list[Worker] = []

    def start(**env) -> Worker:
        worker = Worker(tmp_path, **env)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        # SIGTERM to the cluster's main process alone: it stops its workers and exits in about
        # a second. Worker.stop() signals the whole process group, which leaves the cluster
        # waiting out its 30 s timeout; it remains the fallback that kills what is left.
        if worker.process.poll() is None:
            os.kill(worker.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(timeout=15)
        worker.stop()


def submit_batch(member, key: ProviderKey, count: int) -> list[Task]:
    """The batch: a CSV of `count` small images, previewed and submitted on the batch page as
    the member would, paid with `key` (the member's only key of that gateway)."""
    rows = "\n".join(f"teapot {n},omnivideo/nano-banana-2,1:1" for n in range(count))
    client = Client()
    client.force_login(member)
    form = preview_csv(client, f"prompt,model,aspect_ratio\n{rows}\n")
    assert form.values["rows"] == str(count), form.html[:2000]
    response = submit(client, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    (run,) = Run.objects.filter(user=member)
    return list(run.tasks.order_by("pk"))


def most_at_once(intervals: list[tuple]) -> int:
    """The largest number of half-open intervals [start, end) covering one moment. At a
    moment where one ends and another starts, the end counts first."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    at_once = most = 0
    for _, change in edges:
        at_once += change
        most = max(most, at_once)
    return most


def unused_slot_seconds(intervals: list[tuple], limit: int) -> float:
    """The slot time lost between tasks, in seconds: the k-th interval to start (k >= limit)
    takes a slot one that ended gave back; however they are paired, the gaps add up to this."""
    starts = sorted(start for start, _ in intervals)
    ends = sorted(end for _, end in intervals)
    return sum((start - ends[k]).total_seconds() for k, start in enumerate(starts[limit:]))


def test_most_at_once_counts_half_open_intervals():
    t = [timedelta(seconds=s) for s in range(5)]
    assert most_at_once([(t[0], t[2]), (t[2], t[4])]) == 1
    assert most_at_once([(t[0], t[3]), (t[1], t[2]), (t[1], t[4])]) == 3
    assert most_at_once([]) == 0
    # Two slots: the third interval starts 1 s after the first ends, the fourth 2 s after.
    slots = [(t[0], t[1]), (t[0], t[2]), (t[2], t[3]), (t[4], t[4])]
    assert unused_slot_seconds(slots, 2) == 3.0


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_run_on_one_key_never_has_more_than_its_limit_at_the_gateway(
    live_server, settings, alice, carol, fresh_cache, workers
):
    settings.SIMULATOR_SECONDS = RUN_SECONDS  # the simulator runs in this process
    ledger.grant(alice, 100_000, by=carol, reason="tests")
    key = make_key(alice, "omnivideo", f"{live_server.url}/simulator/omnivideo", secret=SECRET)
    ProviderKey.objects.filter(pk=key.pk).update(max_in_flight=LIMIT)
    started = time.monotonic()
    tasks = submit_batch(alice, key, TASKS)
    worker = workers()
    done = wait_until_finished(tasks, 180)
    seconds = time.monotonic() - started

    not_done = [(t.pk, t.state, t.message) for t in done.values() if t.state != "succeeded"]
    assert not not_done, (not_done, worker.output()[-3000:])
    jobs = list(SimulatedJob.objects.filter(key_last4=SECRET[-4:]))
    assert len(jobs) == TASKS  # each task was created at the gateway once
    intervals = [(job.created_at, job.finished_at) for job in jobs]
    most = most_at_once(intervals)
    busy = sum(job.run_seconds for job in jobs)
    unused = unused_slot_seconds(intervals, LIMIT) / (TASKS - LIMIT)
    print(
        f"{TASKS} tasks, limit {LIMIT}: {seconds:.1f} s, at most {most} at once at the gateway, "
        f"slots busy {busy / (LIMIT * seconds):.0%} of the time, a freed slot unused for "
        f"{unused:.1f} s on average"
    )
    assert most <= LIMIT
    assert most == LIMIT  # the slots were used, not one task at a time

    # Never turned away: the engine logs every submit sent again and every failed poll with
    # the gateway's status, and keeps each task's last answer.
    log = worker.output()
    assert "status=429" not in log
    assert "event=submit_retry" not in log and "event=poll_error" not in log
    assert not [t.pk for t in done.values() if (t.last_response or {}).get("status_code") == 429]
    assert log.count("event=submitted") == TASKS
    assert "event=slot_wait" in log  # and some did wait for a slot
    assert ledger.audit() == []
