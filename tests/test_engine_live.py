"""The task engine end to end: a real `manage.py qcluster` process, gateways over real HTTP.

The simulator (served by the live server) speaks all four gateways' dialects; a small stub
gateway in APIMart's dialect lets a test hold a poll or a download open, kill the worker in the
middle of it, and count requests per task.
"""

import contextlib
import io
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import av
import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.utils import timezone
from PIL import Image

from accounts import ledger
from accounts.models import LedgerEntry, ProviderKey
from generations import engine, jobs
from generations.models import Result, Task
from generations.providers import GenerationRequest
from generations.services import submit_task
from generations.simulator.media import render_mp4
from tests.helpers import child_environment, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

# Short timings so the whole lifecycle fits in seconds; the start-up check still holds.
WORKER_ENV = {
    "OMNIWEB_POLL_CAP_SECONDS": "1",
    "OMNIWEB_ERROR_BACKOFF_CAP_SECONDS": "2",
    "OMNIWEB_GATEWAY_TIMEOUT_SECONDS": "5",
    "OMNIWEB_DOWNLOAD_SECONDS": "5",
    "OMNIWEB_LEASE_SECONDS": "25",
    "OMNIWEB_DISPATCH_SECONDS": "20",
    "OMNIWEB_DOWNLOAD_ALLOW_LOOPBACK": "1",
    # The stub gateways and the live server listen on loopback, as an administrator may allow.
    "OMNIWEB_GATEWAY_ALLOWED_HOSTS": "localhost,127.0.0.1",
}


