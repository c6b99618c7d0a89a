"""Outbound webhooks: which endpoints get which events, what they carry, how they are signed,
retried, ordered and given up, and the member's endpoint pages. Receivers are faked at the
HTTP transport; tests/test_webhooks_out_live.py runs a real one."""

import json
import uuid
from datetime import timedelta

import httpx
import pytest
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from accounts import ledger
from accounts.models import ApiToken, ProviderKey
from generations import outbound
from generations.api import webhooks
from generations.api.webhooks import WebhookDelivery, WebhookEndpoint
from generations.models import Result, Task
from generations.providers import GenerationRequest
from generations.services import (
    Order,
    OrderItem,
    cancel_by_member,
    fail_task,
    submit_order,
    transition,
)
from omniweb import broker

FOX = GenerationRequest("apimart", "Omni-Flash-Ext", "a fox in the snow", duration=4)
HOOK = "https://hooks.example.com/omniweb"
# What the fake resolver answers; real lookups never happen in these tests.
ADDRESSES = {
    "hooks.example.com": ["93.184.216.34"],
    "team.example.com": ["93.184.216.35"],
    "intranet.example.com": ["10.1.2.3"],
}


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.PUBLIC_URL = "https://studio.example.com"


@pytest.fixture(autouse=True)
def resolver(monkeypatch):
    def resolve(host, port):
        if host not in ADDRESSES:
            raise OSError("no such host")
        return ADDRESSES[host]

    monkeypatch.setattr(outbound, "resolve_host", resolve)


@pytest.fixture(autouse=True)
def no_broker(monkeypatch):
    """Jobs enqueued, as (function, args), instead of sent to a broker."""
    jobs = []
    monkeypatch.setattr(broker, "enqueue", lambda func, *args, **kw: jobs.append((func, args)))
    return jobs


@pytest.fixture
def keys(alice, bob, carol):
    made = {}
    for user in (alice, bob):
        ledger.grant(user, 5000, by=carol, reason="welcome")
        key = ProviderKey(provider="apimart", label="Mine", owner=user)
        key.set_secret(f"sk-apimart-{user.username}-0001")
        key.save()
        made[user.username] = key
    return made


def task_of(user, keys, request=FOX) -> Task:
    items = (OrderItem(request, keys[user.username]),)
    return submit_order(user, Order(items=items, token=uuid.uuid4())).tasks[0]


def endpoint_of(user, url=HOOK) -> WebhookEndpoint:
    if user is None:
        endpoint = WebhookEndpoint(url=url, description="team")
        endpoint.set_new_secret()
        endpoint.save()
        return endpoint
    return webhooks.register_endpoint(user, url)


def succeed(task: Task) -> None:
    Result.objects.create(
        task=task, file=f"results/{task.code}.mp4", content_type="video/mp4", size=40
    )
    with transaction.atomic():
        assert transition(task, Task.State.SUCCEEDED, from_states=[Task.State.QUEUED], actor="test")


