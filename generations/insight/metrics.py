"""`GET /metrics`: what Prometheus scrapes, and the few figures the engine records as it works.

Most figures are facts the database already keeps (tasks, the ledger, results, the 429 and 5xx
answers counted on each task), so they are read at scrape time with a fixed handful of
aggregate queries, whatever the number of tasks: nothing is lost when a process restarts and
every web process answers the same. Counters made this way (ledger sums, download bytes) only
go down if rows are deleted (a member deleting a task deletes its results); Prometheus reads
that as a counter reset, which `rate()` already tolerates.

Only latencies cannot be read back from the database: the engine times each gateway submit and
poll into two histograms. The engine runs in the queue's worker processes, not in the web
process that answers the scrape, so with PROMETHEUS_MULTIPROC_DIR set (the same empty folder
for the web server and the workers of one host, emptied before they start) every process
writes its observations there and the scrape adds them up. Without it the histograms hold what
the answering process itself observed, which is all a single-process setup or a test needs.

Access: a bearer token (OMNIWEB_METRICS_TOKEN) or an address allowlist
(OMNIWEB_METRICS_ALLOWED_ADDRESSES, matched against the client address omniweb/clientip.py
believes). With neither, the page does not exist (404). A wrong or missing token is told 401
when a token is configured; with only an allowlist, an address outside it gets 404.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Count, F, Min, Q, Sum
from django.http import Http404, HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from accounts.models import LedgerEntry
from generations import providers
from generations.models import Result, Task
from omniweb.clientip import client_address

# Gateway calls take from a few tens of milliseconds (a status query) to the whole request
# timeout (a gateway that holds the submit until the job is done); the last bucket is that
# timeout's default.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0)

# Not registered anywhere: in multiprocess mode they write to PROMETHEUS_MULTIPROC_DIR by
# themselves, otherwise the scrape's own registry collects them (exposition below).
SUBMIT_SECONDS = Histogram(
    "omniweb_gateway_submit_seconds",
    "Time a gateway took to answer a submit, whatever the answer.",
    ["gateway"],
    buckets=LATENCY_BUCKETS,
    registry=None,
)
POLL_SECONDS = Histogram(
    "omniweb_gateway_poll_seconds",
    "Time a gateway took to answer a status query (poll), whatever the answer.",
    ["gateway"],
    buckets=LATENCY_BUCKETS,
    registry=None,
)

# Tasks the engine should be handling now: the queue's depth.
DUE_STATES = (Task.State.QUEUED, Task.State.SUBMITTED, Task.State.RUNNING)


# --- what the engine calls -------------------------------------------------------------------


@contextmanager
def timed(histogram: Histogram, gateway: str) -> Iterator[None]:
    """Observe how long the block took, even when it raises (a refused call took time too)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        histogram.labels(gateway=gateway).observe(time.perf_counter() - started)


def timed_submit(gateway: str):
    return timed(SUBMIT_SECONDS, gateway)


def timed_poll(gateway: str):
    return timed(POLL_SECONDS, gateway)


def answer_counts(status_code: int | None) -> dict:
    """The task's fields to add to the UPDATE the engine makes anyway after a gateway's error
    answer: one more 429 or 5xx when that is what the gateway said. F() so the count adds to
    what the row holds, not to what this worker loaded."""
    if status_code == 429:
        return {"gateway_429s": F("gateway_429s") + 1}
    if status_code is not None and 500 <= status_code <= 599:
        return {"gateway_5xxs": F("gateway_5xxs") + 1}
    return {}


# --- what the scrape reads from the database -------------------------------------------------


