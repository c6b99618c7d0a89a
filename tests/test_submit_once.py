"""A submit that a gateway may have taken is never sent again (RELIABILITY 36), and no value or
error while handling a task keeps it from its deadline (RELIABILITY 35, the engine's half).

The first tests fake the gateway at the transport with the documents' shapes; the last ones run
the engine against a real local gateway that creates the task and then answers badly, and count
how many tasks it created upstream.
"""

import contextlib
import json
import threading
import time
import uuid
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx
import pytest
import respx
from django.test import Client
from django.utils import timezone

from accounts import ledger
from accounts.models import LedgerEntry, ProviderKey
from generations import engine, jobs
from generations.models import Task
from generations.providers import GenerationRequest
from generations.services import recheck_now, submit_task

APIMART = "https://api.apimart.ai"
SUBMITTED = {"code": 200, "data": [{"status": "submitted", "task_id": "task_01ONCE"}]}


@pytest.fixture
def member(alice, carol):
    ledger.grant(alice, 500, by=carol, reason="welcome")
    return alice


@pytest.fixture
def key(member):
    key = ProviderKey(provider="apimart", label="Mine", owner=member)
    key.set_secret("sk-once-0000000000000001")
    key.save()
    return key


@pytest.fixture
def task(member, key):
    request = GenerationRequest("apimart", "Omni-Flash-Ext", "a fox in the snow", duration=4)
    return submit_task(member, request, key=key)[0]


def step(task: Task) -> Task:
    """One leased step, as a worker does it."""
    assert Task.objects.claim(task.pk, "test-worker", states=Task.ACTIVE_STATES)
    jobs.work_on(task.pk, "test-worker")
    task.refresh_from_db()
    return task


def refunds(task) -> int:
    return LedgerEntry.objects.filter(task=task, kind="refund").count()


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(500, json={"error": {"message": "internal error", "type": "server_error"}}),
        httpx.Response(504, text="<html>Gateway Timeout</html>"),
        httpx.Response(501, text=""),
        httpx.Response(200, text="<html>Welcome to nginx</html>"),
        httpx.Response(200, json={"code": 200, "data": []}),
    ],
    ids=["500", "504", "501", "200-html", "200-no-task-id"],
)
@respx.mock(base_url=APIMART)
def test_an_answer_that_may_hide_a_created_task_goes_to_review_and_is_never_resent(
    respx_mock, task, answer
):
    """RELIABILITY 36: 500, 504, other 5xx and unreadable 2xx answers go to review."""
    route = respx_mock.post("/v1/videos/generations").mock(return_value=answer)
    task = step(task)
    assert task.state == Task.State.NEEDS_REVIEW
    assert route.call_count == 1
    assert refunds(task) == 0
    # Every later chance to send it again sends nothing.
    jobs.submit(task.pk)
    Task.objects.filter(pk=task.pk).update(next_check_at=timezone.now())
    step(task)
    recheck_now(task)
    assert route.call_count == 1


@pytest.mark.parametrize("status", [429, 502, 503])
@respx.mock(base_url=APIMART)
def test_only_answers_that_prove_nothing_was_created_are_retried(respx_mock, task, status):
    """RELIABILITY 36: 429, 502 and 503 say the gateway made nothing; they are sent again."""
    respx_mock.post("/v1/videos/generations").mock(
        side_effect=[
            httpx.Response(status, headers={"Retry-After": "1"}),
            httpx.Response(200, json=SUBMITTED),
        ]
    )
    task = step(task)
    assert task.state == Task.State.QUEUED
    Task.objects.filter(pk=task.pk).update(next_check_at=timezone.now())
    assert step(task).state == Task.State.SUBMITTED


@respx.mock(base_url=APIMART)
def test_a_second_delivery_of_the_submit_job_waits_for_the_retry_time(respx_mock, task):
    """RELIABILITY 36: the submit job never sends a task that waits for its retry time."""
    route = respx_mock.post("/v1/videos/generations").respond(
        429, headers={"Retry-After": "30"}, json={"error": {"type": "rate_limit_error"}}
    )
    assert jobs.submit(task.pk) == "done"
    assert route.call_count == 1
    assert jobs.submit(task.pk) == "taken"  # the same job, delivered again
    assert route.call_count == 1


@respx.mock(base_url=APIMART)
def test_a_webhook_or_check_now_never_sends_a_queued_task(respx_mock, task):
    """RELIABILITY 36: "check now" hurries polls, never a send."""
    respx_mock.post("/v1/videos/generations").respond(
        429, headers={"Retry-After": "30"}, json={"error": {"type": "rate_limit_error"}}
    )
    step(task)
    waiting_until = Task.objects.get(pk=task.pk).next_check_at
    assert recheck_now(task) is False
    assert Task.objects.get(pk=task.pk).next_check_at == waiting_until
    assert not Task.objects.due(timezone.now()).filter(pk=task.pk).exists()