class Worker:
    """A qcluster in its own process group, so SIGKILL reaches every process it started."""

    def __init__(self, media_root, **env):
        self.log = open(os.devnull, "w")  # noqa: SIM115  (closed in stop/kill)
        self.stderr_path = f"{media_root}/worker-{time.monotonic_ns()}.log"
        self.stderr = open(self.stderr_path, "w")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=settings.BASE_DIR,
            env=child_environment(MEDIA_ROOT=str(media_root), **{**WORKER_ENV, **env}),
            stdout=self.log,
            stderr=self.stderr,
            start_new_session=True,
        )

    def output(self) -> str:
        with open(self.stderr_path) as handle:
            return handle.read()

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.log.close()
        self.stderr.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            # The cluster's main process alone: it stops its workers and exits within a few
            # seconds. A SIGTERM to the whole group reaches the workers too, and the cluster
            # then waits out a 30 s timeout before it exits.
            os.kill(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
        # Whatever of the group is left (nothing, normally) goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.log.close()
        self.stderr.close()


@pytest.fixture
def workers(tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path
    started = []

    def start(**env) -> Worker:
        worker = Worker(tmp_path, **env)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def member(alice, carol):
    ledger.grant(alice, 100_000, by=carol, reason="tests")
    return alice


def make_key(owner, provider: str, base_url: str, secret: str = "sk-live-test-0001"):
    key = ProviderKey(provider=provider, label=provider, owner=owner, base_url=base_url)
    key.set_secret(secret)
    key.save()
    return key


@pytest.fixture(autouse=True)
def fresh_cache():
    """Batons and queued jobs of earlier tests (in the cache table or Redis) must not leak in."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


def wait_until_finished(tasks, seconds: float, kick: bool = False) -> dict[int, Task]:
    """Wait for every task to end. With `kick`, also do what the schedule does every minute:
    start a dispatcher where none holds the baton (a killed one's runs out in 30 s)."""
    pks = [t.pk for t in tasks]
    last_kick = 0.0

    def finished():
        nonlocal last_kick
        if kick and time.monotonic() - last_kick > 2:
            jobs.ensure_dispatchers()
            last_kick = time.monotonic()
        rows = list(Task.objects.filter(pk__in=pks))
        return rows if all(not t.is_active for t in rows) else None

    rows = wait_for(finished, seconds, interval=0.5)
    if rows is None:
        states = list(Task.objects.filter(pk__in=pks).values_list("pk", "state", "message"))
        pytest.fail(f"tasks still active after {seconds} s: {states}")
    return {t.pk: t for t in rows}


def refunds(task) -> int:
    return LedgerEntry.objects.filter(task=task, kind=LedgerEntry.Kind.REFUND).count()


# --- all four gateways through the simulator -------------------------------------------------


def test_every_gateway_ends_with_stored_media_or_one_refund(live_server, member, workers, settings):
    settings.SIMULATOR_SECONDS = 2
    # The simulator (in this process) calls back only this site's own webhook address.
    settings.PUBLIC_URL = live_server.url
    sim = f"{live_server.url}/simulator"
    keys = {gw: make_key(member, gw, f"{sim}/{gw}") for gw in ("omniakey", "apimart", "omixa")}
    keys["omnivideo"] = make_key(member, "omnivideo", f"{sim}/omnivideo")
    worker = workers(OMNIWEB_PUBLIC_URL=live_server.url)

    def submit(gateway, model, prompt, **fields):
        request = GenerationRequest(gateway, model, prompt, **fields)
        return submit_task(member, request, key=keys[gateway])[0]

    good = {
        "omniakey": submit("omniakey", "pika-1.5", "a red fox in snow", duration=3),
        "omnivideo": submit("omnivideo", "seedance-2", "waves on a pier"),
        "image": submit("omnivideo", "nano-banana-2", "a blue teapot", aspect_ratio="1:1"),
        "apimart": submit("apimart", "Omni-Flash-Ext", "a girl dancing", duration=4),
        "omixa": submit("omixa", "sora", "a product reveal", duration=4),
    }
    delayed = {
        "rate-limit": submit("apimart", "Omni-Flash-Ext", "rate-limit then a cat", duration=4),
        "server-error": submit("omixa", "sora", "server-error then a dog", duration=4),
        "malformed": submit("omniakey", "kling-1.5", "malformed then a bird", duration=3),
    }
    bad = {
        "fail": submit("omnivideo", "gpt-image-2", "fail this picture"),
        "expired": submit("apimart", "Omni-Flash-Ext", "expired link please", duration=4),
    }
    done = wait_until_finished([*good.values(), *delayed.values(), *bad.values()], 120)

    for name, task in {**good, **delayed}.items():
        task = done[task.pk]
        assert task.state == Task.State.SUCCEEDED, (name, task.message, worker.output()[-3000:])
        result = Result.objects.get(task=task)
        assert refunds(task) == 0
        data = result.file.read()
        if task.kind == "image":
            image = Image.open(io.BytesIO(data))
            assert (image.width, image.height) == (result.width, result.height) == (480, 480)
            assert result.content_type == "image/png"
        else:
            with av.open(io.BytesIO(data)) as container:
                stream = container.streams.video[0]
                seconds = float(stream.duration * stream.time_base)
                assert stream.codec_context.name == "h264"
                assert (stream.width, stream.height) == (result.width, result.height)
            assert result.content_type == "video/mp4"
            assert abs(seconds - result.duration) < 0.2
            if task.params.get("duration"):
                assert abs(result.duration - task.params["duration"]) < 0.3
        assert result.poster
    assert "gateway=omniakey" in worker.output()

    failed = done[bad["fail"].pk]
    assert failed.state == Task.State.FAILED and refunds(failed) == 1
    assert "模拟器" in failed.details  # the gateway's own words, as it wrote them
    expired = done[bad["expired"].pk]
    assert expired.state == Task.State.FAILED and refunds(expired) == 1
    assert "could not be saved" in expired.message and "403" in expired.message
    assert expired.gateway_cost is not None  # shown as lost in the cost report
    call_command("audit_ledger")


# --- a stub gateway that can hold requests open ----------------------------------------------


class Stub:
    """APIMart's dialect, with tasks that finish after `polls_to_finish` status requests."""

    def __init__(self, polls_to_finish: int = 2, delay: float = 0.0):
        self.polls_to_finish = polls_to_finish
        self.delay = delay
        self.lock = threading.Lock()
        self.created = 0
        self.polls = defaultdict(list)  # task id -> request start times
        self.in_flight = defaultdict(int)
        self.max_in_flight = defaultdict(int)
        self.downloads = defaultdict(int)
        self.hold_polls = threading.Event()
        self.hold_downloads = threading.Event()
        self.release = threading.Event()
        self.held = threading.Event()
        self.video = render_mp4("stub", 1, 64, 36)
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                """Quiet: the stub's request lines would bury the test's output."""

            def reply(self, body: bytes, content_type="application/json", status=200):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with stub.lock:
                    stub.created += 1
                    task_id = f"task_stub_{stub.created}"
                answer = {"code": 200, "data": [{"status": "submitted", "task_id": task_id}]}
                self.reply(json.dumps(answer).encode())

            def do_GET(self):
                if self.path.startswith("/files/"):
                    return self.file()
                task_id = self.path.rsplit("/", 1)[1]
                with stub.lock:
                    stub.polls[task_id].append(time.monotonic())
                    stub.in_flight[task_id] += 1
                    stub.max_in_flight[task_id] = max(
                        stub.max_in_flight[task_id], stub.in_flight[task_id]
                    )
                    count = len(stub.polls[task_id])
                try:
                    if stub.hold_polls.is_set():
                        stub.held.set()
                        stub.release.wait(60)
                    time.sleep(stub.delay)
                    data = {"id": task_id, "status": "processing", "progress": 50}
                    if count >= stub.polls_to_finish:
                        url = f"http://127.0.0.1:{stub.port}/files/{task_id}.mp4"
                        data.update(
                            status="completed",
                            progress=100,
                            result={"videos": [{"url": [url], "expires_at": 4102444800}]},
                        )
                    self.reply(json.dumps({"code": 200, "data": data}).encode())
                finally:
                    with stub.lock:
                        stub.in_flight[task_id] -= 1

            def file(self):
                with stub.lock:
                    stub.downloads[self.path] += 1
                if stub.hold_downloads.is_set():
                    stub.held.set()
                    stub.release.wait(60)
                self.reply(stub.video, content_type="video/mp4")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # A killed worker drops its connections mid-answer; that is the point, not an error.
        self.server.handle_error = lambda request, address: None
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    gateway = Stub()
    yield gateway
    gateway.close()


def submit_to_stub(member, stub, count=1, key=None):
    key = key or make_key(member, "apimart", stub.url)
    request = GenerationRequest("apimart", "Omni-Flash-Ext", "a stub video", duration=4)
    return [submit_task(member, request, key=key)[0] for _ in range(count)]


@pytest.mark.parametrize("where", ["poll", "download"])
def test_a_worker_killed_mid_job_loses_nothing(member, workers, stub, where):
    (task,) = submit_to_stub(member, stub)
    charged = member.__class__.objects.get(pk=member.pk).credit_balance
    (stub.hold_polls if where == "poll" else stub.hold_downloads).set()
    first = workers()
    assert stub.held.wait(60), first.output()[-3000:]
    first.kill()  # SIGKILL with the request open: no cleanup runs
    task.refresh_from_db()
    assert task.lease_owner  # the dead worker's lease is still on it
    stub.hold_polls.clear()
    stub.hold_downloads.clear()
    stub.release.set()

    workers()  # takes over once the dead worker's lease runs out
    (task,) = wait_until_finished([task], 90, kick=True).values()
    assert task.state == Task.State.SUCCEEDED, task.message
    assert Result.objects.filter(task=task).count() == 1
    assert LedgerEntry.objects.filter(task=task).count() == 1  # the debit, nothing else
    assert member.__class__.objects.get(pk=member.pk).credit_balance == charged
    assert stub.created == 1  # never submitted twice
    call_command("audit_ledger")


def test_a_webhook_gets_the_task_checked_within_seconds(live_server, member, workers, stub):
    (task,) = submit_to_stub(member, stub)
    stub.polls_to_finish = 1000
    workers(OMNIWEB_POLL_CAP_SECONDS="120")
    assert wait_for(lambda: Task.objects.filter(pk=task.pk, state="running").exists(), 30)
    token = "w" * 43
    Task.objects.filter(pk=task.pk).update(
        callback_token_hash=engine.callback_token_hash(token),
        next_check_at=timezone.now() + timedelta(minutes=10),  # nothing due for a while
    )
    task.refresh_from_db()
    time.sleep(1)  # a poll already in flight has come back
    polls_before = len(stub.polls[task.provider_task_id])

    import httpx

    sent = time.monotonic()
    assert httpx.post(f"{live_server.url}/hooks/{token}", json={}).status_code == 204
    assert wait_for(lambda: len(stub.polls[task.provider_task_id]) > polls_before, 10)
    latency = stub.polls[task.provider_task_id][polls_before] - sent
    print(f"webhook to poll: {latency:.2f} s")
    assert latency < 3


@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL's row locks")
def test_two_clusters_never_poll_one_task_twice_at_once(member, workers, settings):
    settings.SUBMIT_RATE_PER_MINUTE = 1_000  # 200 tasks at once; the limit has its own tests
    stub = Stub(polls_to_finish=4, delay=0.05)
    try:
        key = make_key(member, "apimart", stub.url)
        # Polling is under test here, not the key's slots (tests/test_key_slots*.py): its
        # highest limit lets half the tasks be at the gateway at once.
        ProviderKey.objects.filter(pk=key.pk).update(max_in_flight=100)
        tasks = submit_to_stub(member, stub, count=200, key=key)
        env = {
            "OMNIWEB_WORKERS": "1",
            "OMNIWEB_DISPATCHERS": "2",
            "OMNIWEB_PER_KEY_CONCURRENCY": "8",
            "OMNIWEB_PER_MEMBER_CONCURRENCY": "8",  # one member's 200 tasks, on purpose
        }
        first, second = workers(**env), workers(**env)
        done = wait_until_finished(tasks, 240)
        assert all(t.state == Task.State.SUCCEEDED for t in done.values())
        assert stub.created == 200
        assert max(stub.max_in_flight.values()) == 1
        # Polls of one task never come closer together than a fraction of a second.
        gaps = [b - a for times in stub.polls.values() for a, b in itertools.pairwise(times)]
        assert min(gaps) > 0.05
        assert all(len(times) == 4 for times in stub.polls.values())
        assert Result.objects.count() == 200
        assert LedgerEntry.objects.filter(kind="refund").count() == 0
        both = [w.output().count("event=dispatch_run") for w in (first, second)]
        print(f"dispatcher runs per cluster: {both}")
    finally:
        stub.close()
    call_command("audit_ledger")
