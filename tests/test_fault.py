"""Faults the studio has to live through: the database going away under a working worker.

The restart test needs PostgreSQL run on this machine (pg_ctlcluster): the restart drops every
connection on the server, other test runs' included, so it happens once and the test is kept
short. The dispatcher's own handling of a lost connection is checked on any database.
"""

import shutil
import subprocess
import time
from pathlib import Path
from unittest import mock

import pytest
from django.core.management import call_command
from django.db import connection, connections
from django.db.models import Sum
from django.db.utils import InterfaceError, OperationalError

from accounts import ledger
from generations import jobs
from generations.models import Task, TaskQuerySet
from generations.providers import GenerationRequest
from generations.services import submit_task
from tests.helpers import wait_for
from tests.test_engine_live import Worker, make_key, refunds, wait_until_finished

pytestmark = pytest.mark.django_db(transaction=True)

CLUSTERS = Path("/etc/postgresql")


def cluster_version() -> str:
    """The one local cluster's version (its folder under /etc/postgresql), or skip."""
    if shutil.which("pg_ctlcluster") is None:
        pytest.skip("pg_ctlcluster is not available: this PostgreSQL is not run from here")
    versions = sorted(p.name for p in CLUSTERS.iterdir()) if CLUSTERS.is_dir() else []
    if len(versions) != 1:
        pytest.skip(f"expected one PostgreSQL cluster under {CLUSTERS}, found {versions}")
    return versions[0]


def database_answers() -> bool:
    """Whether this process's database connection works again, reconnecting if it broke."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except (OperationalError, InterfaceError):
        connections.close_all()
        return False


@pytest.fixture(autouse=True)
def fresh_cache():
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


def test_the_dispatcher_rides_out_a_lost_database_connection():
    calls = []
    real = TaskQuerySet.lease_due

    def lease_due(queryset, *args, **kwargs):
        calls.append(time.monotonic())
        if len(calls) <= 2:
            raise OperationalError("server closed the connection unexpectedly")
        return real(queryset, *args, **kwargs)

    with (
        mock.patch.object(TaskQuerySet, "lease_due", lease_due),
        mock.patch.object(jobs, "async_task") as successor,
    ):
        outcome = jobs.dispatch(name="fault-test", seconds=5)

    assert outcome == "worked on 0 tasks"
    assert len(calls) > 3  # it went on leasing after the errors, within its run
    assert calls[1] - calls[0] >= 0.9 and calls[2] - calls[1] >= 1.9  # backing off
    successor.assert_called_once()  # and handed over as usual when its time was up


@pytest.mark.slow
@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="restarts the PostgreSQL server; SQLite has none"
)
def test_postgresql_restarted_while_tasks_are_active_every_task_still_ends_done_or_refunded(
    live_server, settings, tmp_path, alice, carol, capsys
):
    version = cluster_version()
    settings.SIMULATOR_SECONDS = 6
    settings.MEDIA_ROOT = tmp_path
    ledger.grant(alice, 100_000, by=carol, reason="tests")
    sim = f"{live_server.url}/simulator"
    keys = {gw: make_key(alice, gw, f"{sim}/{gw}") for gw in ("omniakey", "apimart", "omixa")}
    keys["omnivideo"] = make_key(alice, "omnivideo", f"{sim}/omnivideo")
    requests = [
        GenerationRequest("omniakey", "pika-1.5", "a red fox in snow", duration=3),
        GenerationRequest("omnivideo", "seedance-2", "waves on a pier"),
        GenerationRequest("apimart", "Omni-Flash-Ext", "a girl dancing", duration=4),
        GenerationRequest("omixa", "sora", "a product reveal", duration=4),
        GenerationRequest("omnivideo", "nano-banana-2", "a blue teapot", aspect_ratio="1:1"),
    ]
    tasks = [
        submit_task(alice, request, key=keys[request.provider])[0]
        for request in requests * 2  # ten tasks, two per model
    ]
    worker = Worker(tmp_path, OMNIWEB_PUBLIC_URL=live_server.url)
    try:
        pks = [t.pk for t in tasks]
        # Every task is at its gateway and the dispatcher is polling them: the restart lands
        # in the middle of its work, not between two jobs.
        polling = wait_for(
            lambda: (
                not Task.objects.filter(pk__in=pks, state=Task.State.QUEUED).exists()
                and Task.objects.filter(pk__in=pks, polls__gt=0).exists()
            ),
            60,
        )
        assert polling, worker.output()[-3000:]
        states = sorted(Task.objects.filter(pk__in=pks).values_list("state", flat=True))

        started = time.monotonic()
        restart = subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert restart.returncode == 0, restart.stderr
        # This process's connections broke too.
        connections.close_all()
        assert wait_for(database_answers, 60, interval=0.5), "PostgreSQL did not come back"
        back = time.monotonic()
        polls = Task.objects.filter(pk__in=pks).aggregate(n=Sum("polls"))["n"]
        with capsys.disabled():
            print(
                f"\nstates at the restart: {states}; PostgreSQL answered again after "
                f"{back - started:.1f} s"
            )

        # The worker carries on by itself, nothing here starts a dispatcher for it, and the
        # running dispatcher polls again within seconds: it does not wait for the schedule.
        resumed = wait_for(
            lambda: Task.objects.filter(pk__in=pks).aggregate(n=Sum("polls"))["n"] > polls,
            15,
            interval=0.5,
        )
        assert resumed, worker.output()[-5000:]
        done = wait_until_finished(tasks, 180)
        ended_after = time.monotonic() - back
        assert worker.process.poll() is None, worker.output()[-3000:]
    finally:
        worker.stop()
    for task in done.values():
        if task.state == Task.State.SUCCEEDED:
            assert refunds(task) == 0
        else:
            assert task.state == Task.State.FAILED, (task.state, task.message)
            assert refunds(task) == 1, task.message
    ended = sorted(t.state for t in done.values())
    with capsys.disabled():
        print(f"tasks after the restart: {ended}, all ended {ended_after:.1f} s after it")
    call_command("audit_ledger")
