"""`/metrics`: who may read it, what it says about a fixture of known tasks and ledger entries,
the engine's latency histograms and 429/5xx counts against a gateway faked at the transport,
and the Grafana dashboard that reads it."""

import json
import os
import re
import subprocess
import sys
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import respx
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from accounts import ledger
from accounts.models import LedgerEntry, ProviderKey
from generations import jobs
from generations.insight import metrics
from generations.models import Result, Task
from generations.providers import GenerationRequest
from generations.services import submit_task

TOKEN = "scrape-token-7f3a9c"
APIMART = "https://api.apimart.ai"
GATEWAY_ID = "task_01KS1H7ZYSJWH1N779S2FSHTKA"
SUBMITTED = {"code": 200, "data": [{"status": "submitted", "task_id": GATEWAY_ID}]}
STILL_RUNNING = {"code": 200, "data": {"id": GATEWAY_ID, "status": "processing", "progress": 40}}
DASHBOARD = Path(django_settings.BASE_DIR) / "docs" / "grafana-omniweb.json"


@pytest.fixture
def token(settings):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_ADDRESSES = []
    return TOKEN


def scrape(client, **headers):
    return client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, **headers)


def samples(body: bytes) -> dict:
    """Every sample of the exposition: {(name, frozenset(labels)): value}."""
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: dict, name: str, **labels) -> float:
    return found[(name, frozenset(labels.items()))]


# --- who may read it --------------------------------------------------------------------------


@pytest.mark.django_db
def test_metrics_do_not_exist_until_a_token_or_an_address_is_configured(client, settings):
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_ADDRESSES = []
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 404


@pytest.mark.django_db
def test_metrics_refuse_a_missing_or_wrong_token(client, token):
    missing = client.get("/metrics")
    assert missing.status_code == 401
    assert missing["WWW-Authenticate"].startswith("Bearer")
    assert b"omniweb_" not in missing.content
    wrong = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}x"})
    assert wrong.status_code == 401
    other_scheme = client.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"})
    assert other_scheme.status_code == 401
    right = scrape(client)
    assert right.status_code == 200
    assert right["Content-Type"].startswith("text/plain")
    assert b"omniweb_tasks" in right.content


@pytest.mark.django_db
def test_a_signed_in_member_without_the_token_is_refused_too(client, token, alice):
    client.force_login(alice)
    assert client.get("/metrics").status_code == 401


@pytest.mark.django_db
def test_the_allowlist_matches_the_client_address_the_site_believes(client, settings):
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_ADDRESSES = ["192.0.2.10", "10.20.0.0/24"]
    settings.TRUSTED_PROXY_COUNT = 1
    proxy = {"REMOTE_ADDR": "10.0.0.2"}  # our own proxy: not itself on the list
    allowed = client.get("/metrics", HTTP_X_FORWARDED_FOR="10.20.0.7", **proxy)
    assert allowed.status_code == 200
    assert client.get("/metrics", HTTP_X_FORWARDED_FOR="192.0.2.10", **proxy).status_code == 200
    # Only the entry our proxy wrote is believed: an allowed address the client put in front
    # of its own proves nothing.
    forged = client.get("/metrics", HTTP_X_FORWARDED_FOR="10.20.0.7, 203.0.113.9", **proxy)
    assert forged.status_code == 404
    assert client.get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.9", **proxy).status_code == 404


@pytest.mark.django_db
def test_an_allowlist_entry_that_is_no_address_is_named_in_the_error(client, settings):
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_ADDRESSES = ["10.0.0.0/8", "metrics.internal"]
    with pytest.raises(ImproperlyConfigured, match="OMNIWEB_METRICS_ALLOWED_ADDRESSES.*metrics"):
        client.get("/metrics")


@pytest.mark.django_db
def test_with_both_configured_either_the_token_or_the_address_lets_a_scraper_in(client, settings):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_ADDRESSES = ["127.0.0.1"]
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="198.51.100.4").status_code == 401
    assert scrape(client, REMOTE_ADDR="198.51.100.4").status_code == 200


# --- what it says -----------------------------------------------------------------------------


def make_tasks(owner, key, rows) -> list[Task]:
    """Tasks with the given (provider, state, extra fields) rows."""
    now = timezone.now()
    return Task.objects.bulk_create(
        Task(
            user=owner,
            key=key,
            provider=provider,
            model="Omni-Flash-Ext",
            kind="video",
            prompt=f"metrics {n}",
            params={"duration": 4},
            key_label="Mine",
            state=state,
            price_unit="task",
            price_credits_per_unit=10,
            price_units=1,
            price_multiplier=Decimal(1),
            credits_charged=10,
            deadline_at=now + timedelta(hours=1),
            give_up_at=now + timedelta(days=2),
            **fields,
        )
        for n, (provider, state, fields) in enumerate(rows)
    )