def test_the_deadline_is_checked_before_sending(task, member):
    """RELIABILITY 36: past its deadline a queued task is refunded and nothing is sent."""
    Task.objects.filter(pk=task.pk).update(deadline_at=timezone.now() - timedelta(seconds=1))
    with respx.mock(assert_all_called=False) as mock:
        task = step(task)
        assert not mock.calls
    assert task.state == Task.State.FAILED
    assert "Nothing more was sent" in task.message
    assert refunds(task) == 1


@respx.mock(base_url=APIMART)
def test_a_retry_that_would_land_past_the_deadline_is_not_scheduled(respx_mock, task):
    """RELIABILITY 36: no send goes out after the deadline."""
    Task.objects.filter(pk=task.pk).update(deadline_at=timezone.now() + timedelta(seconds=5))
    respx_mock.post("/v1/videos/generations").respond(
        429, headers={"Retry-After": "60"}, json={"error": {"type": "rate_limit_error"}}
    )
    task = step(task)
    assert task.state == Task.State.FAILED
    assert refunds(task) == 1


@respx.mock(base_url=APIMART)
def test_a_lost_answer_says_truthfully_that_nothing_checks_it_automatically(respx_mock, task):
    """RELIABILITY 36: the page does not promise checks that never happen."""
    respx_mock.post("/v1/videos/generations").mock(side_effect=httpx.ReadTimeout("slow"))
    task = step(task)
    assert task.state == Task.State.NEEDS_REVIEW
    assert "cannot look it up" in task.message
    assert "refunded by" in task.message
    assert "keeps checking" not in task.review_note
    assert "cannot check this task by itself" in task.review_note


@respx.mock(base_url=APIMART)
def test_an_error_while_handling_a_poll_still_lets_the_task_reach_review(
    respx_mock, task, monkeypatch
):
    """RELIABILITY 35: an exception in one poll's handling does not wedge the task."""
    respx_mock.post("/v1/videos/generations").respond(json=SUBMITTED)
    respx_mock.get("/v1/tasks/task_01ONCE").respond(
        json={"code": 200, "data": {"id": "task_01ONCE", "status": "processing"}}
    )
    task = step(task)
    assert task.state == Task.State.SUBMITTED

    def broken(*args, **kwargs):
        raise OverflowError("a number no timedelta can hold")

    monkeypatch.setattr(engine, "_apply", broken)
    Task.objects.filter(pk=task.pk).update(
        next_check_at=timezone.now(), deadline_at=timezone.now() - timedelta(seconds=1)
    )
    task = step(task)
    assert task.state == Task.State.NEEDS_REVIEW
    assert refunds(task) == 0


@respx.mock(base_url=APIMART)
def test_an_absurd_estimate_from_the_gateway_does_not_wedge_the_task(respx_mock, task):
    """RELIABILITY 35: `estimated_time: 10**30` neither raises nor stops the deadline."""
    respx_mock.post("/v1/videos/generations").respond(json=SUBMITTED)
    respx_mock.get("/v1/tasks/task_01ONCE").respond(
        json={
            "code": 200,
            "data": {"id": "task_01ONCE", "status": "processing", "estimated_time": 10**30},
        }
    )
    task = step(task)
    Task.objects.filter(pk=task.pk).update(
        next_check_at=timezone.now(), deadline_at=timezone.now() - timedelta(seconds=1)
    )
    task = step(task)
    assert task.state == Task.State.NEEDS_REVIEW
    assert task.polls == 1


# --- against a real local gateway ---------------------------------------------------------------


