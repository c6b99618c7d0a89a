"""Outbound webhooks end to end over real HTTP: a receiver on a local port verifies every
signature with the Standard Webhooks library, fails each event's first attempt with 500 and
accepts the next. Task changes go through the services; the jobs the broker would have run
are run here, each twice (django-q2 delivers at least once), and the sweep is run with the
clock moved on instead of waiting for it."""

import importlib
import json
import threading
import uuid
from collections import Counter
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import transaction
from django.utils import timezone
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from accounts import ledger
from accounts.models import ProviderKey
from generations.api import webhooks
from generations.models import Task
from generations.providers import GenerationRequest
from generations.services import (
    Order,
    OrderItem,
    cancel_by_member,
    fail_task,
    retry_task,
    submit_order,
    transition,
)
from omniweb import broker

FOX = GenerationRequest("apimart", "Omni-Flash-Ext", "a fox in the snow", duration=4)


class Receiver:
    """A webhook receiver on 127.0.0.1 that checks signatures with the endpoint's secret."""

    def __init__(self) -> None:
        self.secret = ""
        self.lock = threading.Lock()
        self.attempts: Counter = Counter()
        self.accepted: list[tuple[str, dict]] = []  # (webhook-id, body), in arrival order
        self.bad_signatures = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                try:
                    payload = Webhook(receiver.secret).verify(body, dict(self.headers.items()))
                except WebhookVerificationError:
                    with receiver.lock:
                        receiver.bad_signatures += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                msg_id = self.headers["webhook-id"]
                with receiver.lock:
                    receiver.attempts[msg_id] += 1
                    first = receiver.attempts[msg_id] == 1
                    if not first:
                        receiver.accepted.append((msg_id, payload))
                self.send_response(500 if first else 204)
                self.end_headers()

            def log_message(self, *args) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/omniweb"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def events(self) -> list[tuple[str, str]]:
        return [(body["type"], body["data"]["id"]) for _, body in self.accepted]


@pytest.fixture
def receiver():
    running = Receiver()
    running.thread.start()
    yield running
    running.server.shutdown()
    running.server.server_close()


@pytest.fixture
def jobs(monkeypatch):
    """The jobs enqueued, to be run by `work`, as a worker of the cluster would."""
    enqueued = []
    monkeypatch.setattr(broker, "enqueue", lambda func, *args, **kw: enqueued.append((func, args)))
    return enqueued


def work(jobs, *, now=None) -> None:
    """Run every webhook job enqueued so far, each twice, then a sweep at `now`."""
    pending = [job for job in jobs if job[0].startswith("generations.api.webhooks.")]
    jobs.clear()
    for dotted, args in pending:
        module, name = dotted.rsplit(".", 1)
        job = getattr(importlib.import_module(module), name)
        job(*args)
        job(*args)
    webhooks.deliver_due(now=now)


def sweep_until_quiet(jobs, start) -> None:
    """Sweep with the clock moved past each retry until nothing is pending."""
    now = start
    for _ in range(10):
        work(jobs, now=now)
        if not webhooks.WebhookDelivery.objects.filter(state="pending").exists():
            return
        now += webhooks.RETRY_DELAYS[0]
    raise AssertionError("deliveries still pending after ten sweeps")


def test_every_event_arrives_once_in_order_and_verified(
    alice, carol, receiver, jobs, settings, tmp_path, django_capture_on_commit_callbacks
):
    settings.MEDIA_ROOT = tmp_path
    # Only an administrator's allowlist lets webhooks reach a local address.
    settings.GATEWAY_ALLOWED_HOSTS = ["127.0.0.1"]
    ledger.grant(alice, 5000, by=carol, reason="welcome")
    key = ProviderKey(provider="apimart", label="Mine", owner=alice)
    key.set_secret("sk-apimart-live-0001")
    key.save()
    endpoint = webhooks.register_endpoint(alice, receiver.url)
    receiver.secret = endpoint.secret
    assert webhooks.url_problem(receiver.url) is None

    def submit():
        items = (OrderItem(FOX, key),)
        return submit_order(alice, Order(items=items, token=uuid.uuid4())).tasks[0]

    first, other = submit(), submit()
    start = timezone.now()

    # A forced failure, then its retry succeeds in the same run; another task is canceled.
    with django_capture_on_commit_callbacks(execute=True):
        fail_task(first, actor="test", reason="The gateway refused the prompt.")
    work(jobs)
    sweep_until_quiet(jobs, start + timedelta(seconds=5))

    with django_capture_on_commit_callbacks(execute=True):
        again = retry_task(first)
    assert again.run_id == first.run_id
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        assert transition(
            again, Task.State.SUCCEEDED, from_states=[Task.State.QUEUED], actor="test"
        )
    with django_capture_on_commit_callbacks(execute=True):
        cancel_by_member(other)
    work(jobs)
    sweep_until_quiet(jobs, start + timedelta(seconds=20))

    run, other_run = str(first.run.code), str(other.run.code)
    assert receiver.bad_signatures == 0
    events = receiver.events()
    expected = [
        ("task.failed", str(first.code)),
        ("run.finished", run),
        ("task.succeeded", str(again.code)),
        ("run.finished", run),
        ("task.canceled", str(other.code)),
        ("run.finished", other_run),
    ]
    assert sorted(events) == sorted(expected)
    # In order per task (and so per run here); tasks of different runs may interleave.
    in_first_run = [
        event for event in events if event[1] in (run, str(first.code), str(again.code))
    ]
    assert in_first_run == expected[:4]
    assert [event for event in events if event[1] in (other_run, str(other.code))] == expected[4:]
    # Exactly one successful receipt per event, after exactly one failed attempt each,
    # although every job ran twice and sweeps ran over and over.
    accepted_ids = [msg_id for msg_id, _ in receiver.accepted]
    assert len(set(accepted_ids)) == len(accepted_ids) == 6
    assert set(receiver.attempts.values()) == {2}
    finished = [body["data"] for _, body in receiver.accepted if body["type"] == "run.finished"]
    assert finished[0]["counts"] == {"succeeded": 0, "failed": 1, "canceled": 0}
    assert finished[1]["counts"] == {"succeeded": 1, "failed": 1, "canceled": 0}
    log = endpoint.deliveries.all()
    assert {(d.state, d.attempts, d.last_status) for d in log} == {("delivered", 2, 204)}


def test_a_local_receiver_is_refused_without_the_allowlist(
    alice, receiver, settings, django_capture_on_commit_callbacks
):
    settings.GATEWAY_ALLOWED_HOSTS = ["127.0.0.1"]
    endpoint = webhooks.register_endpoint(alice, receiver.url)
    receiver.secret = endpoint.secret
    delivery = webhooks.send_test_event(endpoint)
    # The administrator takes the address off the list: the next request is checked again.
    settings.GATEWAY_ALLOWED_HOSTS = []

    assert webhooks.deliver(delivery.pk) == "retrying"

    delivery.refresh_from_db()
    assert receiver.attempts == Counter()
    assert "Only https://" in delivery.last_error
    # An https address on a name that leads to a local address is refused on connecting.
    endpoint.url = receiver.url.replace("http://127.0.0.1", "https://localhost")
    endpoint.save()
    later = timezone.now() + timedelta(seconds=5)
    assert webhooks.deliver(delivery.pk, now=later) == "retrying"
    delivery.refresh_from_db()
    assert "private or local network" in delivery.last_error
    assert receiver.attempts == Counter()
    assert json.loads(webhooks.body_of(delivery.payload))["type"] == "webhook.test"
