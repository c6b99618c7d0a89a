"""`manage.py benchmark`: its baselines are honest (the bare gallery page lists the gallery's own
first page through the gallery's index), its processes cannot be pointed at a real site, its
poll rate leaves out the dispatcher's first burst, and a short run prints every row."""

import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client

from generations.gallery import PAGE_SIZE
from generations.management.commands import benchmark_gallery as gallery_bench
from generations.management.commands.benchmark import StubGateway
from generations.models import Task
from omniweb.benchmark_urls import BARE_TASKS_PATH
from tests.helpers import database_url


@pytest.fixture
def benchmark_urls(settings):
    settings.ROOT_URLCONF = "omniweb.benchmark_urls"


@pytest.mark.django_db
def test_the_bare_gallery_page_lists_the_gallerys_first_page_in_its_order(
    benchmark_urls, alice, bob
):
    tasks = gallery_bench.create_gallery([alice, bob], PAGE_SIZE + 16)
    # A result created first but finished as late as the newest: the gallery shows results by
    # when they finished (ties newest id first), and so must the bare page.
    Task.objects.filter(pk=tasks[0].pk).update(finished_at=tasks[-1].finished_at)
    client = Client()
    client.force_login(alice)

    gallery = client.get("/gallery/").content.decode()
    bare = client.get(gallery_bench.BARE_PATH).content.decode()

    newest = Task.objects.in_gallery().order_by("-finished_at", "-pk")[:PAGE_SIZE]
    listed = [item.split("</li>")[0] for item in bare.split("<li>")[1:]]
    assert listed == [task.prompt for task in newest]
    assert tasks[0].prompt in listed
    assert gallery_bench.same_results(gallery, bare)


@pytest.mark.django_db
def test_the_bare_gallery_page_costs_one_query_of_its_own(
    benchmark_urls, alice, django_assert_num_queries
):
    gallery_bench.create_gallery([alice], 30)
    client = Client()
    client.force_login(alice)
    client.get(gallery_bench.BARE_PATH)  # the session's first read may refresh it

    # The session and the member, as for every page; then the one query.
    with django_assert_num_queries(3):
        client.get(gallery_bench.BARE_PATH)


@pytest.mark.django_db
@pytest.mark.skipif(connection.vendor != "postgresql", reason="a PostgreSQL query plan")
def test_the_bare_gallery_query_walks_the_gallerys_own_index(alice, bob):
    gallery_bench.create_gallery([alice, bob], 2000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE generations_task")

    plan = gallery_bench.bare_plan()

    assert "gallery_newest_first" in plan
    assert "Sort" not in plan


@pytest.mark.django_db
def test_the_bare_task_list_shows_the_members_tasks_as_my_tasks_does(benchmark_urls, alice, bob):
    gallery_bench.create_gallery([alice], 30)
    gallery_bench.create_gallery([bob], 5)
    client = Client()
    client.force_login(alice)

    page = client.get("/tasks/").content.decode()
    bare = client.get(BARE_TASKS_PATH).content.decode()

    listed = [item.split("</li>")[0] for item in bare.split("<li>")[1:]]
    assert (
        listed == [t.prompt for t in Task.objects.filter(user=alice).order_by("-created_at")][:24]
    )
    assert gallery_bench.same_results(page, bare)


def django_setup_refusal(env: dict) -> str:
    """Start Django with `env` in a process of its own; it must refuse. Returns what it said."""
    run = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    return run.stderr


def test_the_benchmark_settings_refuse_to_load_outside_a_benchmark_run():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "omniweb.benchmark_settings"}
    env.pop("OMNIWEB_BENCHMARK_QUEUE", None)
    assert "only for the processes `manage.py benchmark` starts" in django_setup_refusal(env)

    # With a queue of its own but the real database, it refuses too.
    env["OMNIWEB_BENCHMARK_QUEUE"] = "omniweb-benchmark-test"
    env["DATABASE_URL"] = database_url()
    assert "only on its throwaway database" in django_setup_refusal(env)


