"""What the benchmark commands share: a database of their own, made and dropped around a run.

Django's test-database machinery creates it next to the configured one (a `benchmark-` file
for SQLite, a `test_<name>_benchmark` database for PostgreSQL), so neither real data nor a test
run's database is touched. DEBUG is off while it exists: the debug cursor would record and time
every query, and that would be measured too.
"""

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from django.conf import settings
from django.core.management.base import CommandError
from django.db import connection


def throwaway_name(settings_dict: dict) -> str:
    name = str(settings_dict["NAME"])
    if settings_dict["ENGINE"].endswith("sqlite3"):
        path = Path(name)
        return str(path.with_name(f"benchmark-{path.name}"))
    return f"test_{name}_benchmark"


@contextmanager
def throwaway_database(stdout) -> Iterator[str]:
    """Create the throwaway database, yield its name, and drop it whatever happens."""
    settings_dict = connection.settings_dict
    real_name = settings_dict["NAME"]
    test_settings = settings_dict.setdefault("TEST", {})
    previous_test_name = test_settings.get("NAME")
    test_settings["NAME"] = throwaway_name(settings_dict)
    debug = settings.DEBUG
    settings.DEBUG = False
    try:
        stdout.write(f"Creating the throwaway database {test_settings['NAME']} ...")
        connection.creation.create_test_db(
            verbosity=0, autoclobber=True, serialize=False, keepdb=False
        )
        try:
            if connection.settings_dict["NAME"] == real_name:
                raise CommandError("The throwaway database was not set up; nothing was run.")
            yield connection.settings_dict["NAME"]
        finally:
            connection.creation.destroy_test_db(real_name, verbosity=0)
            stdout.write("The throwaway database was dropped.")
    finally:
        settings.DEBUG = debug
        if previous_test_name is None:
            test_settings.pop("NAME", None)
        else:
            test_settings["NAME"] = previous_test_name


def vacuum_analyze() -> None:
    """Fresh planner statistics and no dead rows, as autovacuum would leave them on a running
    site. Run after filling tables and between repeats: a server with autovacuum off would
    otherwise plan from no statistics, and each repeat would also measure the last one's dead
    rows."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")


def child_database_url(database: str) -> str:
    """DATABASE_URL for a process the benchmark starts: the configured URL (user, host, port,
    options) naming the throwaway database `database` instead."""
    if connection.vendor == "sqlite":
        return f"sqlite:///{database}"
    url = urlsplit(settings.DATABASE_URL)
    return urlunsplit(url._replace(path="/" + quote(database)))


def run_clients(
    operations: list[Callable[[], None]],
    seconds: float,
    *,
    prepare: Callable[[], None] | None = None,
    finish: Callable[[], None] | None = None,
) -> tuple[float, int]:
    """Run each operation in a loop on a thread of its own for `seconds`, all released
    together; return (operations per second, operations done). `prepare` runs on each thread
    before the start (what it costs is not measured), `finish` on each thread at its end."""
    # The main thread waits at the barrier too, so the clock starts when the clients do.
    barrier = threading.Barrier(len(operations) + 1)
    done = [0] * len(operations)
    finished = [0.0] * len(operations)
    errors: list[BaseException] = []

    def client(index: int, operation: Callable[[], None]) -> None:
        try:
            if prepare is not None:
                prepare()
            barrier.wait()
            deadline = time.monotonic() + seconds
            count = 0
            while time.monotonic() < deadline:
                operation()
                count += 1
            done[index] = count
            finished[index] = time.monotonic()
        except BaseException as exc:  # reported below; the command then fails
            errors.append(exc)
            barrier.abort()
        finally:
            if finish is not None:
                finish()

    threads = [
        threading.Thread(target=client, args=(i, op), daemon=True)
        for i, op in enumerate(operations)
    ]
    for thread in threads:
        thread.start()
    # A client that fails before the start breaks the barrier; its error is raised below.
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait()
    started = time.monotonic()
    for thread in threads:
        thread.join(seconds + 120)
    if any(thread.is_alive() for thread in threads):
        raise CommandError("A client is stuck (a lock never released?); giving up.")
    if errors:
        raise CommandError(f"A client failed: {errors[0]!r}") from errors[0]
    return sum(done) / (max(finished) - started), sum(done)
