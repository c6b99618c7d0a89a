"""RELIABILITY 34: the simulator, shipped for the demo and the tests, cannot be used from outside.

Its create and status endpoints, in all four dialects, answer only the secrets of keys stored
on this site for that gateway's simulator; its result links are signed; its webhook calls only
this site's own webhook path."""

import contextlib
import json
import logging
import socket
import threading
import time
from io import StringIO

import pytest
from django.core.management import call_command

from accounts import crypto
from accounts.models import ProviderKey
from generations.simulator.models import SimulatedJob
from tests.helpers import wait_for

pytestmark = pytest.mark.django_db

SIM = "/simulator"
SECRET = "sk-sim-guard-0001"
BODIES = {
    "omniakey": {"model": "pika-1.5", "prompt": "a fox", "duration": 3},
    "omnivideo": {"model_id": "gpt-image-2", "prompt": "a teapot", "aspect_ratio": "1:1"},
    "apimart": {"model": "Omni-Flash-Ext", "prompt": "a girl dancing", "duration": 4},
    "omixa": {"model": "sora", "video_operation": "text_to_video", "prompt": "a desk"},
}
CREATE = {
    "omniakey": "/omniakey/v1/videos/generations",
    "omnivideo": "/omnivideo/api/v1/tasks/create",
    "apimart": "/apimart/v1/videos/generations",
    "omixa": "/omixa/api/v1/videos/jobs",
}
STATUS = {
    "omniakey": "/omniakey/v1/videos/generations/{}",
    "omnivideo": "/omnivideo/api/v1/tasks/{}",
    "apimart": "/apimart/v1/tasks/{}",
    "omixa": "/omixa/api/v1/videos/jobs/{}",
}
# Each gateway's own answer to a key it does not know.
REFUSED = {
    "omniakey": {"error": {"message": "Invalid API key", "type": "authentication_error"}},
    "omnivideo": {"code": 401, "msg": "无效的 API Key", "data": None},
    "apimart": {
        "code": 401,
        "error": {"code": 401, "type": "authentication_error", "message": "Invalid token"},
    },
    "omixa": {"error": {"code": "unauthorized", "message": "Invalid workspace key"}},
}
GATEWAYS = sorted(CREATE)


@pytest.fixture(autouse=True)
def quick_simulator(settings):
    settings.SIMULATOR_SECONDS = 0.3


def store_key(gateway: str, base_url: str, secret: str = SECRET) -> ProviderKey:
    key = ProviderKey(provider=gateway, label=f"Key for {gateway}", base_url=base_url)
    key.set_secret(secret)
    key.save()
    return key


def simulator_key(gateway: str, secret: str = SECRET) -> ProviderKey:
    return store_key(gateway, f"http://testserver{SIM}/{gateway}", secret)


