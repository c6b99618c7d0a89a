"""The shape of the dispatcher's work, which decides how many polls one worker makes a second:
statements per poll and per lease, the indexes they read, connections per run, and leases
given back when a run ends early.

Gateways are faked at the HTTP transport with APIMart's documented status answer (document
004), still processing.
"""

import threading
import time
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from unittest import mock

import pytest
import respx
from django.core.cache import cache
from django.db import connection
from django.db.backends.signals import connection_created
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import ProviderKey
from generations import cards, engine, jobs
from generations.models import Task

APIMART = "https://api.apimart.ai"
GATEWAY_ID = "task_01KS1H7ZYSJWH1N779S2FSHTKA"
# The document's status answer, as it reads while the gateway is still working.
STILL_RUNNING = {
    "code": 200,
    "data": {
        "id": GATEWAY_ID,
        "status": "processing",
        "progress": 40,
        "created": 1779246294,
        "estimated_time": 600,
    },
}
ACTIVE_STATES = ["queued", "submitted", "running", "fetching", "needs_review"]

postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the lease statement and EXPLAIN are PostgreSQL's"
)


def key_for(owner, number: int) -> ProviderKey:
    key = ProviderKey(provider="apimart", label=f"Shape {number}", owner=owner)
    key.set_secret(f"sk-shape-secret-{number:04d}")
    key.save()
    return key


def running_tasks(owners, count: int, *, state=Task.State.RUNNING, **fields) -> list[Task]:
    """`count` tasks at APIMart, all due now, spread over `owners` and one key each."""
    keys = [key_for(owner, number) for number, owner in enumerate(owners)]
    now = timezone.now()
    defaults = {
        "next_check_at": now,
        "deadline_at": now + timedelta(hours=1),
        "give_up_at": now + timedelta(days=2),
        **fields,
    }
    return Task.objects.bulk_create(
        Task(
            user=owners[i % len(owners)],
            key=keys[i % len(owners)],
            provider="apimart",
            model="Omni-Flash-Ext",
            kind="video",
            prompt=f"shape {i}",
            params={"duration": 4},
            key_label="Shape",
            state=state,
            provider_task_id=GATEWAY_ID,
            price_unit="task",
            price_credits_per_unit=10,
            price_units=1,
            price_multiplier=Decimal(1),
            credits_charged=10,
            **defaults,
        )
        for i in range(count)
    )


@pytest.fixture
def members(django_user_model):
    return [django_user_model.objects.create(username=f"shape-{n}") for n in range(4)]


# --- a poll -----------------------------------------------------------------------------------


@respx.mock(base_url=APIMART)
def test_a_poll_that_finds_the_task_still_running_costs_two_statements(respx_mock, members):
    respx_mock.get(f"/v1/tasks/{GATEWAY_ID}").respond(json=STILL_RUNNING)
    (task,) = running_tasks(members[:1], 1)
    assert Task.objects.claim(task.pk, "worker-1", states=Task.ACTIVE_STATES)

    with CaptureQueriesContext(connection) as queries:
        jobs.work_on(task.pk, "worker-1")

    # The task with its key, then one update: the answer, the count, the next check, the lease.
    assert len(queries) == 2, [query["sql"] for query in queries]
    task.refresh_from_db()
    assert task.state == Task.State.RUNNING
    assert task.polls == 1 and task.progress == 40
    assert task.next_check_at > timezone.now()
    assert task.lease_owner == "" and task.lease_until is None


@respx.mock(base_url=APIMART)
def test_a_poll_whose_lease_was_taken_over_leaves_the_task_to_its_new_owner(respx_mock, members):
    respx_mock.get(f"/v1/tasks/{GATEWAY_ID}").respond(json=STILL_RUNNING)
    (task,) = running_tasks(members[:1], 1)
    assert Task.objects.claim(task.pk, "slow-worker", states=Task.ACTIVE_STATES)
    held = Task.objects.select_related("key").get(pk=task.pk)
    # The slow worker's lease ran out and another worker took the task over.
    Task.objects.filter(pk=task.pk).update(lease_owner="new-worker")

    engine.poll(held)

    task.refresh_from_db()
    assert task.lease_owner == "new-worker"
    assert task.polls == 0 and task.progress is None  # the new owner's poll will say


# --- the lease --------------------------------------------------------------------------------


def test_tasks_due_at_the_same_moment_are_leased_in_id_order(members):
    tasks = running_tasks(members, 12)
    pks = sorted(task.pk for task in tasks)
    first = Task.objects.lease_due("one", limit=5, per_key=10, per_member=10)
    second = Task.objects.lease_due("two", limit=5, per_key=10, per_member=10)
    assert [lease.pk for lease in first] == pks[:5]
    assert [lease.pk for lease in second] == pks[5:10]