@pytest.fixture
def known(alice, carol):
    """Seven tasks and a ledger whose figures are worked out by hand in the test."""
    key = ProviderKey(provider="apimart", label="Mine", owner=alice)
    key.set_secret("sk-metrics-secret-0001")
    key.save()
    now = timezone.now()
    tasks = make_tasks(
        alice,
        key,
        [
            # Due now: three tasks, the oldest due 120 s ago.
            ("apimart", "queued", {"next_check_at": now - timedelta(seconds=120)}),
            ("apimart", "running", {"next_check_at": now - timedelta(seconds=30)}),
            ("omixa", "submitted", {"next_check_at": now, "gateway_429s": 2}),
            # Not due: later, or in a state the queue does not hold.
            ("apimart", "running", {"next_check_at": now + timedelta(minutes=5)}),
            ("apimart", "needs_review", {"next_check_at": now - timedelta(hours=1)}),
            ("apimart", "succeeded", {"gateway_429s": 3, "gateway_5xxs": 1}),
            ("omixa", "failed", {"gateway_5xxs": 4, "download_attempts": 3}),
        ],
    )
    for position, size in enumerate([1_000, 2_500]):
        Result.objects.create(
            task=tasks[5], position=position, file=f"results/m{position}.mp4", size=size
        )
    ledger.grant(alice, 500, by=carol, reason="welcome")  # neither a debit nor a refund
    paid = [("debit", -10, tasks[5]), ("debit", -25, tasks[6]), ("refund", 10, tasks[6])]
    for n, (kind, amount, paid_for) in enumerate(paid):
        LedgerEntry.objects.create(
            user=alice,
            kind=kind,
            amount=amount,
            balance_after=500,
            task=paid_for,
            idempotency_key=f"metrics-fixture-{n}",
        )
    return tasks


@pytest.mark.django_db
def test_the_exposition_matches_a_fixture_of_known_tasks_and_ledger_entries(client, token, known):
    response = scrape(client)
    found = samples(response.content)

    assert value(found, "omniweb_tasks", gateway="apimart", state="running") == 2
    assert value(found, "omniweb_tasks", gateway="apimart", state="queued") == 1
    assert value(found, "omniweb_tasks", gateway="omixa", state="failed") == 1
    # A gateway with no tasks, and a state nobody is in, read 0 rather than vanish.
    assert value(found, "omniweb_tasks", gateway="omnivideo", state="queued") == 0
    assert value(found, "omniweb_tasks", gateway="apimart", state="canceled") == 0

    assert value(found, "omniweb_queue_depth") == 3
    assert 119 <= value(found, "omniweb_queue_oldest_due_seconds") <= 130

    assert value(found, "omniweb_ledger_credits_total", kind="debit") == 35
    assert value(found, "omniweb_ledger_entries_total", kind="debit") == 2
    assert value(found, "omniweb_ledger_credits_total", kind="refund") == 10
    assert value(found, "omniweb_ledger_entries_total", kind="refund") == 1

    assert value(found, "omniweb_gateway_429_total", gateway="apimart") == 3
    assert value(found, "omniweb_gateway_429_total", gateway="omixa") == 2
    assert value(found, "omniweb_gateway_5xx_total", gateway="apimart") == 1
    assert value(found, "omniweb_gateway_5xx_total", gateway="omixa") == 4
    assert value(found, "omniweb_gateway_429_total", gateway="omnivideo") == 0

    assert value(found, "omniweb_download_bytes_total", gateway="apimart") == 3_500
    assert value(found, "omniweb_download_bytes_total", gateway="omixa") == 0
    assert value(found, "omniweb_download_failures_total", gateway="omixa") == 3
    assert value(found, "omniweb_download_failed_tasks", gateway="omixa") == 1


@pytest.mark.django_db
def test_an_empty_site_reads_zero_everywhere(client, token):
    found = samples(scrape(client).content)
    assert value(found, "omniweb_queue_depth") == 0
    assert value(found, "omniweb_queue_oldest_due_seconds") == 0
    assert value(found, "omniweb_ledger_credits_total", kind="debit") == 0
    assert value(found, "omniweb_tasks", gateway="apimart", state="queued") == 0


@pytest.mark.django_db
def test_a_scrape_costs_the_same_few_queries_however_many_tasks(client, token, known, alice):
    with CaptureQueriesContext(connection) as small:
        scrape(client)
    make_tasks(alice, None, [("omniakey", "running", {}) for _ in range(40)])
    with CaptureQueriesContext(connection) as large:
        found = samples(scrape(client).content)
    assert value(found, "omniweb_tasks", gateway="omniakey", state="running") == 40
    assert len(large) == len(small) <= 4


# --- the engine -------------------------------------------------------------------------------


