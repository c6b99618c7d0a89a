"""`/healthz`: database, broker, worker and task status, as monitors and the run command read
them."""

import subprocess
import sys
import time
from datetime import datetime, timedelta

import django_q.brokers
import django_q.status
import pytest
from django.conf import settings
from django.core.cache import cache
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.signing import SignedPackage
from django_q.status import Stat, Status
from django_q.tasks import async_task, result

import omniweb.broker
from generations.models import Task
from omniweb import health
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
        counts = health.count_tasks()
    assert counts["active"] == 50


def task_queries(captured: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in captured.captured_queries if Task._meta.db_table in q["sql"]]


def clock_moved(monkeypatch, seconds: float) -> None:
    """Every later `timezone.now()` answers `seconds` later than the real clock."""
    real = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real() + timedelta(seconds=seconds))


@pytest.mark.django_db
def test_health_costs_the_same_whatever_the_backlog(client, alice):
    def warm_queries() -> list[int]:
        """Statements per call once a count is kept; the first call of a window counts."""
        cache.clear()
        with CaptureQueriesContext(connection) as first:
            client.get("/healthz")
        assert len(task_queries(first)) == 1
        sizes = []
        answers = set()
        for _ in range(3):
            with CaptureQueriesContext(connection) as later:
                answers.add(client.get("/healthz").json()["tasks_as_of"])
            assert task_queries(later) == [], "counted again within the window"
            sizes.append(len(later))
        assert len(answers) == 1
        return sizes

    idle = warm_queries()
    Task.objects.bulk_create([task_row(alice, state="running") for _ in range(200)])
    busy = warm_queries()
    assert client.get("/healthz").json()["tasks"]["active"] == 200
    # The database check, plus the cache reads where the cache is a database table.
    assert idle == busy == [idle[0]] * 3
    assert idle[0] <= 3


@pytest.mark.django_db
def test_health_task_figures_follow_the_tasks_within_a_few_seconds(client, alice, monkeypatch):
    first = client.get("/healthz").json()
    assert first["tasks"]["active"] == 0
    as_of = datetime.fromisoformat(first["tasks_as_of"])
    assert abs((datetime.fromisoformat(first["time"]) - as_of).total_seconds()) < 1

    Task.objects.bulk_create(
        [task_row(alice, state="queued", created_at=timezone.now() - timedelta(minutes=2))]
    )
    # Within the window: the earlier count, and it says how old it is.
    reused = client.get("/healthz").json()
    assert reused["tasks"]["active"] == 0
    assert reused["tasks_as_of"] == first["tasks_as_of"]

    clock_moved(monkeypatch, health.FRESH_SECONDS + 1)
    fresh = client.get("/healthz").json()
    assert fresh["tasks"]["active"] == 1
    assert datetime.fromisoformat(fresh["tasks_as_of"]) > as_of
    assert 120 <= fresh["tasks"]["oldest_active_seconds"] <= 120 + health.FRESH_SECONDS + 30


@pytest.mark.django_db
def test_health_reports_the_oldest_task_age_as_of_each_answer(client, alice, monkeypatch):
    Task.objects.bulk_create(
        [task_row(alice, state="running", created_at=timezone.now() - timedelta(seconds=100))]
    )
    before = client.get("/healthz").json()["tasks"]["oldest_active_seconds"]
    clock_moved(monkeypatch, health.FRESH_SECONDS - 2)  # still the same count
    later = client.get("/healthz").json()
    assert later["tasks"]["oldest_active_seconds"] >= before + health.FRESH_SECONDS - 2
    assert later["tasks_as_of"] is not None


@pytest.mark.django_db
def test_only_the_request_that_takes_the_counting_mark_counts_again(client, alice, monkeypatch):
    client.get("/healthz")
    Task.objects.bulk_create([task_row(alice, state="running") for _ in range(3)])
    clock_moved(monkeypatch, health.FRESH_SECONDS + 1)

    # Another request is counting: this one answers at once with the count it found.
    assert cache.add(health.COUNTING_KEY, True, timeout=30)
    with CaptureQueriesContext(connection) as waiting:
        assert client.get("/healthz").json()["tasks"]["active"] == 0
    assert task_queries(waiting) == []

    cache.delete(health.COUNTING_KEY)  # that request finished without storing a count
    with CaptureQueriesContext(connection) as counting:
        assert client.get("/healthz").json()["tasks"]["active"] == 3
    assert len(task_queries(counting)) == 1
    assert cache.get(health.COUNTING_KEY) is None  # the mark is given back for the next window


@pytest.mark.django_db
def test_health_uses_the_process_broker_instead_of_a_new_one_per_call(client, monkeypatch):
    made = []

    def counting_get_broker(*args, **kwargs):
        made.append(1)
        return get_broker(*args, **kwargs)

    for module in (omniweb.broker, django_q.brokers, django_q.status):
        monkeypatch.setattr(module, "get_broker", counting_get_broker)
    omniweb.broker.forget()
    try:
        for _ in range(5):
            body = client.get("/healthz").json()
            assert body["broker"]["ok"] is True
            assert body["worker"]["alive"] is False
    finally:
        omniweb.broker.forget()
    assert len(made) == 1


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