@postgresql_only
def test_the_lease_is_one_statement(members):
    running_tasks(members, 12)
    with CaptureQueriesContext(connection) as queries:
        leased = Task.objects.lease_due("one", limit=6, per_key=2, per_member=3)
    assert len(queries) == 1, [query["sql"] for query in queries]
    assert len(leased) == 6
    # The limits still hold inside that one statement: each member has one key here.
    assert max(Counter(lease.user_id for lease in leased).values()) == 2
    assert Task.objects.filter(lease_owner="one").count() == 6


def test_the_lease_counts_what_the_dispatcher_already_holds(members):
    running_tasks(members[:2], 8)
    first, second = members[:2]
    leased = Task.objects.lease_due(
        "one", limit=8, per_key=4, per_member=3, busy_members={first.pk: 2, second.pk: 3}
    )
    assert [lease.user_id for lease in leased] == [first.pk]


def plan(sql: str, params=None) -> str:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql, params)
        return "\n".join(row[0] for row in cursor.fetchall())


@postgresql_only
def test_the_lease_and_typical_durations_read_their_indexes_not_the_table(members):
    """At 2,000 active and 2,000 succeeded tasks, with fresh statistics (no planner switches)."""
    now = timezone.now()
    running_tasks(members, 2000)
    running_tasks(
        members,
        2000,
        state=Task.State.SUCCEEDED,
        next_check_at=None,
        finished_at=now - timedelta(minutes=5),
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE generations_task")

    with CaptureQueriesContext(connection) as queries:
        assert Task.objects.lease_due("one", limit=16, per_key=4, per_member=4)
    lease_plan = plan(queries[0]["sql"])
    assert "task_due_order" in lease_plan, lease_plan
    assert "Seq Scan" not in lease_plan, lease_plan

    # The cards' own query, read in the index's order: no sort of every success.
    typical_plan = cards.recent_successes().explain()
    assert "succeeded_by_finish" in typical_plan, typical_plan
    assert "Seq Scan" not in typical_plan and "Sort" not in typical_plan, typical_plan


# --- a dispatcher run -------------------------------------------------------------------------


@pytest.fixture
def quiet_dispatch():
    """A dispatcher run that enqueues no successor."""
    cache.clear()
    with mock.patch.object(jobs, "async_task", lambda *args, **kwargs: None):
        yield
    cache.clear()


@pytest.mark.django_db(transaction=True)
@respx.mock(base_url=APIMART)
def test_a_run_keeps_one_connection_per_thread_and_closes_them_at_its_end(
    respx_mock, members, settings, quiet_dispatch
):
    settings.DISPATCH_CONCURRENCY = 4
    respx_mock.get(f"/v1/tasks/{GATEWAY_ID}").respond(json=STILL_RUNNING)
    tasks = running_tasks(members, 40)
    opened = []

    def count(sender, connection, **kwargs):
        opened.append((threading.current_thread(), connection))

    connection_created.connect(count)
    try:
        jobs.dispatch("shape", seconds=3)
    finally:
        connection_created.disconnect(count)

    polled = Task.objects.filter(pk__in=[t.pk for t in tasks], polls=1).count()
    assert polled == len(tasks)
    assert len(opened) <= settings.DISPATCH_CONCURRENCY + 1, len(opened)
    pool = [wrapper for thread, wrapper in opened if thread is not threading.main_thread()]
    assert pool and all(wrapper.connection is None for wrapper in pool)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("ending", ["a newer run takes the baton", "the worker stops"])
def test_tasks_leased_ahead_go_back_when_a_run_ends_early(
    ending, members, settings, quiet_dispatch
):
    settings.DISPATCH_CONCURRENCY = 4
    tasks = running_tasks(members, 30)
    held_when_started = []

    def work(pk, owner):
        if not held_when_started:
            held_when_started.append(Task.objects.filter(lease_owner=owner).count())
            if ending == "a newer run takes the baton":
                cache.set(jobs.baton("shape"), "a newer run", 30)
        time.sleep(0.3)
        Task.objects.release(pk, owner)

    stop = mock.patch.object(
        jobs.WorkerStop,
        "requested",
        lambda self: bool(held_when_started) and ending == "the worker stops",
    )
    began = time.monotonic()
    with mock.patch.object(jobs, "work_on", work), stop:
        outcome = jobs.dispatch("shape", seconds=30)

    assert time.monotonic() - began < 5
    # It held more than its slots (the next tasks, ready for a free slot) ...
    assert held_when_started[0] > settings.DISPATCH_CONCURRENCY
    # ... and gave back every one it did not start, for whoever runs next.
    started = int(outcome.split()[2])
    assert started < len(tasks)
    assert not Task.objects.exclude(lease_owner="").exists()
