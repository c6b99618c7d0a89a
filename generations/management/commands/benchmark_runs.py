"""How much a run saves over single submits, and what its page costs, on a throwaway database.

A run of N tasks goes through the one submit path as one order: one lock of the member's row,
one transaction, one INSERT per table. The same N tasks submitted one at a time pay for N of
each. The command times both in the same run, alternating, through `services.submit_order`
(the Create form, a batch and Try again all end there), with the site's real broker: each
submit enqueues its jobs after commit as it would behind a server. It prints the time per
task of each and their ratio (the goal is 10x or more), then the number of queries the run
page makes at 10 and at N tasks: the page must cost the same however large the run.

The throwaway database is made with Django's test-database machinery and dropped afterwards
(see omniweb.benchmarking), so no real member, task or ledger entry is touched.
"""

import logging
import statistics
import time

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext, override_settings
from django.urls import reverse

from accounts import ledger
from accounts.models import ProviderKey, TeamQuota
from generations import services
from generations.management.commands.benchmark_gallery import measuring_settings
from generations.providers import GenerationRequest
from omniweb.benchmarking import throwaway_database, vacuum_analyze

REQUEST = GenerationRequest(
    provider="apimart",
    model="Omni-Flash-Ext",
    prompt="A red fox in the snow, cinematic",
    duration=6,
    resolution="720p",
    aspect_ratio="16:9",
)


class Command(BaseCommand):
    help = (
        "Time a run of N tasks against N single submits, and count the run page's queries at "
        "10 and N tasks, on a throwaway database."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tasks", type=int, default=100, help="Tasks per run (100).")
        parser.add_argument("--repeat", type=int, default=5, help="Timed rounds (default 5).")

    def handle(self, *args, tasks: int, repeat: int, **options) -> None:
        if not 10 <= tasks <= 1000:
            raise CommandError("--tasks must be 10 to 1,000.")
        if not 1 <= repeat <= 100:
            raise CommandError("--repeat must be 1 to 100.")
        # The per-minute submit limit would stop the singles; it has its own tests.
        with (
            throwaway_database(self.stdout),
            measuring_settings("omniweb.urls"),
            override_settings(SUBMIT_RATE_PER_MINUTE=1_000_000_000),
        ):
            self.measure(tasks, repeat)

    def measure(self, count: int, repeat: int) -> None:
        # django-q logs a line per enqueued job: thousands of lines of nothing here.
        logging.getLogger("django-q").setLevel(logging.WARNING)
        version = ".".join(str(part) for part in connection.get_database_version())
        self.stdout.write(f"Database: {connection.display_name} {version}")
        TeamQuota.objects.create(max_tasks_per_run=count)
        member = get_user_model().objects.create(username="benchmark", display_name="Bench")
        ledger.grant(member, 100 * count * (repeat + 2) * 2, by=None, reason="benchmark")
        key = ProviderKey(provider=REQUEST.provider, label="Benchmark", owner=member)
        key.set_secret("sk-benchmark-0001")
        key.save()
        item = services.OrderItem(REQUEST, key)

        def singles() -> float:
            start = time.perf_counter()
            for _ in range(count):
                services.submit_order(member, services.Order(items=(item,)))
            return time.perf_counter() - start

        def run() -> float:
            start = time.perf_counter()
            services.submit_order(member, services.Order(items=(item,) * count))
            return time.perf_counter() - start

        # One of each to warm up (connections, caches, compiled queries); not measured.
        singles()
        run()
        single_times, run_times = [], []
        for _ in range(repeat):
            vacuum_analyze()
            single_times.append(singles())
            vacuum_analyze()
            run_times.append(run())
        single_ms = statistics.median(single_times) * 1000 / count
        run_ms = statistics.median(run_times) * 1000 / count
        self.stdout.write(f"Submitting {count} tasks, median of {repeat} rounds:")
        self.stdout.write(f"{'how':<26}{'ms per task':>12}{'ms in all':>12}")
        self.stdout.write(
            f"{f'{count} single submits':<26}{single_ms:>12.2f}{single_ms * count:>12.1f}"
        )
        self.stdout.write(f"{f'one run of {count}':<26}{run_ms:>12.2f}{run_ms * count:>12.1f}")
        self.stdout.write(f"The run is {single_ms / run_ms:.1f}x faster per task (goal: 10x).")
        problems = ledger.audit()
        if problems:
            raise CommandError("The ledger audit failed: " + "; ".join(problems[:5]))
        self.stdout.write("Ledger audit: passed.")

        client = Client()
        client.force_login(member)
        self.stdout.write("")
        self.stdout.write(f"{'run page':<26}{'queries':>12}{'ms':>12}")
        for size in (10, count):
            outcome = services.submit_order(member, services.Order(items=(item,) * size))
            url = reverse("generations-run", args=[outcome.run.code])
            client.get(url, secure=True)  # the session's first read may refresh it
            with CaptureQueriesContext(connection) as queries:
                start = time.perf_counter()
                response = client.get(url, secure=True)
                elapsed = (time.perf_counter() - start) * 1000
            if response.status_code != 200:
                raise CommandError(f"GET {url} answered {response.status_code}.")
            self.stdout.write(f"{f'{size} tasks':<26}{len(queries):>12}{elapsed:>12.1f}")
