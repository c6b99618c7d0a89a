"""Gateway calls under the outbound address policy and a wall-clock deadline.

Nothing is faked below the HTTP client: each test starts real TCP listeners on 127.0.0.1 that
record whether anything connected and what arrived, and calls them the way the task engine
does, through the shared client. Host names the tests invent are answered by swapping the
policy's resolver.
"""

import contextlib
import socket
import threading
import time
from collections.abc import Callable

import httpx
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.files.storage import FileSystemStorage
from django.urls import reverse

from accounts import ledger
from accounts.models import LedgerEntry, ProviderKey
from generations import jobs, outbound, providers
from generations.fetch import FetchFailed, fetch_result
from generations.models import Task
from generations.providers import Credentials, ErrorKind, GenerationRequest, ProviderError, omixa
from generations.services import submit_task
from generations.simulator.media import render_png
from omniweb.env import gateway_allowed_hosts
from tests.test_settings import run_manage

REQUEST = GenerationRequest("apimart", "Omni-Flash-Ext", "a fox in the snow", duration=4)
SUBMITTED = b'{"code": 200, "data": [{"status": "submitted", "task_id": "task_local_1"}]}'
SECRET = "sk-outbound-test-0042"


# --- listeners ---------------------------------------------------------------------------------


def answer(status: int = 200, body: bytes = SUBMITTED, **headers: str) -> Callable:
    def send(conn: socket.socket, listener: "Listener") -> None:
        lines = [f"HTTP/1.1 {status} Whatever", f"Content-Length: {len(body)}"]
        lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
        lines += ["Content-Type: application/json", "Connection: close", "", ""]
        conn.sendall("\r\n".join(lines).encode() + body)

    return send


def trickle(where: str, total: int = 40, every: float = 0.5) -> Callable:
    """Headers then one byte of body per `every` seconds; or the headers themselves so."""
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {total}\r\n\r\n"

    def send(conn: socket.socket, listener: "Listener") -> None:
        drip = (head.encode() if where == "headers" else b"") + b" " * total
        if where == "body":
            conn.sendall(head.encode())
        for byte in drip:
            conn.sendall(bytes([byte]))
            listener.sent += 1
            time.sleep(every)

    return send


def slow(seconds: float, body: bytes) -> Callable:
    def send(conn: socket.socket, listener: "Listener") -> None:
        time.sleep(seconds)
        answer(body=body)(conn, listener)

    return send


