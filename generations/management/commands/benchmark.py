"""Omniweb's measured limits in one table, each figure next to a baseline from the same run.

Everything runs in a throwaway database (omniweb.benchmarking), made and dropped around the
run, so real members, tasks and entries are never read or written:

- submit throughput: 16 clients submitting as separate members (benchmark_ledger's clients),
  against bare `SELECT 1` round trips on as many threads; then the ledger audit.
- poll throughput: one dispatcher, in a process of its own, polling a local stub gateway that
  answers every status request after 100 ms, against its limit: DISPATCH_CONCURRENCY requests
  in flight at a time, each taking 100 ms.
- gallery page: the gallery's first page against a bare list of the same 24 results
  (benchmark_gallery's views and timing).
- request path: a member's task list (24 tasks) against a view that answers a few bytes, both
  through the full middleware stack with the test client.
- worker memory: the peak resident memory of that dispatcher process with N active tasks all
  due, against the same process idle with none.

It prints figures and never checks them: how fast is fast enough is the reader's call, and a
timing assertion would only make slow machines fail.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import resource
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from unittest import mock

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, connections
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.test.utils import override_settings
from django.urls import include, path
from django.utils import timezone

from accounts import ledger
from accounts.management.commands import benchmark_ledger as ledger_bench
from accounts.models import LedgerEntry, ProviderKey
from generations import jobs, services
from generations.management.commands import benchmark_gallery as gallery_bench
from generations.models import Task
from omniweb.benchmarking import throwaway_database

SUBMIT_CLIENTS = 16
STUB_LATENCY = 0.1  # seconds the stub gateway takes to answer a status request
PAGE_REPEAT = 20
MEMBER_TASKS = 24
TINY_PATH = "/benchmark/tiny/"
MIB = 1024 * 1024


def tiny(request: HttpRequest) -> HttpResponse:
    """The least a page can cost behind the same middleware: a few bytes, no query, no
    template."""
    return HttpResponse("ok")


# The URLconf used while measuring: the site's own URLs plus the two bare views.
urlpatterns = [
    path(gallery_bench.BARE_PATH.strip("/") + "/", gallery_bench.bare_gallery),
    path(TINY_PATH.strip("/") + "/", tiny),
    path("", include(settings.ROOT_URLCONF)),
]


class StubGateway:
    """A local gateway in APIMart's dialect whose tasks never finish: every status request is
    answered "processing" after `latency` seconds, and counted."""

    def __init__(self, latency: float):
        self.polls = 0
        lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                """Quiet: thousands of request lines would bury the table."""

            def do_GET(self) -> None:
                with lock:
                    stub.polls += 1
                time.sleep(latency)
                task_id = self.path.rsplit("/", 1)[1]
                body = json.dumps(
                    {"code": 200, "data": {"id": task_id, "status": "processing", "progress": 50}}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far."""
    # Linux reports the high-water mark in /proc; elsewhere getrusage says the same thing.
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def cpu_seconds() -> float:
    """CPU time this process has used, all threads together."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def dispatcher_child() -> None:
    """The dispatcher process the memory and poll figures come from (run by `manage.py shell
    -c`): one dispatcher run against the throwaway database, then one JSON line with its peak
    memory. It hands over to nobody when its time is up."""
    database = os.environ["OMNIWEB_BENCHMARK_DATABASE"]
    seconds = float(os.environ["OMNIWEB_BENCHMARK_SECONDS"])
    name = os.environ["OMNIWEB_BENCHMARK_DISPATCHER"]
    # As in production: the debug cursor would keep every query in memory.
    settings.DEBUG = False
    connections.close_all()
    settings.DATABASES["default"]["NAME"] = database
    connection.settings_dict["NAME"] = database
    logging.getLogger("omniweb.engine").setLevel(logging.WARNING)
    started, cpu = time.monotonic(), cpu_seconds()
    with mock.patch.object(jobs, "async_task", lambda *args, **kwargs: None):
        outcome = jobs.dispatch(name=name, seconds=seconds)
    elapsed, cpu = time.monotonic() - started, cpu_seconds() - cpu
    connections.close_all()
    figures = {
        "peak_rss": peak_rss_bytes(),
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "concurrency": settings.DISPATCH_CONCURRENCY,
        "outcome": outcome,
    }
    print(json.dumps(figures), flush=True)


def run_dispatcher(database: str, seconds: float) -> dict:
    """Start the dispatcher process, wait for it, return its figures."""
    code = (
        "from generations.management.commands.benchmark import dispatcher_child; dispatcher_child()"
    )
    env = dict(os.environ)
    env.update(
        OMNIWEB_BENCHMARK_DATABASE=database,
        OMNIWEB_BENCHMARK_SECONDS=str(seconds),
        # A name of its own: a baton shared with a real dispatcher would stop one of them.
        OMNIWEB_BENCHMARK_DISPATCHER=f"benchmark-{uuid.uuid4().hex[:12]}",
        # The stub gateway it polls listens on loopback, which gateway calls may not reach
        # unless allowed.
        OMNIWEB_GATEWAY_ALLOWED_HOSTS="127.0.0.1",
    )
    try:
        run = subprocess.run(
            [sys.executable, str(settings.BASE_DIR / "manage.py"), "shell", "-c", code],
            env=env,
            capture_output=True,
            text=True,
            timeout=seconds + 300,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError("The dispatcher process did not finish in time.") from exc
    lines = run.stdout.strip().splitlines()
    if run.returncode != 0 or not lines:
        raise CommandError(f"The dispatcher process failed:\n{run.stderr[-3000:]}")
    return json.loads(lines[-1])


@contextmanager
def quiet(logger: logging.Logger) -> Iterator[None]:
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class Command(BaseCommand):
    help = (
        "Measure submit and poll throughput, page times and the worker's memory on a throwaway "
        "database, each against a baseline from the same run, and print one table."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--seconds",
            type=float,
            default=5.0,
            help="How long the submit clients and each dispatcher run go on (default 5).",
        )
        parser.add_argument(
            "--tasks",
            type=int,
            default=10_000,
            help="Active tasks for the dispatcher, and gallery results (default 10,000).",
        )

    def handle(self, *args, seconds: float, tasks: int, **options) -> None:
        if not 0 < seconds <= 600:
            raise CommandError("--seconds must be above 0 and at most 600.")
        if not 100 <= tasks <= 1_000_000:
            raise CommandError("--tasks must be 100 to 1,000,000.")
        self.rows: list[tuple[str, str, str, str]] = []
        with (
            throwaway_database(self.stdout) as self.database,
            gallery_bench.measuring_settings(__name__),
            # Submits are measured, not throttled; none queues a job for a real worker.
            override_settings(SUBMIT_RATE_PER_MINUTE=1_000_000_000),
            mock.patch.object(services, "enqueue_submit", lambda pk: None),
            # Every login the test client makes would be logged; the table is the output.
            quiet(logging.getLogger("axes")),
        ):
            self.machine = self.describe_machine()
            self.stdout.write("Measuring submits ...")
            self.measure_submits(seconds)
            self.stdout.write("Measuring the dispatcher ...")
            self.measure_dispatcher(seconds, tasks)
            self.stdout.write("Measuring pages ...")
            self.measure_pages(tasks)
        self.print_table(seconds, tasks)

    # --- what the figures were measured on ------------------------------------------------------

    def describe_machine(self) -> str:
        version = ".".join(str(part) for part in connection.get_database_version())
        return (
            f"{cpu_count()} CPU cores, {connection.display_name} {version}, "
            f"Python {platform.python_version()}, {platform.system()} {platform.machine()}"
        )

    def row(self, name: str, figure: str, baseline: str = "", ratio: str = "") -> None:
        self.rows.append((name, figure, baseline, ratio))

    def print_table(self, seconds: float, tasks: int) -> None:
        header = ("Measurement", "Figure", "Baseline (same run)", "Ratio")
        widths = [max(len(row[i]) for row in [header, *self.rows]) for i in range(4)]

        def line(cells) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

        self.stdout.write("")
        self.stdout.write(f"Machine: {self.machine}")
        self.stdout.write(
            f"Run: --seconds {seconds:g} --tasks {tasks:,}; pages are medians of {PAGE_REPEAT} "
            "requests through the full middleware stack (test client)."
        )
        self.stdout.write("")
        self.stdout.write(line(header))
        self.stdout.write("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for row in self.rows:
            self.stdout.write(line(row))
        self.stdout.write("")

    # --- submits --------------------------------------------------------------------------------

    def measure_submits(self, seconds: float) -> None:
        """benchmark_ledger's clients: 16 separate members submitting, then 16 `SELECT 1`
        loops; the audit runs while the submitted tasks are the only tasks there are."""
        clients = ledger_bench.Command(stdout=self.stdout, stderr=self.stderr)
        clients.database = self.database
        clients.admin = get_user_model().objects.create(username="benchmark-admin")
        clients.members = 0
        submitters = [clients.submitter(clients.new_member()) for _ in range(SUBMIT_CLIENTS)]
        submits_per_second, submits = clients.run_clients(submitters, seconds)
        selects_per_second, _ = clients.run_clients([clients.select_one] * SUBMIT_CLIENTS, seconds)

        debits = LedgerEntry.objects.filter(kind=LedgerEntry.Kind.DEBIT).count()
        if debits != submits:
            raise CommandError(f"{submits} submits succeeded but {debits} debits were written.")
        problems = ledger.audit()
        for problem in problems:
            self.stderr.write(problem)
        if problems:
            raise CommandError(f"Ledger audit failed: {len(problems)} problems.")
        # No worker ever takes these tasks; the dispatcher measured next must not find them.
        Task.objects.filter(state__in=Task.ACTIVE_STATES).update(next_check_at=None)

        self.row(
            f"submit throughput ({connection.display_name}, {SUBMIT_CLIENTS} clients)",
            f"{submits_per_second:,.0f} submits/s, audit passed",
            f"{selects_per_second:,.0f} SELECT 1/s",
            f"{submits_per_second / selects_per_second:.3f}",
        )
        self.row(
            f"submit baseline SELECT 1 ({SUBMIT_CLIENTS} clients)",
            f"{selects_per_second:,.0f} queries/s",
        )

    # --- the dispatcher -------------------------------------------------------------------------

    def measure_dispatcher(self, seconds: float, count: int) -> None:
        """The dispatcher process idle with no active task, then with `count` tasks all due,
        each on a stub gateway that takes STUB_LATENCY to answer a status request."""
        idle = run_dispatcher(self.database, seconds)
        stub = StubGateway(STUB_LATENCY)
        try:
            self.create_active_tasks(count, stub.url)
            busy = run_dispatcher(self.database, seconds)
            polls = stub.polls
        finally:
            stub.close()
        # The tasks are left as they are, never due again.
        Task.objects.filter(state__in=Task.ACTIVE_STATES).update(
            next_check_at=None, lease_owner="", lease_until=None
        )

        concurrency = busy["concurrency"]
        limit = concurrency / STUB_LATENCY
        achieved = polls / busy["seconds"]
        self.row(
            f"poll throughput (1 dispatcher, stub answers in {STUB_LATENCY * 1000:.0f} ms)",
            f"{achieved:,.1f} polls/s, {busy['cpu_seconds'] * 1000 / max(polls, 1):,.1f} ms "
            "dispatcher CPU per poll",
            f"limit {concurrency} / {STUB_LATENCY:g} s = {limit:,.0f} polls/s",
            f"{achieved / limit:.2f}",
        )
        self.row(
            f"worker memory with {count:,} active tasks",
            f"{busy['peak_rss'] / MIB:,.1f} MiB peak RSS",
            f"{idle['peak_rss'] / MIB:,.1f} MiB idle, 0 tasks",
            f"{busy['peak_rss'] / idle['peak_rss']:.2f}",
        )

    def create_active_tasks(self, count: int, gateway_url: str) -> None:
        """`count` running tasks, all due now, spread over enough keys that the per-key limit
        never holds the dispatcher back."""
        owner = get_user_model().objects.create(username="benchmark-dispatch")
        needed = math.ceil(settings.DISPATCH_CONCURRENCY / settings.PER_KEY_CONCURRENCY) * 2
        keys = []
        for number in range(max(16, needed)):
            key = ProviderKey(
                provider="apimart", label=f"Stub {number}", owner=owner, base_url=gateway_url
            )
            key.set_secret(f"sk-benchmark-{number:04d}")
            key.save()
            keys.append(key)
        now = timezone.now()
        Task.objects.bulk_create(
            [
                Task(
                    user=owner,
                    provider="apimart",
                    model="Omni-Flash-Ext",
                    kind="video",
                    prompt=f"benchmark task {i}",
                    params={"duration": 4, "resolution": "720p", "aspect_ratio": "16:9"},
                    key=keys[i % len(keys)],
                    key_label="Stub",
                    state=Task.State.RUNNING,
                    provider_task_id=f"task_benchmark_{i}",
                    price_unit="task",
                    price_credits_per_unit=10,
                    price_units=1,
                    price_multiplier=Decimal(1),
                    credits_charged=10,
                    created_at=now,
                    next_check_at=now,
                    deadline_at=now + timedelta(hours=1),
                    give_up_at=now + timedelta(days=2),
                )
                for i in range(count)
            ],
            batch_size=1000,
        )

    # --- pages ----------------------------------------------------------------------------------

    def measure_pages(self, count: int) -> None:
        User = get_user_model()
        members = [
            User.objects.create(username=f"benchmark-gallery-{n}", display_name=f"Member {n}")
            for n in range(1, 6)
        ]
        gallery_bench.create_gallery(members, count, favourites_of=members[0])
        client = Client()
        client.force_login(members[0])
        gallery_body, gallery = gallery_bench.time_page(client, "/gallery/", PAGE_REPEAT)
        bare_body, bare = gallery_bench.time_page(client, gallery_bench.BARE_PATH, PAGE_REPEAT)
        if not gallery_bench.same_results(gallery_body, bare_body):
            raise CommandError("The gallery and the bare page do not list the same results.")
        self.row(
            f"gallery page (first of {count:,} results)",
            f"{gallery[0]:.2f} ms, {gallery[2]} queries",
            f"bare page {bare[0]:.2f} ms",
            f"{gallery[0] / bare[0]:.1f}",
        )
        self.row("bare page (the same 24 results, one query)", f"{bare[0]:.2f} ms, 1 query")

        member = User.objects.create(username="benchmark-tasks", display_name="Task member")
        gallery_bench.create_gallery([member], MEMBER_TASKS)
        client = Client()
        client.force_login(member)
        _, tasks = gallery_bench.time_page(client, "/tasks/", PAGE_REPEAT)
        _, bare = gallery_bench.time_page(client, TINY_PATH, PAGE_REPEAT)
        self.row(
            f"request path: /tasks/ ({MEMBER_TASKS} tasks)",
            f"{tasks[0]:.2f} ms, {tasks[2]} queries",
            f"bare view {bare[0]:.2f} ms",
            f"{tasks[0] / bare[0]:.1f}",
        )
        self.row(
            "request path: bare view (tiny HttpResponse)", f"{bare[0]:.2f} ms, {bare[2]} queries"
        )