class DatabaseCollector(Collector):
    """Figures read from the database at scrape time: four aggregate queries."""

    def collect(self):
        gateways = [value for value, _ in providers.choices()]
        states = [value for value, _ in Task.State.choices]

        tasks = GaugeMetricFamily(
            "omniweb_tasks", "Tasks by gateway and state.", labels=["gateway", "state"]
        )
        too_many = CounterMetricFamily(
            "omniweb_gateway_429",
            "429 (too many requests) answers from the gateway, over every task.",
            labels=["gateway"],
        )
        server_errors = CounterMetricFamily(
            "omniweb_gateway_5xx",
            "5xx (server error) answers from the gateway, over every task.",
            labels=["gateway"],
        )
        failed_downloads = CounterMetricFamily(
            "omniweb_download_failures",
            "Failed attempts to download a result (each failed try; retries included).",
            labels=["gateway"],
        )
        failed_download_tasks = GaugeMetricFamily(
            "omniweb_download_failed_tasks",
            "Tasks failed (and refunded) because their result could not be downloaded.",
            labels=["gateway"],
        )
        counts = {(g, s): 0 for g in gateways for s in states}
        figures = ("t429", "t5xx", "attempts", "failed")
        sums = {g: dict.fromkeys(figures, 0) for g in gateways}
        grouped = (
            Task.objects.order_by()
            .values("provider", "state")
            .annotate(
                n=Count("pk"),
                t429=Sum("gateway_429s"),
                t5xx=Sum("gateway_5xxs"),
                attempts=Sum("download_attempts"),
                failed=Count("pk", filter=Q(state=Task.State.FAILED, download_attempts__gt=0)),
            )
        )
        for row in grouped:
            counts[(row["provider"], row["state"])] = row["n"]
            # A gateway no longer in the catalog keeps its rows until they are gone.
            gateway = sums.setdefault(row["provider"], dict.fromkeys(figures, 0))
            for name in figures:
                gateway[name] += row[name] or 0
        for (gateway, state), n in sorted(counts.items()):
            tasks.add_metric([gateway, state], n)
        for gateway, values in sorted(sums.items()):
            too_many.add_metric([gateway], values["t429"])
            server_errors.add_metric([gateway], values["t5xx"])
            failed_downloads.add_metric([gateway], values["attempts"])
            failed_download_tasks.add_metric([gateway], values["failed"])
        yield from (tasks, too_many, server_errors, failed_downloads, failed_download_tasks)

        now = timezone.now()
        due = Task.objects.filter(state__in=DUE_STATES, next_check_at__lte=now).aggregate(
            depth=Count("pk"), oldest=Min("next_check_at")
        )
        oldest = due["oldest"]
        yield GaugeMetricFamily(
            "omniweb_queue_depth",
            "Tasks due now: queued, submitted or running with their next check in the past.",
            value=due["depth"],
        )
        yield GaugeMetricFamily(
            "omniweb_queue_oldest_due_seconds",
            "How long the task due the longest has been waiting for its check (0: none due).",
            value=max(0.0, (now - oldest).total_seconds()) if oldest else 0.0,
        )

        debit, refund = LedgerEntry.Kind.DEBIT, LedgerEntry.Kind.REFUND
        ledger = LedgerEntry.objects.aggregate(
            debit_credits=Sum("amount", filter=Q(kind=debit)),
            debit_entries=Count("pk", filter=Q(kind=debit)),
            refund_credits=Sum("amount", filter=Q(kind=refund)),
            refund_entries=Count("pk", filter=Q(kind=refund)),
        )
        credits = CounterMetricFamily(
            "omniweb_ledger_credits",
            "Credits moved by the ledger, by kind (debits counted as positive numbers).",
            labels=["kind"],
        )
        entries = CounterMetricFamily(
            "omniweb_ledger_entries", "Ledger entries, by kind.", labels=["kind"]
        )
        # A debit is stored as a negative amount (it takes from the balance).
        credits.add_metric(["debit"], abs(ledger["debit_credits"] or 0))
        credits.add_metric(["refund"], abs(ledger["refund_credits"] or 0))
        entries.add_metric(["debit"], ledger["debit_entries"])
        entries.add_metric(["refund"], ledger["refund_entries"])
        yield credits
        yield entries

        downloaded = CounterMetricFamily(
            "omniweb_download_bytes",
            "Bytes of results downloaded and stored, by gateway.",
            labels=["gateway"],
        )
        stored = {g: 0 for g in gateways}
        by_gateway = (
            Result.objects.order_by()
            .values("task__provider")
            .annotate(size=Sum("size"))
            .values_list("task__provider", "size")
        )
        for gateway, size in by_gateway:
            stored[gateway] = size or 0
        for gateway, size in sorted(stored.items()):
            downloaded.add_metric([gateway], size)
        yield downloaded


class _LatencyCollector(Collector):
    """This process's own histograms, for a scrape without multiprocess mode."""

    def collect(self):
        yield from SUBMIT_SECONDS.collect()
        yield from POLL_SECONDS.collect()


def exposition() -> bytes:
    """The text Prometheus reads: database figures plus the latency histograms."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector())
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_LatencyCollector())
    return generate_latest(registry)


# --- who may read it -------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _networks(entries: tuple[str, ...]) -> tuple:
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"OMNIWEB_METRICS_ALLOWED_ADDRESSES: {entry!r} is not an address or CIDR range"
            ) from exc
    return tuple(networks)


def _address_allowed(request, entries) -> bool:
    if not entries:
        return False
    address = ipaddress.ip_address(client_address(request))
    return any(address in network for network in _networks(tuple(entries)))


def _token_matches(request, token: str) -> bool:
    if not token:
        return False
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


@login_not_required
@require_GET
@never_cache
def metrics_view(request):
    token = settings.METRICS_TOKEN
    allowed = settings.METRICS_ALLOWED_ADDRESSES
    if not token and not allowed:
        raise Http404("There is nothing here.")  # off unless configured
    if not (_token_matches(request, token) or _address_allowed(request, allowed)):
        if not token:
            raise Http404("There is nothing here.")
        refused = HttpResponse("A valid bearer token is required.\n", status=401)
        refused["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return refused
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