def endless(declared: bool) -> Callable:
    """Two megabytes of JSON-looking bytes, with or without saying so up front."""

    def send(conn: socket.socket, listener: "Listener") -> None:
        size = 2 * 1024 * 1024
        length = f"Content-Length: {size}\r\n" if declared else ""
        conn.sendall(f"HTTP/1.1 200 OK\r\n{length}Connection: close\r\n\r\n".encode())
        for _ in range(size // 65536):
            conn.sendall(b"[" * 65536)

    return send


class Listener:
    """A TCP server on 127.0.0.1, in a thread, that records every connection and every byte it
    receives, then answers with `reply(conn, listener)`."""

    def __init__(self, reply: Callable | None = None):
        self.reply = reply or answer()
        self.connections = 0
        self.received = b""
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def reached(self) -> bool:
        with self._lock:
            return bool(self.connections or self.received)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            # A client that hangs up early leaves what arrived: that is what is counted.
            with contextlib.suppress(OSError):
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                while len(body) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    body += chunk
                    data += chunk
            with self._lock:
                self.received += data
            if self._stop.is_set():
                return
            # The client may hang up part-way: the deadline or a cap did its work.
            with contextlib.suppress(OSError):
                self.reply(conn, self)

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


@pytest.fixture
def listen():
    started: list[Listener] = []

    def start(reply: Callable | None = None) -> Listener:
        listener = Listener(reply)
        started.append(listener)
        return listener

    yield start
    for listener in started:
        listener.close()


@pytest.fixture(autouse=True)
def policy(settings):
    """No allowlist, and the simulator on, as in the demo, but at no address of these tests."""
    settings.GATEWAY_ALLOWED_HOSTS = []
    settings.SIMULATOR_ENABLED = True
    settings.PUBLIC_URL = ""
    settings.GATEWAY_TIMEOUT_SECONDS = 10


@pytest.fixture
def resolver(monkeypatch):
    """Invented host names answer from `names`; every other name goes to the real resolver."""
    names: dict[str, list[str]] = {}
    real = outbound.resolve_host

    def resolve(host: str, port: int) -> list[str]:
        return names[host] if host in names else real(host, port)

    monkeypatch.setattr(outbound, "resolve_host", resolve)
    return names


def call(base_url: str, how: str = "submit", gateway: str = "apimart"):
    adapter = providers.get(gateway)
    key = Credentials(api_key=SECRET, base_url=base_url)
    if how == "submit":
        return adapter.submit(REQUEST, key)
    return adapter.status("task_local_1", key)


def refused(base_url: str, how: str = "submit") -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        call(base_url, how)
    return caught.value


# --- the address policy (RELIABILITY 27) -------------------------------------------------------

LOCAL_BASES = [
    "http://127.0.0.1:{port}",
    "http://[::ffff:127.0.0.1]:{port}",
    "http://2130706433:{port}",
    "http://0x7f.1:{port}",
    "http://localhost:{port}",
]


@pytest.mark.parametrize("how", ["submit", "status"])
@pytest.mark.parametrize("base", LOCAL_BASES)
def test_a_gateway_at_a_local_address_receives_nothing(listen, base, how):
    """RELIABILITY 27: a key's base URL at loopback, written as an address, an IPv4-mapped IPv6
    address, a decimal or hexadecimal number, or a name that resolves there, is refused before
    anything connects: a permanent error that says nothing was sent."""
    listener = listen()

    error = refused(base.format(port=listener.port), how)

    assert (error.kind, error.code, error.request_sent) == (
        ErrorKind.INVALID_REQUEST,
        "address_refused",
        False,
    )
    assert error.permanent
    assert "private or local network" in error.message
    assert "OMNIWEB_GATEWAY_ALLOWED_HOSTS" in error.message
    assert not listener.reached


def test_a_name_that_resolves_to_loopback_is_refused_where_it_connects(listen, resolver):
    """RELIABILITY 27: the check is made on the address the name resolves to when the
    connection is opened, so a public-looking name gets no further than a literal address."""
    listener = listen()
    resolver["gateway.example.com"] = ["127.0.0.1"]

    error = refused(f"http://gateway.example.com:{listener.port}")

    assert (error.code, error.request_sent) == ("address_refused", False)
    assert "gateway.example.com (127.0.0.1)" in error.message
    assert not listener.reached


def test_a_name_with_one_local_address_among_public_ones_is_refused(listen, resolver):
    """RELIABILITY 27: with round-robin answers one bad address is enough to refuse."""
    listener = listen()
    resolver["mixed.example.com"] = ["93.184.215.14", "127.0.0.1"]

    assert refused(f"http://mixed.example.com:{listener.port}").code == "address_refused"
    assert not listener.reached


def test_a_redirect_to_a_local_address_is_refused_and_not_followed(listen, resolver, settings):
    """RELIABILITY 27: a gateway the allowlist permits answers 302 to a forbidden address: the
    redirect is not followed, the second listener receives nothing, and the call ends in
    address_refused."""
    forbidden = listen()
    first = listen(answer(302, b"", Location=f"http://127.0.0.1:{forbidden.port}/v1/steal"))
    resolver["gateway.test"] = ["127.0.0.1"]
    settings.GATEWAY_ALLOWED_HOSTS = ["gateway.test"]

    error = refused(f"http://gateway.test:{first.port}")

    assert (error.kind, error.code) == (ErrorKind.INVALID_REQUEST, "address_refused")
    assert first.connections == 1
    assert not forbidden.reached


def test_a_redirect_to_an_allowed_address_is_an_error_too(listen, settings):
    """RELIABILITY 27: a gateway's redirects are never followed, wherever they lead."""
    second = listen()
    first = listen(answer(301, b"", Location=f"http://127.0.0.1:{second.port}/moved"))
    settings.GATEWAY_ALLOWED_HOSTS = ["127.0.0.1"]

    error = refused(f"http://127.0.0.1:{first.port}")

    assert (error.kind, error.code, error.permanent) == (
        ErrorKind.INVALID_REQUEST,
        "redirected",
        True,
    )
    assert "does not follow redirects" in error.message
    assert not second.reached


@pytest.mark.parametrize(
    "allowed, base",
    [
        ("127.0.0.1", "http://127.0.0.1:{port}"),
        ("127.0.0.0/8", "http://2130706433:{port}"),
        ("localhost", "http://localhost:{port}"),
    ],
)
def test_the_allowlist_lets_the_same_listener_be_reached(listen, settings, allowed, base):
    """RELIABILITY 27: refused without OMNIWEB_GATEWAY_ALLOWED_HOSTS; with an entry covering
    127.0.0.1, the very same listener is reached and answers."""
    listener = listen()
    url = base.format(port=listener.port)
    assert refused(url).code == "address_refused"
    assert not listener.reached

    settings.GATEWAY_ALLOWED_HOSTS = [allowed]
    status = call(url)

    assert status.provider_task_id == "task_local_1"
    assert listener.connections == 1
    assert listener.received.startswith(b"POST /v1/videos/generations HTTP/1.1")


def test_while_the_simulator_is_on_only_its_own_address_is_allowed(listen, settings):
    """RELIABILITY 27: the simulator's own address (OMNIWEB_PUBLIC_URL's host and port) is
    allowed while the simulator is on; another local port is not, nor is the site once the
    simulator is off."""
    site, other = listen(), listen()
    settings.PUBLIC_URL = f"http://localhost:{site.port}"

    assert call(f"http://127.0.0.1:{site.port}/simulator/apimart").provider_task_id
    assert call(f"http://localhost:{site.port}/simulator/apimart").provider_task_id
    assert refused(f"http://127.0.0.1:{other.port}/simulator/apimart").code == "address_refused"
    settings.SIMULATOR_ENABLED = False
    assert refused(f"http://localhost:{site.port}/simulator/apimart").code == "address_refused"

    assert site.connections == 2
    assert not other.reached


@pytest.mark.parametrize("base", ["ftp://127.0.0.1/x", "file:///etc/passwd"])
def test_only_http_and_https_are_called(base):
    """RELIABILITY 27: another scheme is refused before anything is sent."""
    error = refused(base)

    assert (error.code, error.request_sent) == ("address_refused", False)


def test_an_injected_client_gets_the_checks_it_can_have(settings):
    """RELIABILITY 27: a client passed in (tests fake HTTP with one) still has the scheme and a
    literal address checked before its transport sees anything. Host names are checked when a
    connection is opened, and a transport without sockets opens none."""
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        return httpx.Response(200, content=SUBMITTED)

    adapter = providers.get("apimart", client=httpx.Client(transport=httpx.MockTransport(handler)))

    with pytest.raises(ProviderError) as caught:
        adapter.submit(REQUEST, Credentials(api_key=SECRET, base_url="http://127.0.0.1:9"))
    assert caught.value.code == "address_refused"
    assert seen == []
    adapter.submit(REQUEST, Credentials(api_key=SECRET, base_url="https://gw.example.com"))
    assert seen == ["gw.example.com"]


# --- the task engine ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_queued_task_for_a_local_base_url_fails_refunded_once_and_sends_nothing(
    listen, alice, carol
):
    """RELIABILITY 27: the worker's submit is refused, the task fails as a permanent error with
    one refund, and the listener behind the key's base URL receives nothing."""
    listener = listen()
    ledger.grant(alice, 500, by=carol, reason="welcome")
    key = ProviderKey(
        provider="apimart", label="Local", owner=alice, base_url=f"http://127.0.0.1:{listener.port}"
    )
    key.set_secret(SECRET)
    key.save()
    task, _ = submit_task(alice, REQUEST, key=key)
    alice.refresh_from_db()
    charged = alice.credit_balance

    assert Task.objects.claim(task.pk, "test-worker", states=Task.ACTIVE_STATES)
    jobs.work_on(task.pk, "test-worker")
    assert jobs.submit(task.pk) != "done"  # a second delivery of the job changes nothing

    task.refresh_from_db()
    alice.refresh_from_db()
    assert task.state == Task.State.FAILED
    assert "private or local network" in task.message
    refunds = LedgerEntry.objects.filter(task=task, kind=LedgerEntry.Kind.REFUND)
    assert refunds.count() == 1
    assert alice.credit_balance == charged + refunds.get().amount == 500
    assert not listener.reached


