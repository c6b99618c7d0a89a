"""The load benchmark end to end, tiny: two members for three seconds, one run.

It starts gunicorn and a worker as in production on a throwaway database, so it is slow; the
figures themselves are never checked, only that a run happened and was cleaned up after.
"""

import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.db import connection

from tests.helpers import database_url


@pytest.mark.slow
@pytest.mark.django_db
def test_the_load_benchmark_runs_the_load_and_audits_and_cleans_up():
    env = dict(os.environ)
    # A name of its own: the throwaway database is made next to this (never created) one.
    name = f"omniweb_load_{os.getpid()}"
    env["DATABASE_URL"] = database_url().rsplit("/", 1)[0] + f"/{name}"
    env["DEBUG"] = "1"
    run = subprocess.run(
        [
            *(sys.executable, "manage.py", "benchmark_load", "--members", "2"),
            *("--seconds", "3", "--repeat", "1", "--results", "30", "--think", "0"),
        ],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = run.stdout
    print(out)

    if connection.vendor != "postgresql":
        assert run.returncode != 0
        assert "benchmark_load needs PostgreSQL" in run.stderr
        return
    assert run.returncode == 0, run.stderr[-3000:]
    assert "5xx: 0; failed without an answer: 0; logins failed: 0" in out
    assert "ledger audit: passed" in out
    assert "The throwaway database was dropped." in out

    # With no pause between iterations each member submits at least once in three seconds,
    # and the worker finishes what was accepted before the servers stop.
    def cells(line: str) -> list[str]:
        return [cell.strip() for cell in line.strip().strip("|").split("|")]

    lines = out.splitlines()
    header = cells(next(line for line in lines if line.startswith("| run ")))
    first = dict(
        zip(header, cells(next(line for line in lines if line.startswith("| 1 "))), strict=True)
    )
    accepted, succeeded = int(first["accepted"]), int(first["succeeded"])
    assert first["5xx"] == "0" and first["audit"] == "passed", out
    assert accepted > 0 and succeeded == accepted, out
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_database WHERE datname LIKE %s", [f"%{name}%"])
        assert cursor.fetchone()[0] == 0
