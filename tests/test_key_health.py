"""Key health: "Test key" asks each gateway about a task that cannot exist (free), reads 401 as
refused and any answer about the task as accepted, and stores the answer on the key."""

from datetime import timedelta

import httpx
import pytest
import respx
from django.core.management import call_command
from django.utils import timezone
from django_q.models import Schedule

from accounts.models import LedgerEntry, ProviderKey
from generations.insight import keyhealth
from generations.models import Task

pytestmark = pytest.mark.django_db

SECRET = "sk-health-test-9876"
PROBE = keyhealth.PROBE_TASK_ID
OMNIVIDEO_SITE = "https://video.example.com"

# Each gateway's status endpoint for the made-up task, and what its documents show a refused
# key and an unknown task answering.
GATEWAYS = {
    "omniakey": (
        f"https://api.omniakey.com/v1/videos/generations/{PROBE}",
        {"error": {"message": "Invalid API key", "type": "invalid_api_key"}},
        (404, {"error": {"message": "Task not found", "type": "not_found"}}),
    ),
    "omnivideo": (
        f"{OMNIVIDEO_SITE}/api/v1/tasks/{PROBE}",
        {"code": 401, "msg": "Invalid or missing API key"},
        # The open API answers a business failure inside HTTP 200 (document 001: `code: 0`).
        (200, {"code": 0, "msg": "task not found", "data": None}),
    ),
    "apimart": (
        f"https://api.apimart.ai/v1/tasks/{PROBE}",
        {"error": {"type": "authentication_error", "message": "Invalid token"}},
        (404, {"error": {"type": "not_found", "message": "task not found"}}),
    ),
    "omixa": (
        f"http://omixa.cloud/api/v1/videos/jobs/{PROBE}",
        {"error": {"message": "invalid api key"}},
        (404, {"error": {"message": "job not found"}}),
    ),
}
NAMES = {"omniakey": "OmniaKey", "omnivideo": "Omni Video", "apimart": "APIMart", "omixa": "Omixa"}


def make_key(gateway: str, owner=None, label: str = "Main", secret: str = SECRET) -> ProviderKey:
    key = ProviderKey(
        provider=gateway,
        label=label,
        owner=owner,
        base_url=OMNIVIDEO_SITE if gateway == "omnivideo" else "",
    )
    key.set_secret(secret)
    key.save()
    return key


def fresh(key: ProviderKey) -> ProviderKey:
    return ProviderKey.objects.get(pk=key.pk)


# --- the request and how its answer is read -------------------------------------------------------


@pytest.mark.parametrize("gateway", sorted(GATEWAYS))
def test_a_401_means_the_key_is_refused(gateway, alice):
    url, refusal, _ = GATEWAYS[gateway]
    key = make_key(gateway, owner=alice)
    with respx.mock(assert_all_called=True) as mock:
        route = mock.get(url).respond(401, json=refusal)
        answer = keyhealth.test_key(key)
    assert route.call_count == 1
    assert route.calls[0].request.headers["Authorization"] == f"Bearer {SECRET}"
    assert answer == keyhealth.Answer("refused", f"{NAMES[gateway]} refused the key (HTTP 401).")
    stored = fresh(key)
    assert stored.health_status == "refused" and stored.health_checked_at is not None
    assert SECRET not in stored.health_message
    # A report, not a verdict: the key stays in use until a real task is refused.
    assert stored.invalid_at is None and stored.status == "active"


@pytest.mark.parametrize("gateway", sorted(GATEWAYS))
def test_an_answer_about_the_task_means_the_key_is_accepted(gateway, alice):
    url, _, (status, body) = GATEWAYS[gateway]
    key = make_key(gateway, owner=alice)
    with respx.mock(assert_all_called=True) as mock:
        mock.get(url).respond(status, json=body)
        answer = keyhealth.test_key(key)
    assert answer.status == "accepted"
    assert answer.message.startswith(f"{NAMES[gateway]} accepted the key")
    assert fresh(key).health_status == "accepted"


def test_a_status_answer_for_any_task_means_accepted_too(alice):
    key = make_key("omniakey", owner=alice)
    body = {"id": PROBE, "status": "pending", "created": 1709251200, "model": "sora"}
    with respx.mock() as mock:
        mock.get(GATEWAYS["omniakey"][0]).respond(200, json=body)
        assert keyhealth.test_key(key) == keyhealth.Answer("accepted", "OmniaKey accepted the key.")


def test_an_empty_account_is_accepted_and_said_so(alice):
    key = make_key("apimart", owner=alice)
    body = {"error": {"type": "payment_required", "message": "Insufficient balance"}}
    with respx.mock() as mock:
        mock.get(GATEWAYS["apimart"][0]).respond(402, json=body)
        answer = keyhealth.test_key(key)
    assert answer.status == "accepted" and "no balance left" in answer.message