# --- the key forms -----------------------------------------------------------------------------

REFUSED_BASES = [
    "http://127.0.0.1:8000",
    "http://localhost:8000/relay",
    "http://[::ffff:10.0.0.5]",
    "http://169.254.169.254/latest",
    "http://0.0.0.0:8000",
]


@pytest.mark.django_db
@pytest.mark.parametrize("base", REFUSED_BASES)
def test_the_members_key_form_refuses_a_local_base_url(client, alice, settings, base):
    """RELIABILITY 27: the Keys page refuses the base URL beside its field and names the
    setting that would allow it; once allowed, the same key saves."""
    client.force_login(alice)
    data = {"provider": "apimart", "label": "Mine", "secret": SECRET, "base_url": base}

    response = client.post(reverse("accounts-key-add"), data)

    assert response.status_code == 200
    errors = response.context["form"].errors["base_url"]
    assert "private or local network" in errors[0]
    assert "OMNIWEB_GATEWAY_ALLOWED_HOSTS" in errors[0]
    assert not ProviderKey.objects.exists()

    settings.GATEWAY_ALLOWED_HOSTS = ["127.0.0.0/8", "10.0.0.0/8", "169.254.169.254", "0.0.0.0"]
    assert client.post(reverse("accounts-key-add"), data).status_code == 302
    assert ProviderKey.objects.get(owner=alice).base_url == base