def bearer(secret: str | None) -> dict:
    return {} if secret is None else {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


def create(client, gateway: str, secret: str | None, **fields):
    return client.post(
        SIM + CREATE[gateway],
        json.dumps({**BODIES[gateway], **fields}),
        content_type="application/json",
        **bearer(secret),
    )


def status(client, gateway: str, external_id: str, secret: str | None):
    return client.get(SIM + STATUS[gateway].format(external_id), **bearer(secret))


def a_job(gateway: str) -> SimulatedJob:
    return SimulatedJob.objects.create(
        gateway=gateway,
        external_id=f"guarded-{gateway}",
        model="m",
        prompt="someone else's prompt",
        is_image=True,
        width=64,
        height=64,
        run_seconds=0.1,
    )


# --- keys ----------------------------------------------------------------------------------------


def unknown_key(gateway):
    return "sk-made-up-0001"


def right_secret_wrong_gateway(gateway):
    other = GATEWAYS[(GATEWAYS.index(gateway) + 1) % len(GATEWAYS)]
    simulator_key(other)
    return SECRET


def right_secret_real_gateway_address(gateway):
    store_key(gateway, f"https://api.{gateway}.example.com/v1")
    return SECRET


def same_last_four_characters(gateway):
    simulator_key(gateway)
    return "sk-guessed-0001"


OUTSIDERS = {
    "no key": lambda gateway: None,
    "a key nobody stored": unknown_key,
    "another gateway's simulator key": right_secret_wrong_gateway,
    "a key for the real gateway": right_secret_real_gateway_address,
    "a key ending like a stored one": same_last_four_characters,
}


@pytest.mark.parametrize("gateway", GATEWAYS)
@pytest.mark.parametrize("outsider", sorted(OUTSIDERS))
def test_without_a_simulator_key_create_answers_401_and_creates_nothing(client, gateway, outsider):
    response = create(client, gateway, OUTSIDERS[outsider](gateway))
    assert response.status_code == 401
    assert response.json() == REFUSED[gateway]
    assert not SimulatedJob.objects.exists()


@pytest.mark.parametrize("gateway", GATEWAYS)
@pytest.mark.parametrize("outsider", sorted(OUTSIDERS))
def test_without_a_simulator_key_status_answers_401_and_shows_nothing(client, gateway, outsider):
    job = a_job(gateway)
    response = status(client, gateway, job.external_id, OUTSIDERS[outsider](gateway))
    assert response.status_code == 401
    assert response.json() == REFUSED[gateway]
    job.refresh_from_db()
    assert job.status_calls == 0


@pytest.mark.parametrize("gateway", GATEWAYS)
def test_a_simulator_key_of_this_site_creates_and_reads_a_job(client, gateway):
    simulator_key(gateway)
    created = create(client, gateway, SECRET)
    assert created.status_code == 200
    job = SimulatedJob.objects.get()
    assert (job.gateway, job.prompt) == (gateway, BODIES[gateway]["prompt"])
    assert status(client, gateway, job.external_id, SECRET).status_code == 200


def test_the_demo_keys_are_simulator_keys(client, carol):
    call_command("ensure_demo", "--site", "http://testserver", stdout=StringIO())
    for key in ProviderKey.objects.visible_to(carol):
        secret = crypto.decrypt(key.secret_ciphertext)
        assert create(client, key.provider, secret).status_code == 200, key.provider
    assert SimulatedJob.objects.count() == 4


def test_a_key_pointed_at_the_simulator_with_a_trailing_slash_still_counts(client):
    store_key("apimart", f"http://testserver{SIM}/apimart/")
    assert create(client, "apimart", SECRET).status_code == 200


# --- result links --------------------------------------------------------------------------------


def test_result_links_work_only_as_signed_by_the_status_answer(client):
    simulator_key("omnivideo")
    job = a_job("omnivideo")
    time.sleep(0.2)
    data = status(client, "omnivideo", job.external_id, SECRET).json()["data"]
    signed = data["image_url"].removeprefix("http://testserver")
    assert client.get(signed).status_code == 200
    bare = signed.split("?")[0]
    assert client.get(bare).status_code == 403
    assert client.get(bare + "?sig=" + "0" * 32).status_code == 403
    # A signature is for one file only.
    other = signed.replace(job.external_id, "guarded-other")
    assert client.get(other).status_code == 403


# --- the webhook sender --------------------------------------------------------------------------


class Listener:
    """A local TCP listener that records every connection made to it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.running = True
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def serve(self):
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with conn:
                conn.settimeout(1)
                # The client may already have gone away; the connection is what is counted.
                with contextlib.suppress(OSError):
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")

    def close(self):
        self.running = False
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def listener():
    listener = Listener()
    yield listener
    listener.close()


TOKEN = "t" * 43


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "public_url, webhook_url",
    [
        # Another address altogether, even one that looks like a webhook path.
        ("http://testserver", "{listener}/hooks/" + TOKEN),
        ("http://testserver", "{listener}/anything"),
        # This site's address is the listener's, but the path is not the webhook's.
        ("{listener}", "{listener}/accounts/logout/"),
        ("{listener}", "{listener}/hooks/" + TOKEN + "/../../admin/"),
        ("{listener}", "{listener}/hooks/" + TOKEN + "?next=/admin/"),
        # No public address: the simulator calls nobody back.
        ("", "{listener}/hooks/" + TOKEN),
    ],
)
def test_a_webhook_url_that_is_not_this_sites_webhook_receives_nothing(
    client, settings, listener, caplog, public_url, webhook_url
):
    settings.PUBLIC_URL = public_url.format(listener=listener.url)
    caplog.set_level(logging.WARNING, logger="generations.simulator.views")
    simulator_key("omniakey")
    url = webhook_url.format(listener=listener.url)
    assert create(client, "omniakey", SECRET, webhook_url=url).status_code == 200
    job = SimulatedJob.objects.get()

    def refused():
        return any("simulator_webhook_refused" in r.getMessage() for r in caplog.records)

    assert wait_for(refused, 10, 0.05), "the refusal was not logged"
    message = next(r.getMessage() for r in caplog.records if "webhook_refused" in r.getMessage())
    assert message == f"event=simulator_webhook_refused job={job.pk} host=127.0.0.1:{listener.port}"
    time.sleep(0.3)
    assert listener.connections == 0


@pytest.mark.django_db(transaction=True)
def test_this_sites_own_webhook_is_called(client, settings, listener):
    """The listener stands in for this site: with its address as the public one, it is called."""
    settings.PUBLIC_URL = listener.url
    simulator_key("omniakey")
    url = f"{listener.url}/hooks/{TOKEN}"
    assert create(client, "omniakey", SECRET, webhook_url=url).status_code == 200
    assert wait_for(lambda: listener.connections == 1, 10, 0.05)


def test_the_sender_accepts_only_the_webhook_path_under_the_public_address(settings):
    from generations.simulator.views import is_own_webhook

    settings.PUBLIC_URL = "https://studio.example.com"
    assert is_own_webhook(f"https://studio.example.com/hooks/{TOKEN}")
    for url in (
        f"https://studio.example.com.evil.example/hooks/{TOKEN}",
        f"https://studio.example.com@evil.example/hooks/{TOKEN}",
        f"http://studio.example.com/hooks/{TOKEN}",
        "https://studio.example.com/hooks/",
        f"https://studio.example.com/hooks/{TOKEN}#x",
        f"https://studio.example.com/hooks/a/{TOKEN}",
        f"https://studio.example.com/hooksx/{TOKEN}",
    ):
        assert not is_own_webhook(url), url