@pytest.mark.parametrize(
    "effect",
    [httpx.ReadTimeout("slow"), httpx.ConnectError("refused"), httpx.Response(502, text="bad")],
)
def test_no_answer_or_a_server_error_cannot_tell(alice, effect):
    key = make_key("apimart", owner=alice)
    with respx.mock() as mock:
        route = mock.get(GATEWAYS["apimart"][0])
        if isinstance(effect, httpx.Response):
            route.return_value = effect
        else:
            route.side_effect = effect
        answer = keyhealth.test_key(key)
    assert answer.status == "error" and answer.message.startswith("Could not tell: ")
    stored = fresh(key)
    assert (stored.health_status, stored.health_message) == ("error", answer.message)


def test_a_key_pointing_at_a_private_address_is_never_called(alice):
    key = make_key("omnivideo", owner=alice)
    ProviderKey.objects.filter(pk=key.pk).update(base_url="http://10.0.0.7")
    with respx.mock(assert_all_called=False) as mock:
        route = mock.get(url__regex=r".*").respond(401)
        answer = keyhealth.test_key(fresh(key))
    assert not route.called
    assert answer.status == "error"


def test_the_test_costs_nothing_and_submits_nothing(alice):
    key = make_key("apimart", owner=alice)
    # Only the status endpoint is mocked: any other request (a submit) would fail the test.
    with respx.mock(assert_all_mocked=True) as mock:
        route = mock.get(GATEWAYS["apimart"][0]).respond(404, json={})
        keyhealth.test_key(key)
        assert [call.request.method for call in mock.calls] == ["GET"] and route.called
    assert not Task.objects.exists() and not LedgerEntry.objects.exists()
    assert alice.__class__.objects.get(pk=alice.pk).credit_balance == 0


def test_a_key_that_cannot_be_read_is_not_sent(alice):
    key = make_key("apimart", owner=alice)
    ProviderKey.objects.filter(pk=key.pk).update(secret_ciphertext="garbage")
    with respx.mock(assert_all_called=False) as mock:
        route = mock.get(GATEWAYS["apimart"][0]).respond(404)
        answer = keyhealth.test_key(fresh(key))
    assert not route.called and answer.status == "error"


# --- the Keys page --------------------------------------------------------------------------------


def test_the_keys_page_tests_a_key_and_shows_the_answer_on_its_row(client, alice):
    key = make_key("apimart", owner=alice, label="Studio key")
    client.force_login(alice)
    page = client.get("/accounts/keys/").content.decode()
    assert f'action="/accounts/keys/{key.code}/test/"' in page
    with respx.mock() as mock:
        mock.get(GATEWAYS["apimart"][0]).respond(401, json=GATEWAYS["apimart"][1])
        response = client.post(f"/accounts/keys/{key.code}/test/", follow=True)
    assert response.redirect_chain == [(f"/accounts/keys/#key-{key.code}", 302)]
    page = response.content.decode()
    assert "“Studio key”: APIMart refused the key (HTTP 401)." in page
    row = page[page.index(f'id="key-{key.code}"') :]
    row = row[: row.index("</tr>")]
    assert "<strong>Refused</strong>. APIMart refused the key (HTTP 401)." in row


def test_the_test_is_a_post(client, alice):
    key = make_key("apimart", owner=alice)
    client.force_login(alice)
    assert client.get(f"/accounts/keys/{key.code}/test/").status_code == 405


def test_another_members_key_and_team_keys_answer_404(client, alice, bob):
    bobs = make_key("apimart", owner=bob)
    team = make_key("apimart", label="Team")
    team.allowed_users.add(alice)
    client.force_login(alice)
    with respx.mock(assert_all_called=False) as mock:
        route = mock.get(GATEWAYS["apimart"][0]).respond(404)
        assert client.post(f"/accounts/keys/{bobs.code}/test/").status_code == 404
        assert client.post(f"/accounts/keys/{team.code}/test/").status_code == 404
    assert not route.called
    assert fresh(bobs).health_status == "" and fresh(team).health_status == ""


def test_shared_team_keys_show_their_last_test(client, alice):
    team = make_key("apimart", label="Team")
    team.allowed_users.add(alice)
    with respx.mock() as mock:
        mock.get(GATEWAYS["apimart"][0]).respond(404, json={})
        keyhealth.test_key(team)
    client.force_login(alice)
    page = client.get("/accounts/keys/").content.decode()
    assert "<strong>Accepted</strong>. APIMart accepted the key (HTTP 404 for a test task)." in page


# --- the admin ------------------------------------------------------------------------------------


