"""How long the insight dashboard takes to answer over many tasks, on a throwaway database.

The command creates its own database (omniweb.benchmarking), fills it with N tasks spread over
every gateway, a few keys and members, every final state and the last 30 days, each with its
debit in the ledger (and a refund when it failed or was canceled) and, for most succeeded
tasks, the event of entering `fetching`; then it drops the database, so it never reads or
writes real data. A staff member is logged in with the test client, which sends every request
through the full middleware stack.

It times the dashboard over those 30 days and prints the median and 95th percentile of the
timed requests and the statements one request makes. The figures are printed, never checked.
DEBUG is off while measuring, as in production.
"""

import time
from datetime import timedelta
from decimal import Decimal
from urllib.parse import urlencode

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from django.test import Client
from django.utils import timezone

from accounts.models import LedgerEntry
from generations.management.commands.benchmark_gallery import measuring_settings, time_page
from generations.models import Run, Task, TaskEvent
from generations.providers import catalog
from omniweb.benchmarking import throwaway_database, vacuum_analyze

DAYS = 30
BATCH = 2000
# Mostly successes, as on a working site; every other final state too.
STATES = (
    [Task.State.SUCCEEDED] * 14
    + [Task.State.FAILED] * 3
    + [Task.State.CANCELED, Task.State.NEEDS_REVIEW]
    + [Task.State.RUNNING]
)
REFUNDED = {Task.State.FAILED, Task.State.CANCELED}


def fill(members: list, count: int) -> int:
    """`count` tasks with their ledger entries and fetching events; returns the rows written."""
    now = timezone.now()
    runs = [Run.objects.create(user=member, name="Benchmark run") for member in members]
    specs = catalog.MODELS
    keys = ("Team key 1", "Team key 2", "Own key")
    written = 0
    serial = 0
    for offset in range(0, count, BATCH):
        tasks = []
        for n in range(offset, min(count, offset + BATCH)):
            spec = specs[n % len(specs)]
            state = STATES[n % len(STATES)]
            created = now - timedelta(seconds=(n * 7919) % (DAYS * 86400 - 3600))
            per_second = bool(spec.durations)
            units = spec.default_duration if per_second else 1
            took = 40 + (n * 37) % 400
            tasks.append(
                Task(
                    user=members[n % len(members)],
                    run=runs[n % len(members)],
                    provider=spec.provider,
                    model=spec.model,
                    kind=spec.kind.value,
                    prompt=f"benchmark take {n}",
                    key_label=keys[n % len(keys)],
                    state=state,
                    created_at=created,
                    finished_at=None
                    if state == Task.State.RUNNING
                    else created + timedelta(seconds=took),
                    polls=1 + n % 9,
                    gateway_429s=1 if n % 50 == 0 else 0,
                    gateway_5xxs=1 if n % 70 == 0 else 0,
                    # Now and then no cost, or one far from the usual: reconciliation has rows.
                    gateway_cost=None if n % 97 == 0 else Decimal(units) / (20 if n % 89 else 5),
                    price_unit="second" if per_second else "task",
                    price_credits_per_unit=10,
                    price_units=units,
                    price_multiplier=Decimal(1),
                    credits_charged=10 * units,
                )
            )
        tasks = Task.objects.bulk_create(tasks)
        entries, events = [], []
        for task in tasks:
            serial += 1
            entries.append(
                LedgerEntry(
                    user=task.user,
                    kind=LedgerEntry.Kind.DEBIT,
                    amount=-task.credits_charged,
                    balance_after=0,
                    task=task,
                    idempotency_key=f"benchmark-debit-{serial}",
                    created_at=task.created_at,
                )
            )
            if task.state in REFUNDED:
                entries.append(
                    LedgerEntry(
                        user=task.user,
                        kind=LedgerEntry.Kind.REFUND,
                        amount=task.credits_charged,
                        balance_after=0,
                        task=task,
                        idempotency_key=f"benchmark-refund-{serial}",
                        created_at=task.finished_at,
                    )
                )
            if task.state == Task.State.SUCCEEDED and serial % 4:
                events.append(
                    TaskEvent(
                        task=task,
                        from_state=Task.State.RUNNING,
                        to_state=Task.State.FETCHING,
                        actor="poll",
                        created_at=task.finished_at - timedelta(seconds=5 + serial % 20),
                    )
                )
        LedgerEntry.objects.bulk_create(entries)
        TaskEvent.objects.bulk_create(events)
        written += len(tasks) + len(entries) + len(events)
    return written


class Command(BaseCommand):
    help = (
        "Time the insight dashboard over the last 30 days on a throwaway database filled with "
        "N tasks, their ledger entries and fetching events."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--tasks", type=int, default=100_000, help="Tasks to create (default 100,000)."
        )
        parser.add_argument("--repeat", type=int, default=5, help="Timed requests (default 5).")

    def handle(self, *args, tasks: int, repeat: int, **options) -> None:
        if not 1 <= tasks <= 1_000_000:
            raise CommandError("--tasks must be 1 to 1,000,000.")
        if not 1 <= repeat <= 1000:
            raise CommandError("--repeat must be 1 to 1,000.")
        with throwaway_database(self.stdout), measuring_settings("omniweb.urls"):
            self.measure(tasks, repeat)

    def measure(self, count: int, repeat: int) -> None:
        version = ".".join(str(part) for part in connection.get_database_version())
        self.stdout.write(f"Database: {connection.display_name} {version}")
        User = get_user_model()
        members = [
            User.objects.create(username=f"benchmark-{n}", display_name=f"Member {n}")
            for n in range(1, 9)
        ]
        staff = User.objects.create(username="benchmark-admin", is_staff=True)
        started = time.perf_counter()
        rows = fill(members, count)
        vacuum_analyze()
        elapsed = time.perf_counter() - started
        self.stdout.write(f"Created {count:,} tasks ({rows:,} rows) in {elapsed:.1f} s")

        client = Client()
        client.force_login(staff)
        today = timezone.localdate()
        url = "/insight/?" + urlencode(
            {
                "period": "custom",
                "from": (today - timedelta(days=DAYS)).isoformat(),
                "to": today.isoformat(),
            }
        )
        body, (median, high, queries) = time_page(client, url, repeat)
        if 'class="reconciliation-row"' not in body:
            raise CommandError("The dashboard listed no reconciliation rows; nothing was shown.")
        self.stdout.write(f"Each figure: {repeat} timed requests after 2 to warm up")
        self.stdout.write("")
        self.stdout.write(f"{'page':<12}{'tasks':>10}{'median ms':>11}{'p95 ms':>10}{'queries':>9}")
        self.stdout.write(f"{'dashboard':<12}{count:>10,}{median:>11.1f}{high:>10.1f}{queries:>9}")
        self.stdout.write("")
