"""Measured limits: fifty members using the site at once (the benchmark command's table is
tested in test_benchmark.py).

The load test runs `python -m loadtest.run` as a process of its own against the live server,
with a real worker and the gateway simulator behind it, then waits for every task the load
created to end and audits the ledger. It runs for 60 seconds on PostgreSQL (the database a
team runs on) and for 10 on SQLite, which lets one writer in at a time and is there for a
laptop, not for fifty members; OMNIWEB_LOAD_SECONDS sets another length for a local run.
"""

import json
import os
import subprocess
import sys

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.db import connection

from accounts import ledger
from generations.models import Task
from tests.conftest import PASSWORD
from tests.test_engine_live import Worker, make_key, wait_until_finished

MEMBERS = 50


@pytest.fixture
def fresh_cache():
    """Batons and queued jobs of earlier tests (in the cache table or Redis) must not leak in."""
    cache.clear()
    yield
    cache.clear()


# --- fifty members at once -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_fifty_members_at_once_get_no_server_error_and_the_queue_drains(
    live_server, settings, tmp_path, django_user_model, carol, capsys, fresh_cache
):
    postgres = connection.vendor == "postgresql"
    seconds = float(os.environ.get("OMNIWEB_LOAD_SECONDS") or (60 if postgres else 10))
    settings.SIMULATOR_SECONDS = 2
    settings.MEDIA_ROOT = tmp_path
    if hasattr(settings, "SUBMIT_RATE_PER_MINUTE"):
        settings.SUBMIT_RATE_PER_MINUTE = 1000
    simulator = f"{live_server.url}/simulator/apimart"
    for number in range(MEMBERS):
        member = django_user_model.objects.create_user(f"load-{number:02d}", password=PASSWORD)
        ledger.grant(member, 100_000, by=carol, reason="load test")
        make_key(member, "apimart", simulator)

    worker = Worker(tmp_path)
    try:
        run = subprocess.run(
            [
                *(sys.executable, "-m", "loadtest.run", "--base-url", live_server.url),
                *("--members", str(MEMBERS), "--seconds", str(seconds)),
                *("--password", PASSWORD, "--usernames-prefix", "load-"),
            ],
            cwd=settings.BASE_DIR,
            capture_output=True,
            text=True,
            timeout=seconds + 300,
        )
        summary = json.loads(run.stdout.strip().splitlines()[-1])
        with capsys.disabled():
            print(f"\n{run.stdout}")

        assert summary["5xx"] == 0, run.stdout
        assert summary["errors"] == 0 and summary["login_failures"] == 0, run.stdout
        assert run.returncode == 0, run.stderr[-3000:]
        assert summary["submits_accepted"] > 0, run.stdout
        tasks = list(Task.objects.all())
        assert len(tasks) == summary["submits_accepted"]

        # The queue drains: every task the load made ends, succeeded or failed and refunded.
        done = wait_until_finished(tasks, 120, kick=True)
        assert worker.process.poll() is None, worker.output()[-3000:]
    finally:
        worker.stop()
    states = {state: sum(t.state == state for t in done.values()) for state in Task.State.values}
    with capsys.disabled():
        print(f"tasks after the load: { {s: n for s, n in states.items() if n} }")
    call_command("audit_ledger")