def test_the_admin_tests_the_selected_keys(client, carol, alice):
    good = make_key("apimart", label="Good")
    bad = make_key("omniakey", owner=alice, label="Bad")
    untouched = make_key("omixa", label="Untouched")
    client.force_login(carol)
    with respx.mock() as mock:
        mock.get(GATEWAYS["apimart"][0]).respond(404, json={})
        mock.get(GATEWAYS["omniakey"][0]).respond(401, json=GATEWAYS["omniakey"][1])
        response = client.post(
            "/admin/accounts/providerkey/",
            {"action": "test_keys", "_selected_action": [good.pk, bad.pk]},
            follow=True,
        )
    page = response.content.decode()
    assert "Good: APIMart accepted the key (HTTP 404 for a test task)." in page
    assert "Bad: OmniaKey refused the key (HTTP 401)." in page
    assert fresh(good).health_status == "accepted" and fresh(bad).health_status == "refused"
    assert fresh(untouched).health_checked_at is None
    # The list shows the answers in their own column.
    assert "column-health_status" in page and ">Refused<" in page


def test_the_admin_action_refuses_too_many_keys_at_once(client, carol):
    keys = [make_key("apimart", label=f"K{n}") for n in range(11)]
    client.force_login(carol)
    with respx.mock(assert_all_called=False) as mock:
        route = mock.get(GATEWAYS["apimart"][0]).respond(404)
        response = client.post(
            "/admin/accounts/providerkey/",
            {"action": "test_keys", "_selected_action": [key.pk for key in keys]},
            follow=True,
        )
    assert "Select at most 10 keys to test at once." in response.content.decode()
    assert not route.called


# --- the schedule ---------------------------------------------------------------------------------


def test_the_schedule_exists_after_migrate():
    Schedule.objects.filter(name=keyhealth.SCHEDULE_NAME).delete()
    call_command("migrate", verbosity=0)
    call_command("migrate", verbosity=0)  # twice: still one schedule
    (schedule,) = Schedule.objects.filter(name=keyhealth.SCHEDULE_NAME)
    assert schedule.func == "generations.insight.keyhealth.test_team_keys"
    assert schedule.schedule_type == Schedule.HOURLY and schedule.repeats == -1


def test_the_schedule_tests_only_team_keys_once_a_day(alice):
    team = make_key("apimart", label="Team")
    recent = make_key("omniakey", label="Tested an hour ago")
    ProviderKey.objects.filter(pk=recent.pk).update(
        health_checked_at=timezone.now() - timedelta(hours=1), health_status="accepted"
    )
    own = make_key("apimart", owner=alice, label="Alice's")
    with respx.mock(assert_all_mocked=True) as mock:
        route = mock.get(GATEWAYS["apimart"][0]).respond(401, json=GATEWAYS["apimart"][1])
        assert keyhealth.test_team_keys() == 1
        # Run again at once, as a redelivered job would: nothing is sent twice.
        assert keyhealth.test_team_keys() == 0
    assert route.call_count == 1
    assert fresh(team).health_status == "refused"
    assert fresh(own).health_checked_at is None
    assert fresh(recent).health_status == "accepted"
    # A day later the team key is due again.
    with respx.mock() as mock:
        mock.get(GATEWAYS["apimart"][0]).respond(404, json={})
        mock.get(GATEWAYS["omniakey"][0]).respond(404, json={})
        assert keyhealth.test_team_keys(now=timezone.now() + timedelta(days=1)) == 2
    assert fresh(team).health_status == "accepted"


def test_a_run_stops_starting_requests_when_its_time_is_spent(monkeypatch):
    for n in range(3):
        make_key("apimart", label=f"Team {n}")
    monkeypatch.setattr(keyhealth, "RUN_BUDGET_SECONDS", -1)
    with respx.mock(assert_all_called=False) as mock:
        route = mock.get(GATEWAYS["apimart"][0]).respond(404)
        assert keyhealth.test_team_keys() == 0
    assert not route.called


# --- the simulator, over real HTTP ----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_against_the_simulator(live_server, settings):
    settings.PUBLIC_URL = live_server.url
    base_url = f"{live_server.url}/simulator/apimart"
    good = ProviderKey(provider="apimart", label="Simulator good", base_url=base_url)
    good.set_secret("sk-demo-0001")
    good.save()
    refused = ProviderKey(provider="apimart", label="Simulator refused", base_url=base_url)
    refused.set_secret("sk-invalid-0002")
    refused.save()
    assert keyhealth.test_key(good).status == "accepted"
    assert keyhealth.test_key(refused) == keyhealth.Answer(
        "refused", "APIMart refused the key (HTTP 401)."
    )
