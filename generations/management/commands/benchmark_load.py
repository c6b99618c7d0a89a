"""The load figure: members using a production-like server at once, measured end to end.

    DATABASE_URL=postgres://... REDIS_URL=redis://.../15 DEBUG=1 \\
        python manage.py benchmark_load --members 50 --seconds 60 --repeat 3

Each run gets a throwaway PostgreSQL database (omniweb.benchmarking), migrated, with the
members (one password, plenty of credits, an APIMart key each pointing at this site's own
simulator) and a few hundred finished team results so gallery pages are not empty. Then the
product starts as it would in production: gunicorn with gunicorn.conf.py on a free local port,
and one `manage.py qcluster`, with DEBUG off, a generated SECRET_KEY, collected static files
and the simulator on. `python -m loadtest.run` drives it for the given time; afterwards the
command waits (bounded) until no task the load made is still moving, audits the ledger, stops
both processes and drops the database. The figures of every run are printed, then their medians.

The simulator answers from the same gunicorn as the pages, so the gateway's answers queue
behind the members' requests: when the server is saturated a submit can wait past the gateway
timeout, and such a task goes to review as it would with a real gateway. Those are counted
("review") and not waited for.

To compare two versions of the code, run the command in both checkouts on the same machine;
each run starts from nothing, so nothing carries over. On a machine doing other work too,
alternate single runs (--repeat 1) of the two, so both see the same background load, and
compare medians: each run prints the load average it started under.

REDIS_URL, when set, must name a Redis database of its own: the command clears it before each
run (batons and queued jobs of an earlier run would otherwise leak in) and refuses to start
while a worker cluster is using it. Without REDIS_URL the queue and the cache live in the
throwaway database itself.

It prints figures and never judges them; it fails only when a run could not be made, the
load generator saw server errors or failed requests, or the ledger audit found a problem.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connection
from django.db.models import Count

from accounts import ledger
from accounts.models import LedgerEntry, ProviderKey
from generations.management.commands import benchmark_gallery as gallery_bench
from generations.models import Task
from omniweb.benchmarking import throwaway_database

# Each member gets this many credits: far more than a run can spend, so no submit is refused
# for want of credits.
MEMBER_CREDITS = 100_000
GALLERY_AUTHORS = 5
# Bounds on the phases around the load itself.
HEALTHY_SECONDS = 120
STOP_SECONDS = 40
POLL_SECONDS = 0.5
# The states the engine still moves on its own. A task in review waits for a person (or for
# its final limit, hours away): the queue has drained when only those are left.
MOVING_STATES = [state for state in Task.ACTIVE_STATES if state != Task.State.NEEDS_REVIEW]


@dataclass
class Run:
    """What one run measured."""

    number: int
    load: dict = field(default_factory=dict)
    states: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    drained_seconds: float | None = None
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def moving(self) -> int:
        return sum(n for state, n in self.states.items() if state in MOVING_STATES)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def database_url_for(name: str) -> str:
    """The configured DATABASE_URL with only the database name changed, so the servers reach
    the throwaway database with the same user, host and options."""
    parts = urlsplit(settings.DATABASE_URL)
    return urlunsplit(parts._replace(path=f"/{name}"))


class Server:
    """gunicorn and one worker cluster, each in a process group of its own, logging to files."""

    def __init__(self, env: dict[str, str], logs: Path):
        self.processes: list[tuple[str, subprocess.Popen]] = []
        self.logs = logs
        manage = str(settings.BASE_DIR / "manage.py")
        for name, command in (
            ("web", [sys.executable, "-m", "gunicorn", "omniweb.wsgi", "-c", "gunicorn.conf.py"]),
            ("worker", [sys.executable, manage, "qcluster"]),
        ):
            with open(logs / f"{name}.log", "w") as log:
                process = subprocess.Popen(
                    command,
                    cwd=settings.BASE_DIR,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.processes.append((name, process))

    def exited(self) -> str | None:
        """The name of a process that has already ended, if any."""
        return next((name for name, p in self.processes if p.poll() is not None), None)

    def tail(self, name: str, lines: int = 40) -> str:
        text = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> list[str]:
        """SIGTERM to each main process (gunicorn finishes its requests, the worker hands its
        dispatcher over), SIGKILL to whatever is left of the groups after STOP_SECONDS.
        Returns which had to be killed."""
        for _, process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        killed = []
        for name, process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                killed.append(name)
        for _, process in self.processes:
            # The group also holds gunicorn's and the cluster's own children: none may outlive
            # the run, or the database could not be dropped.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            if process.poll() is None:
                process.wait()
        return killed


class Command(BaseCommand):
    help = (
        "Run loadtest.run against gunicorn and a worker started as in production, on a "
        "throwaway database, several times; print each run's figures and their medians."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--members", type=int, default=50, help="Simulated members (50).")
        parser.add_argument("--seconds", type=float, default=60.0, help="Load per run (60).")
        parser.add_argument("--repeat", type=int, default=3, help="Runs, each fresh (3).")
        parser.add_argument(
            "--results",
            type=int,
            default=300,
            help="Finished team results in the gallery before the load starts (300).",
        )
        parser.add_argument(
            "--think",
            type=float,
            default=1.0,
            help="Seconds a member pauses between iterations, passed to loadtest.run (1).",
        )
        parser.add_argument(
            "--simulator-seconds",
            type=int,
            default=2,
            help="How long a simulated generation takes (2, as the load test uses).",
        )
        parser.add_argument(
            "--drain-seconds",
            type=float,
            default=180.0,
            help="How long to wait after the load for its tasks to end (180).",
        )
        parser.add_argument(
            "--prefix", default="load-", help="Usernames are this plus 00, 01, ... (load-)."
        )

    def handle(self, *args, **options) -> None:
        self.options = options
        members, seconds, repeat = options["members"], options["seconds"], options["repeat"]
        if connection.vendor != "postgresql":
            raise CommandError(
                "benchmark_load needs PostgreSQL (DATABASE_URL=postgres://...): it measures "
                "fifty members at once, which SQLite's single writer is not meant for."
            )
        if not 1 <= members <= 1000:
            raise CommandError("--members must be 1 to 1,000.")
        if not 0 < seconds <= 3600:
            raise CommandError("--seconds must be above 0 and at most 3,600.")
        if not 1 <= repeat <= 20:
            raise CommandError("--repeat must be 1 to 20.")
        if not 0 <= options["results"] <= 100_000:
            raise CommandError("--results must be 0 to 100,000.")
        self.refuse_a_shared_redis()

        work = Path(tempfile.mkdtemp(prefix="omniweb-load-"))
        try:
            self.stdout.write("Collecting static files as in production ...")
            static_root = work / "static"
            self.collect_static(static_root)
            runs = []
            for number in range(1, repeat + 1):
                self.stdout.write(f"\nRun {number} of {repeat}")
                run = self.run_once(number, work / f"run-{number}", static_root)
                self.stdout.write(self.describe(run))
                runs.append(run)
        finally:
            self.clear_redis()
            shutil.rmtree(work, ignore_errors=True)
        self.print_summary(runs)
        failures = [
            run.number
            for run in runs
            if run.problems
            or run.load.get("5xx")
            or run.load.get("errors")
            or run.load.get("login_failures")
        ]
        if failures:
            raise CommandError(
                f"Run(s) {', '.join(map(str, failures))} had server errors, failed requests, "
                "failed logins or ledger problems; see above."
            )

    # --- around the runs ------------------------------------------------------------------------

    def describe_machine(self) -> str:
        version = ".".join(str(part) for part in connection.get_database_version())
        workers = os.environ.get("WEB_CONCURRENCY") or "gunicorn.conf.py's default"
        return (
            f"{cpu_count()} CPU cores, {connection.display_name} {version}, "
            f"Python {platform.python_version()}, {platform.system()} {platform.machine()}; "
            f"web workers: {workers}; broker: {'redis' if settings.REDIS_URL else 'orm'}"
        )

    def refuse_a_shared_redis(self) -> None:
        """The runs clear the Redis database they are given; never one a live cluster uses."""
        if not settings.REDIS_URL:
            return
        from django_q.brokers import get_broker
        from django_q.status import Stat

        if Stat.get_all(get_broker()):
            raise CommandError(
                "A worker cluster is using this Redis database. Give the benchmark one of its "
                "own (REDIS_URL=redis://host:6379/<another number>): it clears it before each run."
            )

    def clear_redis(self) -> None:
        if not settings.REDIS_URL:
            return
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL)
        try:
            client.flushdb()
        finally:
            client.close()

    def collect_static(self, static_root: Path) -> None:
        """Production serves hashed, compressed files from collectstatic's folder; the same
        files serve every run."""
        env = self.production_environment(
            database_url=settings.DATABASE_URL, port=0, static_root=static_root, media_root=None
        )
        collect = subprocess.run(
            [sys.executable, str(settings.BASE_DIR / "manage.py"), "collectstatic", "--noinput"],
            cwd=settings.BASE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if collect.returncode != 0:
            raise CommandError(f"collectstatic failed:\n{collect.stderr[-3000:]}")

    def production_environment(
        self, *, database_url: str, port: int, static_root: Path, media_root: Path | None
    ) -> dict[str, str]:
        """The caller's environment turned into a production one: DEBUG off, secrets of this
        run, the simulator on and answering at this server's own address."""
        site = f"http://127.0.0.1:{port}"
        env = {name: value for name, value in os.environ.items() if name != "PYTEST_VERSION"}
        env.update(
            DEBUG="0",
            SECRET_KEY=secrets.token_urlsafe(50),
            # The keys the members' provider keys were encrypted with in this process.
            OMNIWEB_ENCRYPTION_KEYS=",".join(settings.OMNIWEB_ENCRYPTION_KEYS),
            DATABASE_URL=database_url,
            ALLOWED_HOSTS="127.0.0.1,localhost",
            OMNIWEB_HTTPS="0",
            OMNIWEB_BIND=f"127.0.0.1:{port}",
            OMNIWEB_PUBLIC_URL=site,
            OMNIWEB_SIMULATOR="1",
            OMNIWEB_SIMULATOR_SECONDS=str(self.options["simulator_seconds"]),
            # As in the load test: the per-member submit limit is not what is measured.
            OMNIWEB_SUBMIT_RATE_PER_MINUTE="1000",
            STATIC_ROOT=str(static_root),
            PYTHONUNBUFFERED="1",
        )
        if media_root is not None:
            env["MEDIA_ROOT"] = str(media_root)
        return env

    # --- one run --------------------------------------------------------------------------------

    def run_once(self, number: int, work: Path, static_root: Path) -> Run:
        run = Run(number)
        work.mkdir(parents=True)
        self.clear_redis()
        port = free_port()
        site = f"http://127.0.0.1:{port}"
        password = secrets.token_urlsafe(16)
        with throwaway_database(self.stdout) as database:
            if number == 1:
                # Asked here: the configured database itself need not exist.
                self.stdout.write(f"Machine: {self.describe_machine()}")
            self.stdout.write(
                f"Creating {self.options['members']} members and "
                f"{self.options['results']} gallery results ..."
            )
            self.create_members(password, f"{site}/simulator/apimart")
            self.create_gallery(self.options["results"])
            env = self.production_environment(
                database_url=database_url_for(database),
                port=port,
                static_root=static_root,
                media_root=work / "media",
            )
            self.stdout.write(f"Starting gunicorn and a worker on {site} ...")
            server = Server(env, work)
            try:
                self.wait_until_healthy(site, server)
                run.load_average = os.getloadavg()
                self.stdout.write(
                    f"Load: {self.options['members']} members for {self.options['seconds']:g} s ..."
                )
                run.load = self.load(site, password)
                self.stdout.write("Waiting until none of the load's tasks is moving ...")
                run.drained_seconds = self.wait_until_drained(server)
            finally:
                killed = server.stop()
                if killed:
                    self.stderr.write(f"Killed after {STOP_SECONDS} s: {', '.join(killed)}.")
            run.states = self.load_task_states()
            run.problems = ledger.audit()
            for problem in run.problems[:20]:
                self.stderr.write(problem)
        return run

    def create_members(self, password: str, simulator_url: str) -> None:
        """Members as loadtest.run expects them: PREFIX00, PREFIX01, ...; one password (hashed
        once: the servers check it at every login as they would any), credits granted through
        the ledger, and a key of their own on the simulator, as in the load test."""
        User = get_user_model()
        count = self.options["members"]
        digits = max(2, len(str(count - 1)))  # loadtest.run's usernames
        admin = User.objects.create(username="benchmark-admin", is_staff=True, is_superuser=True)
        hashed = make_password(password)
        members = User.objects.bulk_create(
            [
                User(username=f"{self.options['prefix']}{n:0{digits}d}", password=hashed)
                for n in range(count)
            ]
        )
        for member in members:
            ledger.grant(member, MEMBER_CREDITS, by=admin, reason="load benchmark")
            key = ProviderKey(
                provider="apimart", label="Simulator", owner=member, base_url=simulator_url
            )
            key.set_secret(f"sk-load-{secrets.token_hex(8)}")
            key.save()

    def create_gallery(self, count: int) -> None:
        """`count` finished team results from a few other members, each debited in the ledger
        like a real one (the audit checks every task), the newest a second ago."""
        if not count:
            return
        User = get_user_model()
        authors = User.objects.bulk_create(
            [
                User(username=f"benchmark-author-{n}", display_name=f"Author {n}")
                for n in range(1, GALLERY_AUTHORS + 1)
            ]
        )
        # The gallery benchmark's results (each with a stored result row), then their money.
        tasks = gallery_bench.create_gallery(authors, count)
        # Each author: one grant that pays for their results, then one debit per result, so
        # every balance and every task adds up as the audit expects.
        entries = []
        for author in authors:
            own = [task for task in tasks if task.user_id == author.pk]
            balance = sum(task.credits_charged for task in own)
            if not balance:
                continue
            entries.append(
                LedgerEntry(
                    user=author,
                    kind=LedgerEntry.Kind.GRANT,
                    amount=balance,
                    balance_after=balance,
                    idempotency_key=f"benchmark-load-grant:{author.pk}",
                    reason="load benchmark gallery",
                )
            )
            for task in own:
                balance -= task.credits_charged
                entries.append(
                    LedgerEntry(
                        user=author,
                        kind=LedgerEntry.Kind.DEBIT,
                        amount=-task.credits_charged,
                        balance_after=balance,
                        task=task,
                        idempotency_key=f"benchmark-load-debit:{task.pk}",
                    )
                )
        LedgerEntry.objects.bulk_create(entries, batch_size=1000)

    def wait_until_healthy(self, site: str, server: Server) -> None:
        """Until /healthz answers and reports a live worker, as dev.py waits."""
        deadline = time.monotonic() + HEALTHY_SECONDS
        while time.monotonic() < deadline:
            if (name := server.exited()) is not None:
                raise CommandError(f"The {name} process ended at start-up:\n{server.tail(name)}")
            # Not answering yet, or not JSON yet: still starting.
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(f"{site}/healthz", timeout=10) as response:
                    body = json.load(response)
                if body.get("worker", {}).get("alive"):
                    return
            time.sleep(POLL_SECONDS)
        raise CommandError(
            f"{site}/healthz reported no live worker within {HEALTHY_SECONDS} s.\n"
            f"web:\n{server.tail('web')}\nworker:\n{server.tail('worker')}"
        )

    def load(self, site: str, password: str) -> dict:
        """loadtest.run in a process of its own; its summary is the last line it prints."""
        seconds = self.options["seconds"]
        try:
            run = subprocess.run(
                [
                    *(sys.executable, "-m", "loadtest.run", "--base-url", site),
                    *("--members", str(self.options["members"]), "--seconds", f"{seconds:g}"),
                    *("--password", password, "--usernames-prefix", self.options["prefix"]),
                    *("--think", f"{self.options['think']:g}"),
                ],
                cwd=settings.BASE_DIR,
                capture_output=True,
                text=True,
                timeout=seconds + 300,
            )
        except subprocess.TimeoutExpired as exc:
            raise CommandError("loadtest.run did not finish in time.") from exc
        lines = run.stdout.strip().splitlines()
        try:
            return json.loads(lines[-1])
        except (IndexError, ValueError):
            raise CommandError(
                f"loadtest.run printed no summary (exit code {run.returncode}):\n"
                f"{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
            ) from None

    def load_tasks(self):
        return Task.objects.filter(user__username__startswith=self.options["prefix"])

    def wait_until_drained(self, server: Server) -> float | None:
        """Seconds until every task of the load ended or went to review; None if some were
        still moving when --drain-seconds ran out (or the worker died)."""
        started = time.monotonic()
        deadline = started + self.options["drain_seconds"]
        while time.monotonic() < deadline and server.exited() is None:
            try:
                moving = self.load_tasks().filter(state__in=MOVING_STATES).exists()
            except DatabaseError:
                # The database went away for a moment (restarted): ask again on a new connection.
                connection.close()
                moving = True
            if not moving:
                return time.monotonic() - started
            time.sleep(POLL_SECONDS)
        return None

    def load_task_states(self) -> dict[str, int]:
        return dict(
            self.load_tasks().values_list("state").annotate(n=Count("pk")).values_list("state", "n")
        )

    # --- output ---------------------------------------------------------------------------------

    def describe(self, run: Run) -> str:
        load = run.load
        drained = (
            f"none moving {run.drained_seconds:.0f} s after the load"
            if run.drained_seconds is not None
            else f"{run.moving} still moving {self.options['drain_seconds']:g} s after the load"
        )
        states = ", ".join(f"{state} {n}" for state, n in sorted(run.states.items())) or "none"
        audit = "passed" if not run.problems else f"FAILED ({len(run.problems)} problems)"
        refusals = "; ".join(f"{n}x {message}" for message, n in load["refusals"].items())
        lines = [
            f"  requests: {load['requests']:,} ({load['requests_per_second']:g}/s); "
            f"pages p50 {load['page_p50_ms']:g} ms, p95 {load['page_p95_ms']:g} ms; "
            f"5xx: {load['5xx']}; failed without an answer: {load['errors']}; "
            f"logins failed: {load['login_failures']}",
            f"  submits: {load['submits_accepted']} accepted, {load['submits_refused']} refused"
            + (f" ({refusals})" if refusals else ""),
            f"  tasks: {states}; {drained}",
            f"  ledger audit: {audit}",
            "  load average before the load: "
            + ", ".join(f"{figure:.2f}" for figure in run.load_average),
        ]
        lines += [f"  failed: {example}" for example in load.get("error_examples", [])]
        return "\n".join(lines)

    def print_summary(self, runs: list[Run]) -> None:
        header = (
            "run",
            "req/s",
            "page p50 ms",
            "page p95 ms",
            "5xx",
            "no answer",
            "login failed",
            "accepted",
            "refused",
            "succeeded",
            "failed",
            "review",
            "audit",
        )
        rows = [
            (
                str(run.number),
                f"{run.load['requests_per_second']:g}",
                f"{run.load['page_p50_ms']:g}",
                f"{run.load['page_p95_ms']:g}",
                str(run.load["5xx"]),
                str(run.load["errors"]),
                str(run.load["login_failures"]),
                str(run.load["submits_accepted"]),
                str(run.load["submits_refused"]),
                str(run.states.get(Task.State.SUCCEEDED, 0)),
                str(run.states.get(Task.State.FAILED, 0)),
                str(run.states.get(Task.State.NEEDS_REVIEW, 0)),
                "passed" if not run.problems else "FAILED",
            )
            for run in runs
        ]

        def median(key) -> str:
            return f"{statistics.median(key(run) for run in runs):g}"

        rows.append(
            (
                "median",
                median(lambda r: r.load["requests_per_second"]),
                median(lambda r: r.load["page_p50_ms"]),
                median(lambda r: r.load["page_p95_ms"]),
                median(lambda r: r.load["5xx"]),
                median(lambda r: r.load["errors"]),
                median(lambda r: r.load["login_failures"]),
                median(lambda r: r.load["submits_accepted"]),
                median(lambda r: r.load["submits_refused"]),
                median(lambda r: r.states.get(Task.State.SUCCEEDED, 0)),
                median(lambda r: r.states.get(Task.State.FAILED, 0)),
                median(lambda r: r.states.get(Task.State.NEEDS_REVIEW, 0)),
                "passed" if not any(run.problems for run in runs) else "FAILED",
            )
        )
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

        def line(cells) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

        options = self.options
        self.stdout.write("")
        self.stdout.write(
            f"Load: {options['members']} members for {options['seconds']:g} s, think "
            f"{options['think']:g} s, simulator {options['simulator_seconds']} s per task, "
            f"{options['results']} gallery results; {len(runs)} runs, each on a fresh database."
        )
        self.stdout.write(line(header))
        self.stdout.write("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for row in rows:
            self.stdout.write(line(row))
