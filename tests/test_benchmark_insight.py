"""`manage.py benchmark_insight`: a short run fills a throwaway database, prints the dashboard's
render time and query count, and leaves nothing behind; its fill gives the dashboard figures
to show."""

import os
import re
import subprocess
import sys
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils import timezone

from accounts.models import LedgerEntry
from generations.insight import dashboard
from generations.management.commands.benchmark_insight import fill
from generations.models import Task, TaskEvent


def run_benchmark(tmp_path, *arguments: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # Its own throwaway database is made next to this (never created) one.
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'bench.sqlite3'}"
    env.pop("REDIS_URL", None)
    return subprocess.run(
        [sys.executable, "manage.py", "benchmark_insight", *arguments],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_benchmark_prints_the_dashboards_time_and_queries(tmp_path):
    run = run_benchmark(tmp_path, "--tasks", "300", "--repeat", "2")

    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "Created 300 tasks" in out
    assert "page             tasks  median ms    p95 ms  queries" in out
    assert re.search(r"^dashboard\s+300\s+[\d.]+\s+[\d.]+\s+\d+$", out, re.M)
    assert "The throwaway database was dropped." in out
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_the_benchmark_refuses_a_silly_size(tmp_path):
    run = run_benchmark(tmp_path, "--tasks", "0")

    assert run.returncode != 0
    assert "--tasks must be 1 to 1,000,000." in run.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.django_db
def test_the_fill_spreads_tasks_over_gateways_states_and_the_ledger():
    members = [get_user_model().objects.create(username=f"m{n}") for n in range(3)]
    fill(members, 200)

    assert Task.objects.count() == 200
    assert Task.objects.values("provider").distinct().count() == 4
    assert Task.objects.filter(state=Task.State.FAILED).exists()
    refunds = LedgerEntry.objects.filter(kind=LedgerEntry.Kind.REFUND).count()
    assert refunds == Task.objects.filter(state__in=["failed", "canceled"]).count()
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.DEBIT).count() == 200
    assert TaskEvent.objects.filter(to_state="fetching").exists()
    today = timezone.localdate()
    period, problem = dashboard.choose_period(
        {"period": "custom", "from": str(today - timedelta(days=31)), "to": str(today)}
    )
    assert problem == ""
    gateways, _keys = dashboard.behaviour(period)
    assert sum(row.tasks for row in gateways) == 200
    assert dashboard.reconciliation(period).total > 0
