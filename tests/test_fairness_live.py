"""One slow gateway cannot stall work for others, with a real worker (RELIABILITY 29).

alice has two keys on a local gateway that trickles its answers a byte at a time; bob has one
task on the simulator. bob's task must finish within 1.5 times the time it takes alone.
"""

import contextlib
import socket
import threading
import time

import pytest
from django.core.cache import cache

from accounts import ledger
from accounts.models import ProviderKey
from generations.models import Task
from generations.providers import GenerationRequest
from generations.services import submit_task
from tests.helpers import wait_for
from tests.test_engine_live import Worker

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SLOW_TASKS_PER_KEY = 6
ENV = {
    "OMNIWEB_GATEWAY_TIMEOUT_SECONDS": "4",
    "OMNIWEB_DISPATCH_CONCURRENCY": "8",
    "OMNIWEB_PER_KEY_CONCURRENCY": "4",
    "OMNIWEB_PER_MEMBER_CONCURRENCY": "4",
    "OMNIWEB_GATEWAY_ALLOWED_HOSTS": "127.0.0.1",
    "OMNIWEB_SUBMIT_RATE_PER_MINUTE": "100",
}


class TricklingGateway:
    """Answers every request with headers and then one byte every half second, for a minute."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        self.stopping = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        self.listener.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn):
        # The client gives up part-way, as it should: its hang-up ends the trickle.
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 120\r\n\r\n"
            )
            for _ in range(120):
                if self.stopping.wait(0.5):
                    break
                conn.sendall(b" ")

    def close(self):
        self.stopping.set()
        self.listener.close()


def make_key(owner, provider: str, base_url: str, secret: str) -> ProviderKey:
    key = ProviderKey(provider=provider, label=secret[-4:], owner=owner, base_url=base_url)
    key.set_secret(secret)
    key.save()
    return key


def seconds_to_finish(task: Task, limit: float) -> float:
    started = time.monotonic()
    done = wait_for(lambda: not Task.objects.get(pk=task.pk).is_active, seconds=limit, interval=0.1)
    assert done, f"{task} still {Task.objects.get(pk=task.pk).state} after {limit} s"
    assert Task.objects.get(pk=task.pk).state == Task.State.SUCCEEDED
    return time.monotonic() - started


def test_a_trickling_gateway_on_two_keys_does_not_slow_another_members_task(
    live_server, alice, bob, carol, settings, tmp_path
):
    """RELIABILITY 29: bob's task finishes within 1.5x its time alone while alice's slow
    gateway has every one of its tasks in flight."""
    settings.MEDIA_ROOT = tmp_path
    # Long enough that the poll interval's jitter (up to a second) is small beside it.
    settings.SIMULATOR_SECONDS = 3
    settings.SUBMIT_RATE_PER_MINUTE = 100
    cache.clear()
    for member in (alice, bob):
        ledger.grant(member, 100_000, by=carol, reason="tests")
    sim = make_key(bob, "apimart", f"{live_server.url}/simulator/apimart", "sk-fair-bob-0001")
    request = GenerationRequest("apimart", "Omni-Flash-Ext", "a heron", duration=4)
    slow = TricklingGateway()
    worker = Worker(tmp_path, **ENV)
    try:
        # A first task warms the worker up (imports, connections); then bob's time alone, the
        # slower of two runs, since polls land on a jittered schedule.
        seconds_to_finish(submit_task(bob, request, key=sim)[0], 60)
        alone = max(seconds_to_finish(submit_task(bob, request, key=sim)[0], 60) for _ in "ab")

        keys = [make_key(alice, "apimart", slow.base_url, f"sk-fair-alice-000{n}") for n in (1, 2)]
        for key in keys:
            for _ in range(SLOW_TASKS_PER_KEY):
                submit_task(alice, request, key=key)
        assert wait_for(lambda: slow.connections >= 4, seconds=20), "the slow calls never began"
        busy = seconds_to_finish(submit_task(bob, request, key=sim)[0], 120)
    finally:
        worker.stop()
        slow.close()
    print(f"bob's task: {alone:.2f} s alone, {busy:.2f} s beside the trickling gateway")
    assert busy <= 1.5 * alone, f"{busy:.2f} s beside the slow gateway, {alone:.2f} s alone"