@pytest.mark.django_db
def test_editing_a_key_to_a_local_base_url_is_refused(client, alice):
    """RELIABILITY 27: the edit form checks the address as the add form does."""
    key = ProviderKey(provider="apimart", label="Mine", owner=alice)
    key.set_secret(SECRET)
    key.save()
    client.force_login(alice)

    response = client.post(
        reverse("accounts-key-edit", args=[key.code]),
        {"label": "Mine", "base_url": "http://127.0.0.1:6379"},
    )

    assert "OMNIWEB_GATEWAY_ALLOWED_HOSTS" in response.context["form"].errors["base_url"][0]
    key.refresh_from_db()
    assert key.base_url == ""


@pytest.mark.django_db
def test_the_admins_key_form_refuses_a_local_base_url(client, carol, settings):
    """RELIABILITY 27: the admin's key form refuses it too, naming the setting."""
    client.force_login(carol)
    data = {
        "provider": "omnivideo",
        "label": "Studio server",
        "owner": "",
        "base_url": "http://192.168.1.20:8080",
        "secret": SECRET,
    }

    response = client.post(reverse("admin:accounts_providerkey_add"), data)

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["base_url"]
    assert "OMNIWEB_GATEWAY_ALLOWED_HOSTS" in errors[0]
    assert not ProviderKey.objects.exists()

    settings.GATEWAY_ALLOWED_HOSTS = ["192.168.1.0/24"]
    assert client.post(reverse("admin:accounts_providerkey_add"), data).status_code == 302
    assert ProviderKey.objects.get().base_url == "http://192.168.1.20:8080"


# --- one policy for downloads too --------------------------------------------------------------


def test_result_downloads_follow_the_same_allowlist(listen, settings, tmp_path):
    """RELIABILITY 27: a self-hosted gateway's own result links are downloaded once its host is
    allowed, and refused before that."""
    png = render_png("a lighthouse at dusk", 64, 48)
    listener = listen(answer(body=png, Content_Type="image/png"))
    settings.DOWNLOAD_ALLOW_LOOPBACK = False
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path)
    storage = FileSystemStorage(location=tmp_path / "media")
    url = f"http://video.internal:{listener.port}/files/1.png"

    def resolve(host, port):
        return ["127.0.0.1"]

    with pytest.raises(FetchFailed):
        fetch_result(url, kind="image", storage=storage, resolve=resolve)
    assert not listener.reached

    settings.GATEWAY_ALLOWED_HOSTS = ["video.internal"]
    stored = fetch_result(url, kind="image", storage=storage, resolve=resolve)

    assert (stored.content_type, stored.width) == ("image/png", 64)