class Gateway:
    """A local gateway that creates a task for every submit and then answers as told:
    "500" (created, then an error page), "slow" (created, answering after the client gave up)
    or "html" (created, then a 200 with an HTML page). Status queries answer "processing"."""

    def __init__(self, mode: str, dialect: str):
        self.mode, self.dialect = mode, dialect
        self.created: list[str] = []
        self.callbacks: list[str] = []
        self.lock = threading.Lock()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output quiet
                return None

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with gateway.lock:
                    task_id = f"up-{len(gateway.created) + 1}"
                    gateway.created.append(task_id)
                    if body.get("webhook_url"):
                        gateway.callbacks.append(body["webhook_url"])
                if gateway.mode == "slow":
                    time.sleep(2.5)
                    self.answer(200, json.dumps(gateway.task(task_id)), "application/json")
                elif gateway.mode == "500":
                    self.answer(500, "<html><h1>Internal Server Error</h1></html>", "text/html")
                else:
                    self.answer(200, "<html>Welcome</html>", "text/html")

            def do_GET(self):
                task_id = self.path.rstrip("/").rsplit("/", 1)[-1]
                if task_id not in gateway.created:
                    self.answer(
                        404, json.dumps({"error": {"message": "not found"}}), "application/json"
                    )
                else:
                    self.answer(200, json.dumps(gateway.task(task_id)), "application/json")

            def answer(self, status: int, text: str, content_type: str):
                data = text.encode()
                # The client may have given up waiting; the task was created all the same.
                with contextlib.suppress(OSError):
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def task(self, task_id: str) -> dict:
        if self.dialect == "omniakey":
            return {"id": task_id, "object": "video.generation", "status": "processing"}
        return {"code": 200, "data": {"id": task_id, "status": "processing"}}

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def run_worker(seconds: float, task: Task, client: Client, gateway: Gateway) -> None:
    """What workers do for a while: the submit job (delivered twice), the dispatcher's leases,
    and the gateway's callbacks for the tasks it created."""
    deadline = time.monotonic() + seconds
    jobs.submit(task.pk)
    jobs.submit(task.pk)
    while time.monotonic() < deadline:
        for url in list(gateway.callbacks):
            path = urlsplit(url).path
            for task_id in gateway.created:
                client.post(
                    path,
                    json.dumps({"id": task_id, "status": "completed", "output": {"url": "x"}}),
                    content_type="application/json",
                )
        for lease in Task.objects.lease_due("test-dispatcher", limit=4, per_key=4):
            jobs.work_on(lease.pk, "test-dispatcher")
        jobs.submit(task.pk)
        time.sleep(0.2)


@pytest.mark.parametrize("mode", ["500", "slow", "html"])
@pytest.mark.parametrize("dialect", ["omniakey", "apimart"], ids=["webhooks", "no-webhooks"])
def test_a_gateway_that_created_the_task_gets_it_exactly_once(member, settings, mode, dialect):
    """RELIABILITY 36: against a local gateway that creates and then answers 500, answers after
    the client's timeout, or answers 200 with HTML: one upstream task, with and without
    webhooks."""
    settings.PUBLIC_URL = "https://studio.example.com"
    settings.GATEWAY_TIMEOUT_SECONDS = 1
    settings.GATEWAY_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.WEBHOOK_RATE_PER_MINUTE = 10_000
    gateway = Gateway(mode, dialect)
    try:
        key = ProviderKey(provider=dialect, label="Local", owner=member, base_url=gateway.base_url)
        key.set_secret("sk-local-gateway-0000001")
        key.save()
        model = "sora" if dialect == "omniakey" else "Omni-Flash-Ext"
        request = GenerationRequest(dialect, model, "a fox", duration=4)
        task, _ = submit_task(member, request, key=key)
        run_worker(4.0, task, Client(), gateway)
        task.refresh_from_db()
        assert len(gateway.created) == 1, gateway.created
        assert refunds(task) == 0
        if dialect == "omniakey":
            # The gateway's callback named its task id: confirmed under our key, adopted.
            assert task.provider_task_id == "up-1"
            assert task.state == Task.State.RUNNING
        else:
            assert task.state == Task.State.NEEDS_REVIEW
            assert task.provider_task_id == ""
    finally:
        gateway.close()


def test_a_callback_naming_an_unknown_task_id_is_not_adopted(member, settings):
    """RELIABILITY 36: a callback's id is believed only once the gateway confirms it."""
    settings.PUBLIC_URL = "https://studio.example.com"
    settings.GATEWAY_ALLOWED_HOSTS = ["127.0.0.1"]
    gateway = Gateway("500", "omniakey")
    try:
        key = ProviderKey(
            provider="omniakey", label="Local", owner=member, base_url=gateway.base_url
        )
        key.set_secret("sk-local-gateway-0000002")
        key.save()
        task, _ = submit_task(
            member, GenerationRequest("omniakey", "sora", "a fox", duration=4), key=key
        )
        jobs.submit(task.pk)
        task.refresh_from_db()
        assert task.state == Task.State.NEEDS_REVIEW
        engine.note_callback(task, {"id": f"forged-{uuid.uuid4().hex}", "status": "completed"})
        for lease in Task.objects.lease_due("test-dispatcher", limit=4, per_key=4):
            jobs.work_on(lease.pk, "test-dispatcher")
        task.refresh_from_db()
        assert task.state == Task.State.NEEDS_REVIEW
        assert task.provider_task_id == "" and task.callback_task_id == ""
    finally:
        gateway.close()
