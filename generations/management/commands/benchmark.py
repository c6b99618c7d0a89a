"""Omniweb's measured limits in one table, each figure next to a baseline from the same run.

Everything runs in a throwaway database (omniweb.benchmarking), made and dropped around the
run, so real members, tasks and entries are never read or written. Every timed figure is the
median of `--repeat` runs (three by default); each run's figure is printed as it is measured.

- statements: one Create-form submit through the test client, against the bare insert view;
  one poll of a running task (jobs.work_on) against a local stub gateway. Each statement is
  listed.
- submits/s over HTTP (PostgreSQL only): one gunicorn with the project's gunicorn.conf.py on a
  free local port, serving the site on the throwaway database plus a bare view that inserts one
  row. 16 clients, each logged in as a member of its own with credits and a key, post the real
  Create form (CSRF token, fresh form token, a new prompt each time) for `--seconds`; then the
  same clients post to the bare view for as long. The jobs the submits enqueue go to a queue of
  the run's own that no worker reads. Then the ledger audit.
- polls/s: one dispatcher, in a process of its own, against a local stub gateway that answers
  every status request after 100 ms; its limit is concurrency / 0.1 s. At concurrency 8, 16 and
  32 over 10,000 due tasks, and at concurrency 8 over 100, 1,000 and 10,000 due tasks whose
  next checks are all different or all the same instant. The rate counts first polls of
  distinct tasks, from the first to the last, so a small set of due tasks that runs out before
  the window ends is timed while it lasts.
- pages: the gallery's first page against a bare page listing the same 24 results through the
  gallery's own index; /tasks/ with 24 cards (some active) against a one-query bare list of the
  same 24 tasks. Both through the full middleware stack with the test client, logged in.
- memory: the dispatcher process's peak resident memory with `--tasks` tasks due, against the
  same process idle.

Between runs the tables are vacuumed and analysed (PostgreSQL), so no run measures the dead
rows of the one before, also where autovacuum is off. It prints figures and never checks them:
how fast is fast enough is the reader's call, and a timing assertion would only make slow
machines fail. Run it on an otherwise idle machine; anything else running shows up in the
figures.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import html
import io
import json
import logging
import math
import os
import platform
import pstats
import re
import resource
import runpy
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from unittest import mock

import httpx
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.messages.storage.cookie import CookieStorage
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from django.db.models import F, Q
from django.shortcuts import resolve_url
from django.test import Client
from django.test.utils import CaptureQueriesContext, override_settings
from django.utils import timezone
from django_q.brokers import get_broker

from accounts import ledger
from accounts.models import LedgerEntry, ProviderKey
from generations import jobs
from generations.management.commands import benchmark_gallery as gallery_bench
from generations.models import Task
from omniweb.benchmark_urls import BARE_INSERT_PATH, BARE_TASKS_PATH
from omniweb.benchmarking import (
    child_database_url,
    run_clients,
    throwaway_database,
    vacuum_analyze,
)

PROFILE_LINES = 30
PARTS = ("statements", "submit", "poll", "pages", "memory")
SUBMIT_CLIENTS = 16
STUB_LATENCY = 0.1  # seconds the stub gateway takes to answer a status request
BASE_CONCURRENCY = 8  # the dispatcher's default, where the due-task counts are compared
PAGE_REPEAT = 20  # requests per page per run; a run's figure is their median
MEMBER_TASKS = 24
ACTIVE_CARDS = 4
MIB = 1024 * 1024
# Enough for any run: a submit costs a few dozen credits. The balance column is 32 bits.
BALANCE = 1_000_000_000
MODEL = "apimart/Omni-Flash-Ext"
# Each due task's first due time is kept in its deadline_at, this much later (so no deadline
# passes during a run): the tasks a run polled are made due again in one UPDATE.
DUE_OFFSET = timedelta(hours=1)

CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
KEY_SELECT = re.compile(r'<select name="key"[^>]*>(.*?)</select>', re.S)
OPTION = re.compile(r'<option value="([^"]+)"')
SUMMARY = re.compile(r'id="create-summary">(.*?)</div>', re.S)
TAG = re.compile(r"<[^>]+>")


def number_list(value: str) -> list[int]:
    try:
        numbers = [int(part.replace("_", "")) for part in value.split(",") if part.strip()]
    except ValueError:
        numbers = []
    if not numbers or any(n < 1 or n > 1_000_000 for n in numbers):
        raise argparse.ArgumentTypeError(f"{value!r}: give whole numbers separated by commas.")
    return sorted(set(numbers))


def part_list(value: str) -> list[str]:
    parts = [part.strip() for part in value.split(",") if part.strip()]
    unknown = [part for part in parts if part not in PARTS]
    if not parts or unknown:
        raise argparse.ArgumentTypeError(f"{value!r}: choose from {', '.join(PARTS)}.")
    return parts


# --- the stub gateway ---------------------------------------------------------------------------


class StubGateway:
    """A local gateway in APIMart's dialect whose tasks never finish: every status request is
    answered "processing" after `latency` seconds, and its arrival recorded."""

    def __init__(self, latency: float):
        self.arrivals: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            # Keep-alive, as the gateways' own servers do: with HTTP/1.0 every poll would open
            # a new connection, a cost a real gateway does not add. The headers and the body
            # go out as two writes; without TCP_NODELAY the body would wait for the client's
            # delayed ACK of the headers (about 40 ms on Linux), which no real server makes
            # its clients wait.
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args) -> None:
                """Quiet: thousands of request lines would bury the table."""

            def do_GET(self) -> None:
                task_id = self.path.rsplit("/", 1)[1]
                with stub.lock:
                    stub.arrivals.append((time.monotonic(), task_id))
                time.sleep(latency)
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
        self.server.request_queue_size = 128
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def clear(self) -> None:
        with self.lock:
            self.arrivals = []

    def polls(self) -> int:
        with self.lock:
            return len(self.arrivals)

    def first_polls(self, concurrency: int) -> tuple[int, float]:
        """(distinct tasks polled, their first polls per second). The rate is taken after the
        first `concurrency` polls, which a dispatcher sends together as it starts: from there
        on, arrivals come as fast as polls finish, while there are due tasks left."""
        seen: set[str] = set()
        times = []
        with self.lock:
            for moment, task_id in self.arrivals:
                if task_id not in seen:
                    seen.add(task_id)
                    times.append(moment)
        steady = times[concurrency:]
        if len(steady) > concurrency:
            return len(times), (len(steady) - 1) / (steady[-1] - steady[0])
        # Too few for that: the polls over the time from the first request to the last answer.
        if not times:
            return 0, 0.0
        return len(times), len(times) / (times[-1] - times[0] + STUB_LATENCY)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- the dispatcher process ---------------------------------------------------------------------


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
    """The dispatcher process the poll and memory figures come from (run by `manage.py shell
    -c` with omniweb.benchmark_settings): one dispatcher run against the throwaway database,
    then one JSON line with its figures. The successor it enqueues at the end goes to the run's
    own queue, which the benchmark deletes."""
    if connection.settings_dict["NAME"] != os.environ["OMNIWEB_BENCHMARK_DATABASE"]:
        raise SystemExit("The dispatcher would not run on the benchmark's throwaway database.")
    seconds = float(os.environ["OMNIWEB_BENCHMARK_SECONDS"])
    name = os.environ["OMNIWEB_BENCHMARK_DISPATCHER"]
    logging.getLogger("omniweb.engine").setLevel(logging.WARNING)
    started, cpu = time.monotonic(), cpu_seconds()
    outcome = jobs.dispatch(name=name, seconds=seconds)
    figures = {
        "peak_rss": peak_rss_bytes(),
        "seconds": time.monotonic() - started,
        "cpu_seconds": cpu_seconds() - cpu,
        "concurrency": settings.DISPATCH_CONCURRENCY,
        "outcome": outcome,
    }
    print(json.dumps(figures), flush=True)


# --- the gunicorn server ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_cpu_seconds(pid: int) -> float:
    """CPU time of a process and of the children it has reaped (Linux /proc; 0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the command name: utime, stime, cutime, cstime are fields 14-17 of the line.
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid:
            found.append(int(entry))
    return found


class GunicornServer:
    """gunicorn with the project's gunicorn.conf.py on a free local port, on the throwaway
    database (omniweb.benchmark_settings), started and stopped around the HTTP figures."""

    def __init__(self, env: dict[str, str]):
        self.config_path = settings.BASE_DIR / "gunicorn.conf.py"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**env, "OMNIWEB_BIND": f"127.0.0.1:{self.port}"}
        config = runpy.run_path(str(self.config_path))
        self.workers, self.threads = config.get("workers", 1), config.get("threads", 1)
        self.max_requests = config.get("max_requests", 0)

    def __enter__(self) -> GunicornServer:
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(self.config_path), "omniweb.wsgi"],
            cwd=settings.BASE_DIR,
            env=self.env,
            stdout=subprocess.DEVNULL,  # the access log: a line per request
            stderr=self.log,
        )
        try:
            self.wait_until_up()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_until_up(self) -> None:
        login = self.url + resolve_url(settings.LOGIN_URL)
        give_up = time.monotonic() + 90
        while time.monotonic() < give_up:
            if self.process.poll() is not None:
                raise CommandError(f"gunicorn stopped at start-up:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(login, timeout=5).status_code == 200:
                    return
            time.sleep(0.25)
        raise CommandError(f"gunicorn did not answer within 90 s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        self.log.seek(0)
        return self.log.read()[-3000:]

    def cpu_seconds(self) -> float:
        """CPU time of the master and its workers so far, recycled workers included."""
        pid = self.process.pid
        return process_cpu_seconds(pid) + sum(process_cpu_seconds(c) for c in children(pid))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()

    def __exit__(self, *exc) -> None:
        self.stop()


class HttpMember:
    """One client of the gunicorn server, logged in as a member of its own (a session made for
    it), holding the Create form's CSRF token and the member's key."""

    def __init__(self, base_url: str, session_key: str):
        self.client = httpx.Client(
            base_url=base_url,
            cookies={settings.SESSION_COOKIE_NAME: session_key},
            timeout=60,
            follow_redirects=False,
        )
        self.referer = f"{base_url}/create/"
        self.task_pk: int | None = None
        self.number = 0

    def fetch_form(self) -> None:
        page = self.client.get("/create/", params={"model": MODEL})
        if page.status_code != 200:
            raise CommandError(f"GET /create/ answered {page.status_code}.")
        csrf, keys = CSRF.search(page.text), KEY_SELECT.search(page.text)
        key = OPTION.search(keys.group(1)) if keys else None
        if not (csrf and key):
            raise CommandError("The Create page had no CSRF token or key to submit with.")
        self.csrf, self.key = csrf.group(1), html.unescape(key.group(1))

    def submit(self) -> None:
        """The Create form as a member posts it: a form token of its own each time (the page
        makes a fresh one for every form it shows), a new prompt."""
        self.number += 1
        answer = self.client.post(
            "/create/",
            data=create_form_data(self.csrf, self.key, self.number),
            headers={"Referer": self.referer},
        )
        if answer.status_code != 302:
            raise CommandError(f"A submit was refused: {refusal(answer.status_code, answer.text)}")
        # The submit's "Submitted" message travels in a cookie that the next page a browser
        # shows reads and clears. Kept, every later submit would carry and re-encode all the
        # unread messages before it, a cost no member's browser pays.
        self.client.cookies.delete(CookieStorage.cookie_name)

    def insert(self) -> None:
        answer = self.client.post(
            BARE_INSERT_PATH,
            data={"csrfmiddlewaretoken": self.csrf, "task": str(self.task_pk)},
            headers={"Referer": self.referer},
        )
        if answer.status_code != 302:
            raise CommandError(f"The bare insert view answered {answer.status_code}.")

    def close(self) -> None:
        self.client.close()


def create_form_data(csrf: str, key: str, number: int) -> dict[str, str]:
    return {
        "csrfmiddlewaretoken": csrf,
        "form_token": str(uuid.uuid4()),
        "prompt": f"a red fox in the snow, take {number}",
        "model": MODEL,
        "duration": "4",
        "resolution": "720p",
        "aspect_ratio": "16:9",
        "key": key,
        "visibility": "team",
    }


def refusal(status: int, text: str) -> str:
    found = SUMMARY.search(text)
    words = " ".join(html.unescape(TAG.sub(" ", found.group(1))).split()) if found else ""
    return words or f"HTTP {status}"


# --- small helpers ------------------------------------------------------------------------------


@contextmanager
def quiet(logger: logging.Logger) -> Iterator[None]:
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextmanager
def jobs_not_enqueued() -> Iterator[None]:
    """In this process nothing may reach the site's real job queue: its broker's enqueue does
    nothing while the test client submits. (A Redis broker's enqueue runs no SQL, so the
    statement counts are the same; the ORM broker's one INSERT is left out.)"""
    with mock.patch.object(type(get_broker()), "enqueue", lambda self, task: None):
        yield


def cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def runs(values: list[float], digits: int = 1) -> str:
    return ", ".join(f"{value:,.{digits}f}" for value in values)


def session_cookie(user) -> str:
    """A logged-in session for `user`, as a login would make (without the password hash's
    deliberate cost, which is not what is measured)."""
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


class Command(BaseCommand):
    help = (
        "Measure polls/s, submits/s over HTTP, page times, statements per submit and per poll "
        "and the dispatcher's memory on a throwaway database, each against a baseline from the "
        "same run (medians of --repeat runs), and print one table."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--seconds",
            type=float,
            default=5.0,
            help="Length of each timed window: submit clients, bare inserts, a dispatcher run "
            "(default 5).",
        )
        parser.add_argument(
            "--repeat", type=int, default=3, help="Runs per timed figure; medians (default 3)."
        )
        parser.add_argument(
            "--tasks",
            type=int,
            default=10_000,
            help="Gallery results for the page figures, and due tasks for the memory figure "
            "(default 10,000).",
        )
        parser.add_argument(
            "--due",
            type=number_list,
            default=[100, 1_000, 10_000],
            help="Due task counts the dispatcher is measured over (default 100,1000,10000).",
        )
        parser.add_argument(
            "--concurrency",
            type=number_list,
            default=[8, 16, 32],
            help="Dispatcher concurrencies measured over the most due tasks (default 8,16,32).",
        )
        parser.add_argument(
            "--only",
            type=part_list,
            default=list(PARTS),
            help=f"Measure only these parts, comma-separated: {','.join(PARTS)} (default all).",
        )
        parser.add_argument(
            "--profile",
            action="store_true",
            help="Also print where the time of a page and of a submit goes (cProfile, after "
            "the timed runs, so the figures are not slowed by it).",
        )

    def handle(
        self,
        *args,
        seconds: float,
        repeat: int,
        tasks: int,
        due: list[int],
        concurrency: list[int],
        only: list[str],
        profile: bool = False,
        **options,
    ) -> None:
        if not 0 < seconds <= 600:
            raise CommandError("--seconds must be above 0 and at most 600.")
        if not 1 <= repeat <= 20:
            raise CommandError("--repeat must be 1 to 20.")
        if not 100 <= tasks <= 1_000_000:
            raise CommandError("--tasks must be 100 to 1,000,000.")
        if max(concurrency) > 256:
            raise CommandError("--concurrency must be at most 256.")
        self.seconds, self.repeat, self.profile = seconds, repeat, profile
        self.rows: list[tuple[str, str, str, str, str]] = []
        self.queue = f"omniweb-benchmark-{uuid.uuid4().hex[:12]}"
        self.dispatch_owners: list = []
        self.extra_lines: list[str] = []
        started = time.monotonic()
        load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
        self.stub = StubGateway(STUB_LATENCY)
        try:
            with (
                throwaway_database(self.stdout) as self.database,
                gallery_bench.measuring_settings(gallery_bench.URLCONF),
                # Submits are measured, not throttled. The stub gateway listens on loopback,
                # which gateway calls may reach only when allowed.
                override_settings(
                    SUBMIT_RATE_PER_MINUTE=1_000_000_000, GATEWAY_ALLOWED_HOSTS=["127.0.0.1"]
                ),
                # Every login the test client makes would be logged; the table is the output.
                quiet(logging.getLogger("axes")),
                quiet(logging.getLogger("omniweb.engine")),
                quiet(logging.getLogger("django-q")),
            ):
                self.machine = self.describe_machine()
                self.admin = get_user_model().objects.create(username="benchmark-admin")
                try:
                    for part in PARTS:
                        if part in only:
                            self.stdout.write(f"Measuring {part} ...")
                            getattr(self, f"measure_{part}")(tasks, due, concurrency)
                finally:
                    self.delete_queue()
        finally:
            self.stub.close()
        load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
        self.print_table(time.monotonic() - started, load_before, load_after)

    # --- what the figures were measured on ------------------------------------------------------

    def describe_machine(self) -> str:
        version = ".".join(str(part) for part in connection.get_database_version())
        return (
            f"{cpu_count()} CPU cores, {connection.display_name} {version}, "
            f"Python {platform.python_version()}, {platform.system()} {platform.machine()}"
        )

    def row(self, name: str, figure: str, baseline="", ratio="", goal="") -> None:
        self.rows.append((name, figure, baseline, ratio, goal))

    def note(self, line: str) -> None:
        """A line printed above the table (the statements each figure counted)."""
        self.extra_lines.append(line)

    def print_table(self, elapsed: float, load_before, load_after) -> None:
        header = ("Figure", "Measured (median; runs)", "Same-run baseline", "Ratio", "Goal")
        widths = [max(len(row[i]) for row in [header, *self.rows]) for i in range(5)]

        def line(cells) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

        self.stdout.write("")
        for extra in self.extra_lines:
            self.stdout.write(extra)
        self.stdout.write("")
        self.stdout.write(f"Machine: {self.machine}")
        if load_before and load_after:
            self.stdout.write(
                "Load average (1, 5, 15 min) at start "
                + "/".join(f"{v:.2f}" for v in load_before)
                + ", at end "
                + "/".join(f"{v:.2f}" for v in load_after)
                + " (anything else running shows in the figures)"
            )
        self.stdout.write(
            f"Run: --seconds {self.seconds:g} --repeat {self.repeat}; took {elapsed:.0f} s. "
            f"Pages: each run is the median of {PAGE_REPEAT} requests through the full "
            "middleware stack (test client, logged in)."
        )
        self.stdout.write("")
        self.stdout.write(line(header))
        self.stdout.write("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for row in self.rows:
            self.stdout.write(line(row))
        self.stdout.write("")

    # --- members, keys and the job queue --------------------------------------------------------

    def new_member(self, username: str):
        """A member with a large balance and an APIMart key of their own on the stub."""
        user = get_user_model().objects.create(username=username)
        key = ProviderKey(provider="apimart", label="Stub", owner=user, base_url=self.stub.url)
        key.set_secret(f"sk-benchmark-{username}")
        key.save()
        ledger.grant(user, BALANCE, by=self.admin, reason="benchmark")
        return user, key

    def child_env(self, **extra: str) -> dict[str, str]:
        """The environment of a process the benchmark starts: the site's settings with the
        benchmark's few changes, on the throwaway database and the run's own job queue."""
        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE="omniweb.benchmark_settings",
            DATABASE_URL=child_database_url(self.database),
            OMNIWEB_BENCHMARK_DATABASE=self.database,
            OMNIWEB_BENCHMARK_QUEUE=self.queue,
            OMNIWEB_GATEWAY_ALLOWED_HOSTS="127.0.0.1",
            OMNIWEB_SUBMIT_RATE_PER_MINUTE=str(1_000_000_000),
            **extra,
        )
        return env

    def delete_queue(self) -> None:
        """The jobs the run's processes enqueued, never run: with Redis they would outlive the
        throwaway database."""
        if "redis" in settings.Q_CLUSTER:
            with contextlib.suppress(Exception):
                get_broker(list_key=self.queue).delete_queue()

    # --- statements -----------------------------------------------------------------------------

    def measure_statements(self, *args) -> None:
        user, _ = self.new_member("benchmark-statements")
        client = Client()
        client.force_login(user)
        page = client.get("/create/", {"model": MODEL}, secure=True).content.decode()
        keys = KEY_SELECT.search(page)
        key = OPTION.search(keys.group(1)) if keys else None
        if key is None:
            raise CommandError("The Create page had no key to submit with.")
        data = create_form_data("", html.unescape(key.group(1)), 1)
        with jobs_not_enqueued(), CaptureQueriesContext(connection) as submit:
            answer = client.post("/create/", data, secure=True)
        if answer.status_code != 302:
            text = answer.content.decode()
            raise CommandError(f"The submit was refused: {refusal(answer.status_code, text)}")
        task = Task.objects.filter(user=user).first()
        with CaptureQueriesContext(connection) as bare:
            answer = client.post(BARE_INSERT_PATH, {"task": task.pk}, secure=True)
        if answer.status_code != 302:
            raise CommandError(f"The bare insert view answered {answer.status_code}.")

        self.park_submitted()
        self.dispatch_members(BASE_CONCURRENCY)
        polled = self.create_due_tasks(1, equal=True)
        owner_name = f"benchmark:statements-{uuid.uuid4().hex[:8]}"
        # Leased as a dispatcher leases it, then worked on as a dispatcher works on it.
        Task.objects.filter(pk=polled[0].pk).update(
            lease_owner=owner_name, lease_until=timezone.now() + timedelta(minutes=5)
        )
        self.stub.clear()
        with CaptureQueriesContext(connection) as poll:
            jobs.work_on(polled[0].pk, owner_name)
        if self.stub.polls() != 1:
            raise CommandError(f"One poll asked the stub gateway {self.stub.polls()} times.")
        self.delete_due_tasks()

        for name, queries in (
            ("a submit (Create form POST, test client)", submit),
            ("a bare insert (same client)", bare),
            ("a poll (jobs.work_on, stub gateway)", poll),
        ):
            self.note(f"Statements of {name}: {len(queries)}")
            for number, query in enumerate(queries.captured_queries, start=1):
                self.note(f"  {number:>2}. {' '.join(query['sql'].split())[:150]}")
        self.row(
            "statements per submit (Create form POST)",
            f"{len(submit)}",
            f"bare insert view: {len(bare)}",
            f"{len(submit) / max(len(bare), 1):.1f}x",
        )
        self.row("statements per poll (jobs.work_on)", f"{len(poll)}")
        if self.profile:

            def submits() -> None:
                for number in range(2, 22):
                    client.post("/create/", create_form_data("", data["key"], number), secure=True)
                    # As a browser's next page would read it (see HttpMember.submit).
                    client.cookies.pop(CookieStorage.cookie_name, None)

            with jobs_not_enqueued():
                self.print_profile("20 submits (Create form POST, test client)", submits)

    # --- submits over HTTP ----------------------------------------------------------------------

    def measure_submit(self, *args) -> None:
        name = f"submits/s over HTTP, {SUBMIT_CLIENTS} clients, same gunicorn"
        if connection.vendor != "postgresql":
            self.row(name, "needs PostgreSQL (a postgres:// DATABASE_URL)", goal=">= 0.4")
            return
        members = [self.new_member(f"benchmark-http-{n:02d}") for n in range(SUBMIT_CLIENTS)]
        server = GunicornServer(self.child_env())
        self.note(
            f"gunicorn (gunicorn.conf.py): {server.workers} workers x {server.threads} threads, "
            f"max_requests {server.max_requests}; {SUBMIT_CLIENTS} httpx clients in this process"
        )
        submit_runs, insert_runs, submit_cpu, insert_cpu = [], [], [], []
        submitted = 0
        with server:
            clients = [HttpMember(server.url, session_cookie(user)) for user, _ in members]
            try:
                for client in clients:
                    client.fetch_form()
                    client.submit()
                    submitted += 1
                for client, (user, _) in zip(clients, members, strict=True):
                    client.task_pk = Task.objects.filter(user=user).values_list("pk", flat=True)[0]
                # Unmeasured: every worker process loads its code and opens its connection.
                warm = min(1.0, self.seconds)
                submitted += run_clients([c.submit for c in clients], warm)[1]
                run_clients([c.insert for c in clients], warm)
                vacuum_analyze()
                for number in range(1, self.repeat + 1):
                    cpu = server.cpu_seconds()
                    submits, count = run_clients([c.submit for c in clients], self.seconds)
                    submitted += count
                    submit_cpu.append((server.cpu_seconds() - cpu) * 1000 / max(count, 1))
                    cpu = server.cpu_seconds()
                    inserts, inserted = run_clients([c.insert for c in clients], self.seconds)
                    insert_cpu.append((server.cpu_seconds() - cpu) * 1000 / max(inserted, 1))
                    vacuum_analyze()
                    submit_runs.append(submits)
                    insert_runs.append(inserts)
                    self.stdout.write(
                        f"  HTTP run {number}: {submits:,.1f} submits/s ({count:,}), "
                        f"{inserts:,.1f} bare inserts/s ({inserted:,}); gunicorn CPU "
                        f"{submit_cpu[-1]:.1f} ms per submit, {insert_cpu[-1]:.1f} ms per insert"
                    )
            finally:
                for client in clients:
                    client.close()

        users = [user for user, _ in members]
        debits = LedgerEntry.objects.filter(user__in=users, kind=LedgerEntry.Kind.DEBIT).count()
        created = Task.objects.filter(user__in=users).count()
        if not debits == created == submitted:
            raise CommandError(
                f"{submitted} submits were accepted, {created} tasks and {debits} debits written."
            )
        problems = ledger.audit()
        for problem in problems:
            self.stderr.write(problem)
        if problems:
            raise CommandError(f"Ledger audit failed: {len(problems)} problems.")
        self.park_submitted()

        submits, inserts = median(submit_runs), median(insert_runs)
        self.row(
            name,
            f"{submits:,.1f}/s ({runs(submit_runs)}), audit passed",
            f"bare insert view: {inserts:,.1f}/s ({runs(insert_runs)})",
            f"{submits / inserts:.2f}",
            ">= 0.4",
        )
        self.row(
            "gunicorn CPU per request (PostgreSQL's not counted)",
            f"{median(submit_cpu):.1f} ms per submit ({runs(submit_cpu)})",
            f"bare insert: {median(insert_cpu):.1f} ms ({runs(insert_cpu)})",
            f"{median(submit_cpu) / max(median(insert_cpu), 0.001):.1f}x",
        )

    # --- the dispatcher -------------------------------------------------------------------------

    @staticmethod
    def park_submitted() -> None:
        """No worker ever takes the submitted tasks; the dispatcher measured later must not
        find them due."""
        Task.objects.filter(state__in=Task.ACTIVE_STATES).update(next_check_at=None)

    def dispatch_members(self, concurrency: int) -> list[tuple]:
        """Members with a key each on the stub, enough that neither the per-key nor the
        per-member limit ever holds a dispatcher of `concurrency` back; made once, added to."""
        per_member = getattr(settings, "PER_MEMBER_CONCURRENCY", settings.PER_KEY_CONCURRENCY)
        per_slot = min(per_member, settings.PER_KEY_CONCURRENCY)
        needed = max(16, math.ceil(concurrency / per_slot) * 2)
        while len(self.dispatch_owners) < needed:
            number = len(self.dispatch_owners)
            self.dispatch_owners.append(self.new_member(f"benchmark-dispatch-{number:03d}"))
        return self.dispatch_owners

    def create_due_tasks(self, count: int, *, equal: bool) -> list[Task]:
        """`count` running tasks spread over the dispatch members, all due: at one instant, or
        each a millisecond apart. deadline_at keeps each one's first due time (DUE_OFFSET
        later) for make_due_again."""
        self.delete_due_tasks()
        members = self.dispatch_owners or self.dispatch_members(BASE_CONCURRENCY)
        now = timezone.now()
        created = []
        for start in range(0, count, 2000):
            batch = []
            for i in range(start, min(count, start + 2000)):
                user, key = members[i % len(members)]
                due = now if equal else now - timedelta(milliseconds=count - i)
                batch.append(
                    Task(
                        user=user,
                        provider="apimart",
                        model="Omni-Flash-Ext",
                        kind="video",
                        prompt=f"benchmark task {i}",
                        params={"duration": 4, "resolution": "720p", "aspect_ratio": "16:9"},
                        key=key,
                        key_label="Stub",
                        state=Task.State.RUNNING,
                        provider_task_id=f"task_benchmark_{i}",
                        price_unit="task",
                        price_credits_per_unit=10,
                        price_units=1,
                        price_multiplier=Decimal(1),
                        credits_charged=10,
                        created_at=now - timedelta(minutes=1),
                        next_check_at=due,
                        deadline_at=due + DUE_OFFSET,
                        give_up_at=now + timedelta(days=2),
                    )
                )
            created += Task.objects.bulk_create(batch)
        vacuum_analyze()
        return created

    def make_due_again(self) -> None:
        """Every task the last run touched, back as it was created; then no dead rows."""
        self.dispatch_tasks().filter(Q(polls__gt=0) | ~Q(lease_owner="")).update(
            state=Task.State.RUNNING,
            next_check_at=F("deadline_at") - DUE_OFFSET,
            lease_owner="",
            lease_until=None,
            polls=0,
            error_streak=0,
            message="",
        )
        vacuum_analyze()

    def dispatch_tasks(self):
        return Task.objects.filter(user__in=[user for user, _ in self.dispatch_owners])

    def delete_due_tasks(self) -> None:
        if self.dispatch_owners:
            self.dispatch_tasks().delete()
            vacuum_analyze()

    def run_dispatcher(self, concurrency: int) -> dict:
        """One dispatcher process for `--seconds`; its figures with the stub's count of first
        polls and their rate."""
        code = "from generations.management.commands.benchmark import dispatcher_child\n"
        code += "dispatcher_child()"
        env = self.child_env(
            OMNIWEB_BENCHMARK_SECONDS=str(self.seconds),
            # A name of its own: a baton shared with a real dispatcher would stop one of them.
            OMNIWEB_BENCHMARK_DISPATCHER=f"benchmark-{uuid.uuid4().hex[:12]}",
            OMNIWEB_DISPATCH_CONCURRENCY=str(concurrency),
        )
        self.stub.clear()
        try:
            run = subprocess.run(
                [sys.executable, str(settings.BASE_DIR / "manage.py"), "shell", "-c", code],
                env=env,
                capture_output=True,
                text=True,
                timeout=self.seconds + 300,
            )
        except subprocess.TimeoutExpired as exc:
            raise CommandError("The dispatcher process did not finish in time.") from exc
        lines = run.stdout.strip().splitlines()
        if run.returncode != 0 or not lines:
            raise CommandError(f"The dispatcher process failed:\n{run.stderr[-3000:]}")
        figures = json.loads(lines[-1])
        figures["tasks_polled"], figures["rate"] = self.stub.first_polls(concurrency)
        figures["polls"] = self.stub.polls()
        return figures

    def measure_poll(self, tasks: int, due: list[int], concurrency: list[int]) -> None:
        most = max(due)
        self.dispatch_members(max(concurrency))
        # (due tasks, equal timestamps) -> concurrencies, grouped so each set is made once.
        plan: dict[tuple[int, bool], list[int]] = {(most, False): list(concurrency)}
        for count in due:
            for equal in (False, True):
                levels = plan.setdefault((count, equal), [])
                if BASE_CONCURRENCY not in levels:
                    levels.append(BASE_CONCURRENCY)
        for (count, equal), levels in sorted(
            plan.items(), key=lambda item: (-item[0][0], item[0][1])
        ):
            self.create_due_tasks(count, equal=equal)
            for level in sorted(levels):
                figures = []
                for number in range(1, self.repeat + 1):
                    if number > 1:
                        self.make_due_again()
                    figures.append(self.run_dispatcher(level))
                    run = figures[-1]
                    self.stdout.write(
                        f"  dispatcher, concurrency {level}, {count:,} due "
                        f"({'equal' if equal else 'distinct'} times), run {number}: "
                        f"{run['rate']:,.1f} polls/s over {run['tasks_polled']:,} tasks "
                        f"({run['polls']:,} polls in {run['seconds']:.1f} s), "
                        f"{self.cpu_per_poll(run):.1f} ms CPU per poll"
                    )
                self.make_due_again()
                self.poll_row(level, count, equal, figures)
        self.delete_due_tasks()

    @staticmethod
    def cpu_per_poll(figures: dict) -> float:
        return figures["cpu_seconds"] * 1000 / max(figures["polls"], 1)

    def poll_row(self, level: int, count: int, equal: bool, figures: list[dict]) -> None:
        rates = [f["rate"] for f in figures]
        rate = median(rates)
        limit = level / STUB_LATENCY
        cpu = median([self.cpu_per_poll(f) for f in figures])
        times = "equal" if equal else "distinct"
        self.row(
            f"polls/s, concurrency {level}, {count:,} due ({times} next checks)",
            f"{rate:,.1f} ({runs(rates)}); {cpu:.1f} ms CPU/poll",
            f"limit {level} / {STUB_LATENCY:g} s = {limit:,.0f}",
            f"{rate / limit:.2f}",
            ">= 0.8" if level == BASE_CONCURRENCY else "",
        )

    # --- pages ----------------------------------------------------------------------------------

    def measure_pages(self, tasks: int, *args) -> None:
        User = get_user_model()
        members = [
            User.objects.create(username=f"benchmark-gallery-{n}", display_name=f"Member {n}")
            for n in range(1, 6)
        ]
        gallery_bench.create_gallery(members, tasks, favourites_of=members[0])
        member = User.objects.create(username="benchmark-tasks", display_name="Task member")
        own = gallery_bench.create_gallery([member], MEMBER_TASKS)
        # Some cards active, so the page works out their typical durations as it does live.
        Task.objects.filter(pk__in=[task.pk for task in own[-ACTIVE_CARDS:]]).update(
            state=Task.State.RUNNING, finished_at=None, next_check_at=None
        )
        vacuum_analyze()
        plan = gallery_bench.bare_plan()
        if plan:
            self.stdout.write(f"Bare gallery page's plan: {' '.join(plan.split())}")
        index = (
            " via gallery_newest_first"
            if "gallery_newest_first" in plan
            else (" (NOT via the gallery's index)" if plan else "")
        )

        client = Client()
        client.force_login(members[0])
        gallery, bare = self.time_pages(client, "/gallery/", gallery_bench.BARE_PATH, "gallery")
        self.page_row(
            f"gallery first page of {tasks:,} results",
            gallery,
            f"bare page, one query{index}",
            bare,
            "<= 2.5x",
        )
        client = Client()
        client.force_login(member)
        cards, bare = self.time_pages(client, "/tasks/", BARE_TASKS_PATH, "/tasks/")
        self.page_row(
            f"/tasks/ with {MEMBER_TASKS} cards ({ACTIVE_CARDS} active)",
            cards,
            "one-query bare list of the same 24",
            bare,
            "<= 3x",
        )

    def time_pages(self, client: Client, url: str, bare_url: str, name: str):
        """(page runs, bare runs): each run the (median ms, p95 ms, queries) of PAGE_REPEAT
        requests, the page and its bare page taking turns."""
        page_runs, bare_runs = [], []
        for number in range(1, self.repeat + 1):
            body, page = gallery_bench.time_page(client, url, PAGE_REPEAT)
            bare_body, bare = gallery_bench.time_page(client, bare_url, PAGE_REPEAT)
            if not gallery_bench.same_results(body, bare_body):
                raise CommandError(f"{url} and its bare page do not list the same results.")
            page_runs.append(page)
            bare_runs.append(bare)
            self.stdout.write(
                f"  {name} run {number}: {page[0]:.2f} ms ({page[2]} queries), bare "
                f"{bare[0]:.2f} ms ({bare[2]} queries)"
            )
        if self.profile:
            self.print_profile(
                f"{PAGE_REPEAT} requests of {url}",
                lambda: [client.get(url, secure=True) for _ in range(PAGE_REPEAT)],
            )
        return page_runs, bare_runs

    def print_profile(self, what: str, work: Callable[[], object]) -> None:
        """The functions `work` spent most of its time in, counting what they called, as
        cProfile sees them (which slows Python code more than waiting on the database)."""
        profiler = cProfile.Profile()
        profiler.runcall(work)
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("cumulative").print_stats(PROFILE_LINES)
        self.stdout.write(f"Profile of {what}, by cumulative time:")
        lines = out.getvalue().splitlines()
        start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
        for line in lines[start:]:
            if line.strip():
                self.stdout.write("  " + line)

    def page_row(self, name: str, page: list, bare_name: str, bare: list, goal: str) -> None:
        page_ms, bare_ms = [r[0] for r in page], [r[0] for r in bare]
        # A first run may fill a cache the later ones read from: say so when counts differ.
        counts = sorted({r[2] for r in page})
        queries = f"{counts[0]}-{counts[-1]}" if len(counts) > 1 else f"{counts[0]}"
        self.row(
            name,
            f"{median(page_ms):.2f} ms, {queries} queries ({runs(page_ms, 2)})",
            f"{bare_name}: {median(bare_ms):.2f} ms ({runs(bare_ms, 2)})",
            f"{median(page_ms) / median(bare_ms):.1f}x",
            goal,
        )

    # --- memory ---------------------------------------------------------------------------------

    def measure_memory(self, tasks: int, *args) -> None:
        self.dispatch_members(BASE_CONCURRENCY)
        self.delete_due_tasks()
        idle = self.run_dispatcher(BASE_CONCURRENCY)
        self.create_due_tasks(tasks, equal=True)
        busy = self.run_dispatcher(BASE_CONCURRENCY)
        self.delete_due_tasks()
        self.row(
            f"dispatcher memory, {tasks:,} tasks due",
            f"{busy['peak_rss'] / MIB:,.1f} MiB peak RSS",
            f"idle, no tasks: {idle['peak_rss'] / MIB:,.1f} MiB",
            f"{busy['peak_rss'] / idle['peak_rss']:.2f}",
        )