class Receiver:
    """A fake receiver at the transport: answers from `statuses` in turn (then the last one),
    and keeps every request it got."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses) or [200]
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return httpx.Response(status, text="ok")

    @property
    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self))

    def bodies(self) -> list[dict]:
        return [json.loads(request.content) for request in self.requests]


def deliveries(endpoint) -> list[WebhookDelivery]:
    return list(endpoint.deliveries.order_by("id"))


# --- which events are recorded for whom --------------------------------------------------------


def test_an_ended_task_is_recorded_for_its_owner_and_the_team_only(alice, bob, keys):
    mine, theirs, team = endpoint_of(alice), endpoint_of(bob), endpoint_of(None)
    task = task_of(alice, keys)

    fail_task(task, actor="test", reason="The gateway refused the prompt.")

    expected = ["task.failed", "run.finished"]
    assert [d.event_type for d in deliveries(mine)] == expected
    assert [d.event_type for d in deliveries(team)] == expected
    assert deliveries(theirs) == []
    assert all(d.task_id == task.pk and d.state == "pending" for d in deliveries(mine))


def test_a_team_endpoint_gets_every_members_events(alice, bob, keys):
    team = endpoint_of(None)
    alices, bobs = task_of(alice, keys), task_of(bob, keys)

    fail_task(alices, actor="test", reason="Refused.")
    cancel_by_member(bobs)

    got = [(d.event_type, d.payload["data"]["id"]) for d in deliveries(team)]
    assert ("task.failed", str(alices.code)) in got
    assert ("task.canceled", str(bobs.code)) in got
    assert [kind for kind, _ in got].count("run.finished") == 2


def test_a_member_without_endpoints_costs_one_query_and_no_rows(alice, keys):
    task = task_of(alice, keys)

    with CaptureQueriesContext(connection) as queries:
        assert webhooks.record_task_event(task, Task.State.FAILED) == []
    assert len(queries) == 1
    fail_task(task, actor="test", reason="Refused.")
    assert not WebhookDelivery.objects.exists()


def test_disabled_endpoints_and_other_states_record_nothing(alice, keys):
    endpoint = endpoint_of(alice)
    endpoint.disable("Disabled by you.")
    task = task_of(alice, keys)

    with transaction.atomic():
        transition(task, Task.State.SUBMITTED, from_states=[Task.State.QUEUED], actor="test")
    fail_task(task, actor="test", reason="Refused.")

    assert not WebhookDelivery.objects.exists()


def test_a_run_finishes_only_when_its_last_active_task_ends(alice, keys):
    endpoint = endpoint_of(alice)
    items = (OrderItem(FOX, keys["alice"]), OrderItem(FOX, keys["alice"]))
    first, second = submit_order(alice, Order(items=items, token=uuid.uuid4())).tasks

    fail_task(first, actor="test", reason="Refused.")
    assert [d.event_type for d in deliveries(endpoint)] == ["task.failed"]
    succeed(second)

    events = [d.event_type for d in deliveries(endpoint)]
    assert events == ["task.failed", "task.succeeded", "run.finished"]
    run = deliveries(endpoint)[-1].payload["data"]
    assert run["object"] == "run" and run["id"] == str(first.run.code)
    assert run["counts"] == {"succeeded": 1, "failed": 1, "canceled": 0}


def test_the_events_are_sent_after_commit(
    alice, keys, no_broker, django_capture_on_commit_callbacks
):
    endpoint_of(alice)
    task = task_of(alice, keys)
    no_broker.clear()

    with django_capture_on_commit_callbacks(execute=True):
        fail_task(task, actor="test", reason="Refused.")

    pks = list(WebhookDelivery.objects.order_by("id").values_list("pk", flat=True))
    assert no_broker == [("generations.api.webhooks.deliver", (pk,)) for pk in pks]


# --- the payload -------------------------------------------------------------------------------


def token(user) -> str:
    return ApiToken.issue(user, name="reader", scope="read", days=1)[1]


def test_a_succeeded_task_carries_its_representation(alice, keys):
    endpoint = endpoint_of(alice)
    task = task_of(alice, keys)
    succeed(task)

    delivery = deliveries(endpoint)[0]
    body = delivery.payload
    assert body["type"] == "task.succeeded"
    assert body["timestamp"].startswith(str(timezone.now().year))
    data = body["data"]
    # The task as the API shows it, links under the site's public address.
    api = Client().get(f"/api/v1/tasks/{task.code}", HTTP_AUTHORIZATION=f"Bearer {token(alice)}")
    assert data == api.json() | {"web_url": data["web_url"], "results": data["results"]}
    assert data["state"] == "succeeded" and data["model"] == "apimart/Omni-Flash-Ext"
    assert data["web_url"] == f"https://studio.example.com/t/{task.code}/"
    assert data["results"][0]["url"] == (
        f"https://studio.example.com/api/v1/tasks/{task.code}/results/0"
    )
    assert data["finished_at"] is not None
    # Comfortably small, even with the longest prompt a member may write.
    assert len(webhooks.body_of(body)) < 2000


def test_a_failed_task_says_why_and_that_it_was_refunded(alice, keys):
    endpoint = endpoint_of(alice)
    task = task_of(alice, keys)
    fail_task(task, actor="test", reason="The gateway refused the prompt.")

    data = deliveries(endpoint)[0].payload["data"]
    assert data["state"] == "failed"
    assert data["credits_refunded"] == task.credits_charged
    assert data["error"] == "The gateway refused the prompt."
    assert data["results"] == []


# --- sending and signing -----------------------------------------------------------------------


def test_each_event_is_signed_as_standard_webhooks_with_the_endpoints_secret(alice, keys):
    endpoint = endpoint_of(alice)
    task = task_of(alice, keys)
    fail_task(task, actor="test", reason="Refused.")
    receiver = Receiver(200)

    first = deliveries(endpoint)[0]
    assert webhooks.deliver(first.pk, client=receiver.client) == "delivered"

    assert len(receiver.requests) == 2  # the run's event followed its task's
    for request in receiver.requests:
        assert request.url == HOOK
        assert request.headers["content-type"] == "application/json"
        payload = Webhook(endpoint.secret).verify(request.content, dict(request.headers))
        assert request.headers["webhook-id"].startswith("msg_")
        assert str(task.run.code) in (payload["data"]["id"], payload["data"].get("run"))
    # A signature made with another secret does not verify.
    with pytest.raises(Exception, match="signature"):
        Webhook(webhooks.new_secret()).verify(request.content, dict(request.headers))
    assert [b["type"] for b in receiver.bodies()] == ["task.failed", "run.finished"]
    assert all(d.state == "delivered" and d.last_status == 200 for d in deliveries(endpoint))


def test_a_retry_keeps_the_message_id_and_a_rotated_secret_signs_it(alice, keys):
    endpoint = endpoint_of(alice)
    delivery = webhooks.send_test_event(endpoint)
    receiver = Receiver(500, 200)
    now = timezone.now()

    assert webhooks.deliver(delivery.pk, now=now, client=receiver.client) == "retrying"
    endpoint.rotate_secret()
    later = now + timedelta(seconds=5)
    assert webhooks.deliver(delivery.pk, now=later, client=receiver.client) == "delivered"

    first, second = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivery.msg_id
    assert first.content == second.content
    endpoint.refresh_from_db()
    Webhook(endpoint.secret).verify(second.content, dict(second.headers))
    assert receiver.bodies()[0]["type"] == "webhook.test"


def test_the_backoff_schedule_gives_up_after_a_day(alice, keys):
    endpoint = endpoint_of(alice)
    delivery = webhooks.send_test_event(endpoint)
    receiver = Receiver(503)
    now = timezone.now()
    started = now

    for attempt, delay in enumerate(webhooks.RETRY_DELAYS, start=1):
        assert webhooks.deliver(delivery.pk, now=now, client=receiver.client) == "retrying"
        delivery.refresh_from_db()
        assert delivery.attempts == attempt
        assert delivery.next_attempt_at == now + delay
        assert delivery.last_status == 503
        assert delivery.last_error == "The endpoint answered HTTP 503."
        # Not a moment early, however often the job or the sweep runs.
        early = now + delay - timedelta(seconds=1)
        assert webhooks.deliver(delivery.pk, now=early, client=receiver.client) == "taken"
        assert webhooks.deliver_due(now=early, client=receiver.client) == "nothing due"
        now += delay

    assert [d.seconds + d.days * 86400 for d in webhooks.RETRY_DELAYS][:3] == [5, 300, 1800]
    assert now - started >= timedelta(days=1)
    assert webhooks.deliver(delivery.pk, now=now, client=receiver.client) == "given up"
    delivery.refresh_from_db()
    assert delivery.state == "failed"
    assert delivery.attempts == len(webhooks.RETRY_DELAYS) + 1
    assert delivery.last_error.endswith("Given up.")
    assert delivery.next_attempt_at is None
    assert len(receiver.requests) == len(webhooks.RETRY_DELAYS) + 1
    assert webhooks.deliver_due(now=now + timedelta(days=30), client=receiver.client) == (
        "nothing due"
    )


def test_the_job_run_twice_sends_once(alice, keys):
    endpoint = endpoint_of(alice)
    delivery = webhooks.send_test_event(endpoint)
    receiver = Receiver(200)

    assert webhooks.deliver(delivery.pk, client=receiver.client) == "delivered"
    assert webhooks.deliver(delivery.pk, client=receiver.client) == "done"
    assert webhooks.deliver_due(client=receiver.client) == "nothing due"
    assert len(receiver.requests) == 1


def test_a_claimed_delivery_is_not_sent_by_another_worker(alice, keys):
    endpoint = endpoint_of(alice)
    delivery = webhooks.send_test_event(endpoint)
    now = timezone.now()
    # Another worker holds it, sending right now.
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        lease_owner="elsewhere", lease_until=now + timedelta(seconds=30)
    )
    receiver = Receiver(200)

    assert webhooks.deliver(delivery.pk, now=now, client=receiver.client) == "taken"
    assert receiver.requests == []
    # A crashed worker's claim runs out, and the event is sent again, with its same id.
    later = now + timedelta(seconds=webhooks.LEASE_SECONDS)
    assert webhooks.deliver(delivery.pk, now=later, client=receiver.client) == "delivered"


def test_a_tasks_events_reach_an_endpoint_in_order(alice, keys):
    endpoint = endpoint_of(alice)
    task = task_of(alice, keys)
    fail_task(task, actor="test", reason="Refused.")
    failed, finished = deliveries(endpoint)
    receiver = Receiver(500, 200)
    now = timezone.now()

    # The run's event waits while its task's event is pending, failing or not.
    assert webhooks.deliver(finished.pk, now=now, client=receiver.client) == "waiting"
    assert webhooks.deliver(failed.pk, now=now, client=receiver.client) == "retrying"
    assert webhooks.deliver_due(now=now + timedelta(seconds=4), client=receiver.client) == (
        "1 waiting"
    )
    assert len(receiver.requests) == 1

    assert webhooks.deliver_due(now=now + timedelta(seconds=5), client=receiver.client)
    assert [b["type"] for b in receiver.bodies()] == ["task.failed", "task.failed", "run.finished"]
    assert all(d.state == "delivered" for d in deliveries(endpoint))


def test_gone_disables_the_endpoint_with_a_reason(client, alice, keys):
    endpoint = endpoint_of(alice)
    delivery = webhooks.send_test_event(endpoint)

    assert webhooks.deliver(delivery.pk, client=Receiver(410).client) == "gone"

    endpoint.refresh_from_db()
    delivery.refresh_from_db()
    assert endpoint.enabled is False
    assert "410 Gone" in endpoint.disabled_reason
    assert delivery.state == "failed" and delivery.last_status == 410
    # New events are not recorded for it, and its owner sees why.
    fail_task(task_of(alice, keys), actor="test", reason="Refused.")
    assert endpoint.deliveries.count() == 1
    client.force_login(alice)
    html = client.get(endpoint.get_absolute_url()).content.decode()
    assert "answered 410 Gone" in html


def test_events_of_a_disabled_endpoint_are_dropped_not_sent(alice, keys):
    endpoint = endpoint_of(alice)
    fail_task(task_of(alice, keys), actor="test", reason="Refused.")
    endpoint.disable("Disabled by you.")
    receiver = Receiver(200)

    # The first is dropped, and the run's event that waited for it right after.
    assert webhooks.deliver_due(client=receiver.client) == "1 done, 1 endpoint disabled"

    assert receiver.requests == []
    assert {d.state for d in deliveries(endpoint)} == {"failed"}
    assert deliveries(endpoint)[0].last_error == "Not sent: the endpoint is disabled."


def test_a_private_address_is_refused_at_send_time_too(alice, keys):
    # Registered before an admin took the address off the allowlist, say.
    endpoint = endpoint_of(alice, url="https://10.0.0.7/hook")
    delivery = webhooks.send_test_event(endpoint)
    receiver = Receiver(200)

    assert webhooks.deliver(delivery.pk, client=receiver.client) == "retrying"

    delivery.refresh_from_db()
    assert receiver.requests == []
    assert "private or local network" in delivery.last_error
    assert delivery.last_status is None


def test_a_redirect_is_a_failure_and_not_followed(alice, keys):
    endpoint = endpoint_of(alice)
    delivery = webhooks.send_test_event(endpoint)

    def redirect(request):
        return httpx.Response(302, headers={"location": "https://elsewhere.example.com/"})

    client = httpx.Client(transport=httpx.MockTransport(redirect))
    assert webhooks.deliver(delivery.pk, client=client) == "retrying"
    delivery.refresh_from_db()
    assert "redirect" in delivery.last_error


def test_a_long_answer_is_not_read(alice, keys):
    endpoint = endpoint_of(alice)
    delivery = webhooks.send_test_event(endpoint)
    big = httpx.Client(
        transport=httpx.MockTransport(lambda r: httpx.Response(200, text="x" * 9000))
    )

    assert webhooks.deliver(delivery.pk, client=big) == "retrying"
    delivery.refresh_from_db()
    assert delivery.last_error == "The answer was longer than 8 KB."


def test_a_sweep_is_started_when_something_is_due(alice, keys, no_broker, settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    from django.core.cache import cache

    cache.clear()
    assert webhooks.nudge() is False  # nothing due
    cache.clear()
    webhooks.send_test_event(endpoint_of(alice))
    no_broker.clear()

    assert webhooks.nudge() is True
    assert webhooks.nudge() is False  # asked again within seconds: not again
    assert no_broker == [("generations.api.webhooks.deliver_due", ())]


# --- the member's pages ------------------------------------------------------------------------


def post_endpoint(client, url, description=""):
    return client.post("/webhooks/", {"url": url, "description": description})


def test_a_member_registers_an_endpoint_and_sees_its_secret(client, alice):
    client.force_login(alice)

    response = post_endpoint(client, HOOK, "Our CI")

    endpoint = WebhookEndpoint.objects.get(owner=alice)
    assert response.status_code == 302 and response.url == endpoint.get_absolute_url()
    assert endpoint.secret.startswith("whsec_")
    assert len(Webhook(endpoint.secret)._whsecret) >= 24
    assert endpoint.secret not in endpoint.secret_ciphertext
    page = client.get(response.url)
    assert endpoint.secret in page.content.decode()
    assert "no-store" in page["Cache-Control"]
    assert "Our CI" in client.get("/webhooks/").content.decode()


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://hooks.example.com/omniweb", "Only https:// addresses receive webhooks"),
        ("https://intranet.example.com/hook", "is on a private or local network"),
        ("https://127.0.0.1:8443/hook", "is on a private or local network"),
        ("https://169.254.169.254/latest", "is on a private or local network"),
        ("ftp://hooks.example.com/x", "Enter a full web address"),
        ("https://user:pw@hooks.example.com/x", "Leave the user name and password out"),
        ("https://hooks.example.com/" + "a" * 2000, "at most 2000 characters"),
    ],
)
def test_registration_refuses_what_webhooks_may_not_reach(client, alice, url, words):
    client.force_login(alice)

    response = post_endpoint(client, url)

    assert response.status_code == 200
    assert words in response.content.decode().replace("&#x27;", "'")
    assert not WebhookEndpoint.objects.exists()


def test_a_long_description_is_refused(client, alice):
    client.force_login(alice)
    response = post_endpoint(client, HOOK, "d" * 201)
    assert "at most 200 characters" in response.content.decode()
    assert not WebhookEndpoint.objects.exists()


def test_an_admin_allowlist_lets_a_private_http_receiver_in(client, alice, settings):
    client.force_login(alice)
    assert "Only https://" in post_endpoint(client, "http://127.0.0.1:9/h").content.decode()

    settings.GATEWAY_ALLOWED_HOSTS = ["127.0.0.1"]
    assert post_endpoint(client, "http://127.0.0.1:9/h").status_code == 302


def test_a_member_may_have_ten_endpoints(client, alice, bob):
    client.force_login(alice)
    for number in range(webhooks.MAX_ENDPOINTS_PER_MEMBER):
        assert post_endpoint(client, f"{HOOK}/{number}").status_code == 302

    response = post_endpoint(client, f"{HOOK}/more")

    assert "the most a member may have" in response.content.decode()
    assert WebhookEndpoint.objects.filter(owner=alice).count() == 10
    # The cap is each member's own.
    client.force_login(bob)
    assert post_endpoint(client, HOOK).status_code == 302


def test_another_members_endpoint_answers_404_everywhere(client, alice, bob):
    endpoint = endpoint_of(alice)
    team = endpoint_of(None)
    client.force_login(bob)

    for target in (endpoint, team):
        base = f"/webhooks/{target.code}/"
        assert client.get(base).status_code == 404
        assert client.get(f"{base}delete/").status_code == 404
        for action in ("toggle", "rotate", "test", "delete"):
            assert client.post(f"{base}{action}/").status_code == 404, action
    endpoint.refresh_from_db()
    assert endpoint.enabled and WebhookEndpoint.objects.count() == 2
    assert not WebhookDelivery.objects.exists()
    assert HOOK not in client.get("/webhooks/").content.decode()


def test_the_pages_need_a_login(client, alice):
    endpoint = endpoint_of(alice)
    for url in ("/webhooks/", f"/webhooks/{endpoint.code}/"):
        response = client.get(url)
        assert response.status_code == 302 and "login" in response.url


def test_the_owner_disables_rotates_tests_and_deletes(client, alice):
    endpoint = endpoint_of(alice)
    secret = endpoint.secret
    base = f"/webhooks/{endpoint.code}/"
    client.force_login(alice)

    client.post(f"{base}toggle/")
    endpoint.refresh_from_db()
    assert not endpoint.enabled and "Disabled by you" in endpoint.disabled_reason
    client.post(f"{base}toggle/")
    endpoint.refresh_from_db()
    assert endpoint.enabled and endpoint.disabled_reason == ""

    assert client.post(f"{base}rotate/").status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.secret != secret and endpoint.secret.startswith("whsec_")

    assert client.post(f"{base}test/").status_code == 302
    assert [d.event_type for d in deliveries(endpoint)] == ["webhook.test"]

    assert "Delete this endpoint?" in client.get(f"{base}delete/").content.decode()
    assert client.post(f"{base}delete/").url == "/webhooks/"
    assert not WebhookEndpoint.objects.exists() and not WebhookDelivery.objects.exists()


def test_the_delivery_log_shows_what_happened(client, alice, keys):
    endpoint = endpoint_of(alice)
    task = task_of(alice, keys)
    fail_task(task, actor="test", reason="Refused.")
    failed = deliveries(endpoint)[0]
    webhooks.deliver(failed.pk, client=Receiver(500).client)
    client.force_login(alice)

    html = client.get(endpoint.get_absolute_url()).content.decode()

    assert "task.failed" in html and "run.finished" in html
    assert f'href="/t/{task.code}/"' in html
    assert "HTTP 500" in html
    assert "Pending" in html


def test_the_log_shows_the_last_fifty(client, alice):
    endpoint = endpoint_of(alice)
    for _ in range(webhooks.LOG_SIZE + 5):
        webhooks.send_test_event(endpoint)
    client.force_login(alice)

    html = client.get(endpoint.get_absolute_url()).content.decode()

    assert html.count("<code>webhook.test</code>") == webhooks.LOG_SIZE


# --- admin -------------------------------------------------------------------------------------


def test_an_admin_registers_a_team_endpoint(client, carol):
    client.force_login(carol)

    response = client.post(
        "/admin/generations/webhookendpoint/add/",
        {
            "owner": "",
            "url": "https://team.example.com/hook",
            "description": "All",
            "enabled": "on",
        },
    )

    assert response.status_code == 302
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.is_team and endpoint.secret.startswith("whsec_")
    page = client.get(f"/admin/generations/webhookendpoint/{endpoint.pk}/change/")
    assert endpoint.secret in page.content.decode()


def test_the_admin_refuses_a_private_address(client, carol):
    client.force_login(carol)
    response = client.post(
        "/admin/generations/webhookendpoint/add/",
        {"owner": "", "url": "https://intranet.example.com/hook", "enabled": "on"},
    )
    assert "private or local network" in response.content.decode()
    assert not WebhookEndpoint.objects.exists()


def test_the_delivery_log_in_the_admin_is_read_only(client, alice, carol):
    delivery = webhooks.send_test_event(endpoint_of(alice))
    client.force_login(carol)

    assert client.get("/admin/generations/webhookdelivery/").status_code == 200
    page = client.get(f"/admin/generations/webhookdelivery/{delivery.pk}/change/")
    assert page.status_code == 200 and "webhook.test" in page.content.decode()
    assert client.get("/admin/generations/webhookdelivery/add/").status_code == 403


def test_a_given_up_delivery_is_sent_again_by_its_owner_with_its_id(client, alice, bob, keys):
    endpoint = endpoint_of(alice)
    delivery = webhooks.send_test_event(endpoint)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        state="failed", attempts=8, next_attempt_at=None, last_error="Given up."
    )
    url = f"/webhooks/{endpoint.code}/deliveries/{delivery.code}/resend/"
    client.force_login(bob)
    assert client.post(url).status_code == 404
    client.force_login(alice)
    assert "Send again" in client.get(f"/webhooks/{endpoint.code}/").content.decode()
    assert client.get(url).status_code == 405

    page = client.post(url, follow=True).content.decode()
    assert "on its way again" in page
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts) == ("pending", 0)
    receiver = Receiver(200)
    assert webhooks.deliver(delivery.pk, client=receiver.client) == "delivered"
    assert receiver.requests[0].headers["webhook-id"] == delivery.msg_id
    # A delivered one is not sent again.
    assert "Only a delivery that failed" in client.post(url, follow=True).content.decode()