@pytest.fixture
def task(alice, carol):
    ledger.grant(alice, 500, by=carol, reason="welcome")
    key = ProviderKey(provider="apimart", label="Mine", owner=alice)
    key.set_secret("sk-metrics-secret-0002")
    key.save()
    request = GenerationRequest("apimart", "Omni-Flash-Ext", "a fox in the snow", duration=4)
    created, _ = submit_task(alice, request, key=key)
    return created


def step(task: Task) -> Task:
    """One leased step, as a worker does it."""
    assert Task.objects.claim(task.pk, "test-worker", states=Task.ACTIVE_STATES)
    jobs.work_on(task.pk, "test-worker")
    task.refresh_from_db()
    return task


def make_due(task: Task) -> None:
    Task.objects.filter(pk=task.pk).update(next_check_at=timezone.now())


def observations(client, name: str) -> float:
    """How many observations a histogram holds for APIMart (0 before the first)."""
    found = samples(scrape(client).content)
    return found.get((f"{name}_count", frozenset({("gateway", "apimart")})), 0)


@pytest.mark.django_db
def test_the_engine_counts_429s_and_5xx_answers_and_times_each_call(client, token, task):
    submits = observations(client, "omniweb_gateway_submit_seconds")
    polls = observations(client, "omniweb_gateway_poll_seconds")
    with respx.mock(base_url=APIMART) as gateway:
        submit = gateway.post("/v1/videos/generations")
        submit.respond(429, headers={"Retry-After": "1"}, json={"error": {"type": "rate_limit"}})
        task = step(task)
        assert (task.state, task.gateway_429s, task.gateway_5xxs) == ("queued", 1, 0)

        submit.respond(json=SUBMITTED)
        make_due(task)
        task = step(task)
        assert task.state == Task.State.SUBMITTED

        status = gateway.get(f"/v1/tasks/{GATEWAY_ID}")
        for answer in (502, 503, 429):
            status.respond(answer, text="<html>busy</html>")
            make_due(task)
            task = step(task)
        status.respond(json=STILL_RUNNING)
        make_due(task)
        task = step(task)

    assert task.state == Task.State.RUNNING  # none of the errors failed it
    assert (task.gateway_429s, task.gateway_5xxs) == (2, 2)
    assert observations(client, "omniweb_gateway_submit_seconds") == submits + 2
    assert observations(client, "omniweb_gateway_poll_seconds") == polls + 4
    found = samples(scrape(client).content)
    assert value(found, "omniweb_gateway_429_total", gateway="apimart") == 2
    assert value(found, "omniweb_gateway_5xx_total", gateway="apimart") == 2


@pytest.mark.django_db
def test_a_refused_submit_still_counts_its_5xx(client, token, task):
    with respx.mock(base_url=APIMART) as gateway:
        # A 500 does not prove nothing was made: the task goes to review, counted all the same.
        gateway.post("/v1/videos/generations").respond(500, text="Internal Server Error")
        task = step(task)
    assert task.state == Task.State.NEEDS_REVIEW
    assert (task.gateway_429s, task.gateway_5xxs) == (0, 1)


@pytest.mark.django_db
def test_a_worker_processs_latencies_reach_the_scrape(client, token, tmp_path, monkeypatch):
    """Multiprocess mode: a worker (its own process) observes a submit; the scrape, answered by
    another process, shows it."""
    worker = (
        "import django; django.setup()\n"
        "from generations.insight import metrics\n"
        "with metrics.timed_submit('omixa'):\n"
        "    pass\n"
        "with metrics.timed_poll('omixa'):\n"
        "    pass\n"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "omniweb.settings",
        "DEBUG": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }
    subprocess.run(
        [sys.executable, "-c", worker],
        cwd=django_settings.BASE_DIR,
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
    )
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    found = samples(scrape(client).content)
    gateway = frozenset({("gateway", "omixa")})
    assert found[("omniweb_gateway_submit_seconds_count", gateway)] == 1
    assert found[("omniweb_gateway_poll_seconds_count", gateway)] == 1
    assert value(found, "omniweb_queue_depth") == 0  # the database figures are there too


# --- the Grafana dashboard --------------------------------------------------------------------


def metric_names(expression: str) -> set[str]:
    return set(re.findall(r"\bomniweb_[a-z0-9_]+", expression))


@pytest.mark.django_db
def test_the_grafana_dashboard_only_uses_metrics_the_site_exposes(client, token, known):
    # The latency series exist once a gateway call was timed, as the engine times them.
    with metrics.timed_submit("apimart"), metrics.timed_poll("apimart"):
        time.sleep(0.001)  # a call that takes a moment, timed as the engine times one
    dashboard = json.loads(DASHBOARD.read_text())
    exposed = {name for name, _ in samples(scrape(client).content)}
    expressions = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    used = set().union(*(metric_names(e) for e in expressions))
    assert used, "the dashboard queries nothing"
    assert used <= exposed, used - exposed
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {"Tasks by state", "Queue depth", "Oldest due task"} <= titles
    assert any("histogram_quantile(0.95" in e for e in expressions)
