"""`/healthz`: database, broker, worker and task status, as monitors and the run command read
them."""

import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import OperationalError, connection
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.signing import SignedPackage
from django_q.status import Stat, Status
from django_q.tasks import async_task, result

from generations.models import Task
from omniweb.health import task_status
from tests.helpers import child_environment, wait_for
from tests.test_ops import task_row


def heartbeat(cluster_id: str, status, seconds: int) -> None:
    """Write a cluster heartbeat the way django-q2's sentinel does."""
    stat = Status(pid=1234, cluster_id=cluster_id)
    stat.status = status
    get_broker().set_stat(Stat.get_key(cluster_id), SignedPackage.dumps(stat, True), seconds)


@pytest.fixture(autouse=True)
def no_heartbeats():
    """Heartbeats live in the cache (a table, or Redis): start and end every test without any."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.mark.django_db
def test_health_answers_anonymous_callers_with_every_part(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"]["ok"] is True
    assert body["broker"] == {"ok": True, "name": "redis" if settings.REDIS_URL else "orm"}
    assert response["Cache-Control"].startswith("max-age=0")


@pytest.mark.django_db
def test_health_reports_a_missing_worker_as_dead(client):
    worker = client.get("/healthz").json()["worker"]
    assert worker == {"alive": False, "clusters": 0, "last_seen": None}


@pytest.mark.django_db
def test_health_reports_a_worker_whose_heartbeat_stopped_as_dead(client):
    heartbeat("crashed", Conf.IDLE, seconds=1)
    assert client.get("/healthz").json()["worker"]["alive"] is True
    time.sleep(1.2)
    assert client.get("/healthz").json()["worker"]["alive"] is False


@pytest.mark.django_db
def test_health_reports_a_stopping_cluster_as_dead(client):
    heartbeat("leaving", Conf.STOPPING, seconds=30)
    assert client.get("/healthz").json()["worker"]["alive"] is False


@pytest.mark.django_db
def test_health_answers_503_when_the_database_is_down(client, monkeypatch):
    def broken_cursor(*args, **kwargs):
        raise OperationalError("connection refused")

    with monkeypatch.context() as patch:
        patch.setattr(connection, "cursor", broken_cursor)
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "error"
    assert response.json()["database"] == {"ok": False, "error": "OperationalError"}
    assert response.json()["tasks"] == {"error": "database unavailable"}


@pytest.mark.django_db
def test_health_reports_no_tasks_when_none_is_active(client, alice):
    Task.objects.bulk_create(
        [task_row(alice, state=state) for state in Task.TERMINAL_STATES]  # ended: not counted
    )
    tasks = client.get("/healthz").json()["tasks"]
    assert tasks == {"active": 0, "oldest_active_seconds": None, "stuck": 0}


@pytest.mark.django_db
def test_health_counts_active_tasks_the_oldest_and_those_past_their_deadline(
    client, alice, settings
):
    settings.TASK_DEADLINE_MINUTES = 30
    now = timezone.now()

    def ago(minutes: float):
        return now - timedelta(minutes=minutes)

    Task.objects.bulk_create(
        [
            # Active, deadline ahead: not stuck.
            task_row(alice, state="running", created_at=ago(5), deadline_at=ago(-25)),
            # Active, past its own deadline: stuck.
            task_row(alice, state="queued", created_at=ago(40), deadline_at=ago(10)),
            task_row(alice, state="needs_review", created_at=ago(90), deadline_at=ago(60)),
            # Active without a deadline: stuck once older than TASK_DEADLINE_MINUTES.
            task_row(alice, state="submitted", created_at=ago(31)),
            task_row(alice, state="fetching", created_at=ago(29)),
            # Ended long ago, past any deadline: neither active nor stuck.
            task_row(alice, state="succeeded", created_at=ago(600), deadline_at=ago(570)),
            task_row(alice, state="failed", created_at=ago(900)),
        ]
    )
    response = client.get("/healthz")

    assert response.status_code == 200
    tasks = response.json()["tasks"]
    assert tasks["active"] == 5
    assert tasks["stuck"] == 3
    assert 90 * 60 <= tasks["oldest_active_seconds"] <= 90 * 60 + 30


@pytest.mark.django_db
def test_health_reads_the_tasks_in_one_query(alice, django_assert_num_queries):
    Task.objects.bulk_create([task_row(alice, state="running") for _ in range(50)])
    with django_assert_num_queries(1):
        tasks = task_status()
    assert tasks["active"] == 50


@pytest.mark.django_db
def test_health_stays_200_when_the_task_check_fails(client, monkeypatch):
    def broken(*args, **kwargs):
        raise OperationalError("no such table")

    monkeypatch.setattr(Task.objects, "active", broken)
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["tasks"] == {"error": "OperationalError"}


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_is_seen_alive_runs_jobs_and_is_seen_dead_when_stopped(client):
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"],
        cwd=settings.BASE_DIR,
        env=child_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        started = time.monotonic()
        alive = wait_for(lambda: client.get("/healthz").json()["worker"]["alive"], 10)
        assert alive, "worker not reported alive within 10 s"
        print(f"worker seen alive after {time.monotonic() - started:.1f}s")

        # A job goes through the configured broker (database or Redis) and comes back.
        job = async_task("math.hypot", 3, 4)
        assert result(job, wait=15_000) == 5.0
    finally:
        worker.terminate()
        _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr[-2000:]
    assert wait_for(lambda: not client.get("/healthz").json()["worker"]["alive"], 10)
