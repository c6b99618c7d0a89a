"""How many debits per second the ledger takes, measured on a throwaway database.

The command creates its own database with Django's test-database machinery, migrates it, runs
the measurements there and drops it afterwards, so it never reads or writes real members, tasks
or entries. Each measurement releases N client threads together; every client calls
submit_task in a loop for the given time, either as a member of its own ("separate members")
or all as one member, whose row lock lets only one of its submits in at a time ("one member").
A baseline of bare `SELECT 1` round trips on the same threads shows what the machine and the
database can do at all, so the figures can be compared across machines. The ledger audit runs
at the end and the command fails if it finds anything. The job each submit would queue for the
worker is left out: these tasks exist only in the throwaway database.
"""

import argparse
import os
from collections.abc import Callable
from unittest import mock

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from django.test import override_settings

from accounts import ledger
from accounts.models import LedgerEntry, ProviderKey
from generations import services
from generations.providers import GenerationRequest
from generations.services import submit_task
from omniweb.benchmarking import run_clients, throwaway_database

REQUEST = GenerationRequest("apimart", "Omni-Flash-Ext", "benchmark", duration=4, resolution="720p")
# Enough for any run: a submit costs a few dozen credits and a client manages at most a few
# thousand per second. The balance column is a 32-bit integer.
BALANCE = 1_000_000_000


def client_counts(value: str) -> list[int]:
    try:
        counts = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or any(n < 1 or n > 64 for n in counts):
        raise argparse.ArgumentTypeError(
            f"{value!r}: give numbers of clients separated by commas, like 1,4,16, each 1 to 64."
        )
    return counts


class Command(BaseCommand):
    help = (
        "Measure debits per second at several client counts, for separate members and for one "
        "member, on a throwaway database; then audit the ledger."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--clients",
            type=client_counts,
            default=[1, 4, 16],
            help="Comma-separated numbers of concurrent clients, e.g. 1,4,16 (each 1-64).",
        )
        parser.add_argument(
            "--seconds",
            type=float,
            default=5.0,
            help="How long each measurement runs (default 5).",
        )

    def handle(self, *args, clients: list[int], seconds: float, **options) -> None:
        if not 0 < seconds <= 600:
            raise CommandError("--seconds must be above 0 and at most 600.")
        # A submit queues a job for the worker; no worker will ever see these tasks, and with
        # Redis the jobs would land in the real queue, so none is queued. The per-minute submit
        # limit would measure the limit, not the ledger, so it is lifted for the throwaway run.
        with (
            throwaway_database(self.stdout) as self.database,
            mock.patch.object(services, "enqueue_submit", lambda pk: None),
            override_settings(SUBMIT_RATE_PER_MINUTE=1_000_000_000),
        ):
            self.measure(clients, seconds)

    def measure(self, clients: list[int], seconds: float) -> None:
        version = ".".join(str(part) for part in connection.get_database_version())
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        self.stdout.write(f"Database: {connection.display_name} {version}")
        self.stdout.write(f"CPU cores available: {cores}")
        self.stdout.write(f"Each figure: {seconds:g} s of clients running together")
        if connection.vendor == "sqlite":
            self.stdout.write(
                "Note: SQLite lets one writer in at a time, so more clients cannot raise the "
                "debit rate; measure on PostgreSQL for capacity."
            )
        self.admin = get_user_model().objects.create(username="benchmark-admin")
        self.members = 0
        self.stdout.write("")
        header = f"{'clients':>7}  {'SELECT 1/s':>12}  {'debits/s, separate members':>27}"
        header += f"  {'debits/s, one member':>21}"
        self.stdout.write(header)
        submits = 0
        for count in clients:
            baseline, _ = self.run_clients([self.select_one] * count, seconds)
            separate, done = self.run_clients(
                [self.submitter(self.new_member()) for _ in range(count)], seconds
            )
            submits += done
            member = self.new_member()
            shared, done = self.run_clients([self.submitter(member)] * count, seconds)
            submits += done
            row = f"{count:>7}  {baseline:>12,.0f}  {separate:>27,.0f}  {shared:>21,.0f}"
            self.stdout.write(row)
        self.stdout.write("")

        debits = LedgerEntry.objects.filter(kind=LedgerEntry.Kind.DEBIT).count()
        if debits != submits:
            raise CommandError(f"{submits} submits succeeded but {debits} debits were written.")
        problems = ledger.audit()
        for problem in problems:
            self.stderr.write(problem)
        if problems:
            raise CommandError(f"Ledger audit failed: {len(problems)} problems.")
        entries = LedgerEntry.objects.count()
        self.stdout.write(self.style.SUCCESS(f"audit passed: {entries} entries checked"))

    def new_member(self) -> tuple:
        """A member with a large balance and a key of their own."""
        self.members += 1
        user = get_user_model().objects.create(username=f"benchmark-{self.members}")
        key = ProviderKey(provider=REQUEST.provider, label="Benchmark", owner=user)
        key.set_secret("sk-benchmark-0000")
        key.save()
        ledger.grant(user, BALANCE, by=self.admin, reason="benchmark")
        return user, key

    @staticmethod
    def select_one() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()

    @staticmethod
    def submitter(member: tuple) -> Callable[[], None]:
        user, key = member

        def submit() -> None:
            submit_task(user, REQUEST, key=key, actor="benchmark")

        return submit

    def run_clients(
        self, operations: list[Callable[[], None]], seconds: float
    ) -> tuple[float, int]:
        """Each operation in a loop on its own thread and database connection (see
        omniweb.benchmarking.run_clients)."""

        def prepare() -> None:
            # Every thread opens its own connection; make sure it is to the throwaway one.
            if connection.settings_dict["NAME"] != self.database:
                raise CommandError("A client would have used the real database.")
            connection.ensure_connection()  # connecting is not what is measured

        def finish() -> None:
            connection.close()  # this thread's own connection, looked up on this thread

        return run_clients(operations, seconds, prepare=prepare, finish=finish)