# --- the setting -------------------------------------------------------------------------------


def test_the_allowlist_setting_is_normalised_and_refuses_nonsense_loudly():
    """RELIABILITY 27: host names, addresses and CIDR ranges are read; anything else stops the
    start-up with the variable named."""
    assert gateway_allowed_hosts(["Video.LAN.", "10.0.0.5", "10.1.0.0/16", "[fd00::1]"]) == [
        "video.lan",
        "10.0.0.5/32",
        "10.1.0.0/16",
        "fd00::1/128",
    ]
    for bad in ["http://video.lan", "video.lan:8080", "*.lan", "10.0.0.1/8", "127.1", "a_b"]:
        with pytest.raises(ImproperlyConfigured, match="OMNIWEB_GATEWAY_ALLOWED_HOSTS"):
            gateway_allowed_hosts([bad])


def test_a_bad_allowlist_stops_the_start_up():
    """RELIABILITY 27: a typo in a deployment stops the process instead of allowing nothing."""
    result = run_manage(
        "check", env={"DEBUG": "1", "OMNIWEB_GATEWAY_ALLOWED_HOSTS": "video.lan:8080"}
    )

    assert result.returncode != 0
    assert "OMNIWEB_GATEWAY_ALLOWED_HOSTS: 'video.lan:8080'" in result.stderr


# --- the wall clock (RELIABILITY 29) -----------------------------------------------------------


@pytest.mark.parametrize("where", ["body", "headers"])
def test_a_trickling_gateway_is_cut_at_the_deadline(listen, settings, where):
    """RELIABILITY 29: a gateway that sends a byte every half second never lets a single read
    wait long, yet the whole request ends at GATEWAY_TIMEOUT_SECONDS (2 here), well before the
    twenty seconds the gateway would take, as a timeout the engine retries."""
    settings.GATEWAY_TIMEOUT_SECONDS = 2
    settings.GATEWAY_ALLOWED_HOSTS = ["127.0.0.1"]
    listener = listen(trickle(where))
    started = time.monotonic()

    error = refused(f"http://127.0.0.1:{listener.port}")

    elapsed = time.monotonic() - started
    assert 1.9 <= elapsed < 3.0, elapsed
    assert (error.kind, error.code) == (ErrorKind.TRANSIENT, "timeout")
    assert listener.sent < 10


def test_omixa_has_its_longer_budget_as_its_deadline(listen, settings, monkeypatch):
    """RELIABILITY 29: Omixa may hold a submit for its wait_seconds, so its deadline is
    GATEWAY_TIMEOUT_SECONDS plus that (2 + 2 here): an answer after 3 s still arrives, and a
    trickling Omixa is cut at 4 s."""
    monkeypatch.setattr(omixa, "WAIT_SECONDS", 2)
    settings.GATEWAY_TIMEOUT_SECONDS = 2
    settings.GATEWAY_ALLOWED_HOSTS = ["127.0.0.1"]
    adapter = providers.get("omixa")
    request = GenerationRequest("omixa", "sora", "a heron", duration=8, resolution="1280x720")
    held = listen(slow(3, b'{"id": "job_1", "status": "queued"}'))
    trickling = listen(trickle("body"))

    status = adapter.submit(request, Credentials(SECRET, f"http://127.0.0.1:{held.port}"))
    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        adapter.submit(request, Credentials(SECRET, f"http://127.0.0.1:{trickling.port}"))
    elapsed = time.monotonic() - started

    assert status.provider_task_id == "job_1"
    assert caught.value.code == "timeout"
    assert 3.9 <= elapsed < 5.0, elapsed


@pytest.mark.parametrize("declared", [True, False])
def test_an_answer_larger_than_a_megabyte_is_not_read(listen, settings, declared):
    """RELIABILITY 29: a gateway answer is small JSON; a larger one is cut at 1 MiB and
    retried, declared or not."""
    settings.GATEWAY_ALLOWED_HOSTS = ["127.0.0.1"]
    listener = listen(endless(declared))

    error = refused(f"http://127.0.0.1:{listener.port}", "status")

    assert (error.kind, error.code) == (ErrorKind.TRANSIENT, "answer_too_large")
