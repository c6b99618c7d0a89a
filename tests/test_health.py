"""`/healthz`: database, broker and worker status, as monitors and the run command read them."""

import subprocess
import sys
import time

import pytest
from django.conf import settings
from django.db import OperationalError, connection
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.signing import SignedPackage
from django_q.status import Stat, Status
from django_q.tasks import async_task, result

from tests.helpers import child_environment, wait_for


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