def test_the_poll_rate_leaves_out_the_dispatchers_first_burst():
    stub = StubGateway(0.1)
    try:
        # Eight polls sent together at the start, then one every 12.5 ms: 80 a second.
        stub.arrivals = [(0.0, f"t{i}") for i in range(8)]
        stub.arrivals += [(0.1 + n * 0.0125, f"t{8 + n}") for n in range(200)]
        # A task polled a second time is not a new one.
        stub.arrivals.append((2.6, "t3"))

        tasks, rate = stub.first_polls(8)
    finally:
        stub.close()

    assert tasks == 208
    assert rate == pytest.approx(80.0)


@pytest.mark.slow
def test_a_short_benchmark_prints_every_row_of_the_table(tmp_path):
    env = dict(os.environ)
    if connection.vendor == "postgresql":
        # A name of its own: the throwaway database is made next to this (never created) one.
        env["DATABASE_URL"] = database_url().rsplit("/", 1)[0] + f"/omniweb_{os.getpid()}"
    else:
        env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'bench.sqlite3'}"
    command = [sys.executable, "manage.py", "benchmark", "--seconds", "0.5", "--repeat", "1"]
    command += ["--tasks", "100", "--due", "30", "--concurrency", "8"]
    run = subprocess.run(
        command, cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=600
    )

    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    print(out)
    assert "Machine: " in out and " CPU cores, " in out
    assert "| Figure " in out and " Same-run baseline " in out and " Goal " in out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    for name in (
        "| statements per submit (Create form POST) ",
        "| statements per poll (jobs.work_on) ",
        "| submits/s over HTTP, 16 clients, same gunicorn ",
        "| polls/s, concurrency 8, 30 due (distinct next checks) ",
        "| polls/s, concurrency 8, 30 due (equal next checks) ",
        "| gallery first page of 100 results ",
        "| /tasks/ with 24 cards (4 active) ",
        "| dispatcher memory, 100 tasks due ",
    ):
        assert any(row.startswith(name) for row in rows), name
    assert "Statements of a submit (Create form POST, test client): " in out
    if connection.vendor == "postgresql":
        assert "audit passed" in out
        assert "via gallery_newest_first" in out
    else:
        assert "needs PostgreSQL" in out
    assert "The throwaway database was dropped." in out
    if connection.vendor == "sqlite":
        assert list(tmp_path.iterdir()) == []  # nothing left behind


def command_environment(tmp_path, name: str) -> dict[str, str]:
    """The environment of a benchmark command run as its own process: a database of its own
    (the command makes its throwaway database beside it), on the test run's server."""
    env = dict(os.environ, DEBUG="1")
    if connection.vendor == "postgresql":
        env["DATABASE_URL"] = database_url().rsplit("/", 1)[0] + f"/omniweb_{name}_{os.getpid()}"
    else:
        env["DATABASE_URL"] = f"sqlite:///{tmp_path / f'{name}.sqlite3'}"
    return env


@pytest.mark.slow
def test_a_short_ledger_benchmark_prints_its_rows_and_passes_the_audit(tmp_path):
    env = command_environment(tmp_path, "ledger")
    command = [sys.executable, "manage.py", "benchmark_ledger", "--clients", "1,3"]
    run = subprocess.run(
        [*command, "--seconds", "0.5"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert run.returncode == 0, run.stderr[-3000:]
    rows = [line.split() for line in run.stdout.splitlines() if line.strip()[:1].isdigit()]
    # One row per client count: SELECT 1/s, debits/s as separate members and as one member.
    assert [row[0] for row in rows] == ["1", "3"], run.stdout
    assert all(len(row) == 4 for row in rows), run.stdout
    assert "audit passed" in run.stdout and "The throwaway database was dropped." in run.stdout
    assert "Exception in thread" not in run.stderr


@pytest.mark.slow
def test_a_short_runs_benchmark_prints_both_ways_and_a_constant_run_page(tmp_path):
    env = command_environment(tmp_path, "runs")
    run = subprocess.run(
        [sys.executable, "manage.py", "benchmark_runs", "--tasks", "20", "--repeat", "1"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert "20 single submits" in out and "one run of 20" in out
    assert "faster per task (goal: 10x)" in out and "Ledger audit: passed." in out
    pages = {
        line.split()[0]: int(line.split()[2])
        for line in out.splitlines()
        if line.endswith(tuple("0123456789")) and " tasks " in line
    }
    # The run page's queries at 10 tasks and at 20: the same.
    assert set(pages) == {"10", "20"} and pages["10"] == pages["20"], out
    assert "The throwaway database was dropped." in out
