"""What a gateway says reaches people only as bounded, redacted text (RELIABILITY 28), across
the engine: the task's message and details, its events, the refund reason, the key's status,
the admin's stored last answer, and the pages."""

import json

import httpx
import pytest
import respx
from django.test import Client

from accounts import ledger
from accounts.models import LedgerEntry, ProviderKey
from generations import jobs
from generations.models import Task, TaskEvent
from generations.providers import GenerationRequest
from generations.services import submit_task
from tests.conftest import PASSWORD

APIMART = "https://api.apimart.ai"
SECRET = "sk-echo-9f8e7d6c5b4a39281706"


@pytest.fixture
def task(alice, carol):
    ledger.grant(alice, 500, by=carol, reason="welcome")
    key = ProviderKey(provider="apimart", label="Mine", owner=alice)
    key.set_secret(SECRET)
    key.save()
    request = GenerationRequest("apimart", "Omni-Flash-Ext", "a fox", duration=4)
    return submit_task(alice, request, key=key)[0]


def step(task: Task) -> Task:
    assert Task.objects.claim(task.pk, "w", states=Task.ACTIVE_STATES)
    jobs.work_on(task.pk, "w")
    task.refresh_from_db()
    return task


def everything_people_see(task: Task, member) -> str:
    client = Client()
    client.login(username=member.username, password=PASSWORD)
    key = ProviderKey.objects.get(pk=task.key_id)
    parts = [
        task.message,
        task.details,
        json.dumps(task.last_response, ensure_ascii=False),
        key.invalid_message,
        *TaskEvent.objects.filter(task=task).values_list("reason", flat=True),
        *LedgerEntry.objects.filter(task=task).values_list("reason", flat=True),
        client.get(f"/t/{task.code}/").content.decode(),
        client.get("/tasks/").content.decode(),
        client.get("/keys/").content.decode(),
    ]
    return "\n".join(parts)


@respx.mock(base_url=APIMART)
def test_a_gateway_that_echoes_the_key_never_shows_it_to_anyone(respx_mock, task, alice):
    """RELIABILITY 28: the key's secret is replaced before anything is stored or shown."""
    respx_mock.post("/v1/videos/generations").respond(
        401,
        json={
            "error": {
                "type": "authentication_error",
                "message": f"Invalid token {SECRET} (Authorization: Bearer {SECRET})",
            }
        },
    )
    task = step(task)
    assert task.state == Task.State.FAILED
    seen = everything_people_see(task, alice)
    assert SECRET not in seen
    assert SECRET[:12] not in seen
    assert "Invalid token" in task.details


@respx.mock(base_url=APIMART)
def test_an_html_error_page_is_described_not_shown(respx_mock, task, alice):
    """RELIABILITY 28: a non-JSON body never reaches a member; they read what kind it was."""
    page = "<html><title>Intranet</title><body>internal-dashboard-secret-row</body></html>"
    respx_mock.post("/v1/videos/generations").respond(403, text=page)
    task = step(task)
    assert task.state == Task.State.FAILED
    seen = everything_people_see(task, alice)
    assert "internal-dashboard-secret-row" not in seen.replace(
        json.dumps(task.last_response, ensure_ascii=False), ""
    )
    assert "HTML page" in task.details


@respx.mock(base_url=APIMART)
def test_a_long_gateway_message_is_cut(respx_mock, task):
    """RELIABILITY 28: a few hundred characters at most."""
    respx_mock.post("/v1/videos/generations").respond(
        400, json={"error": {"type": "invalid_request", "message": "x" * 5000}}
    )
    task = step(task)
    assert task.state == Task.State.FAILED
    assert len(task.details) <= 300
    assert len(task.message) < 300


@respx.mock(base_url=APIMART)
def test_the_gateways_words_are_shown_under_details_on_the_task_page(respx_mock, task, alice):
    respx_mock.post("/v1/videos/generations").respond(
        400, json={"error": {"type": "invalid_duration", "message": "视频时长不支持"}}
    )
    task = step(task)
    client = Client()
    client.login(username=alice.username, password=PASSWORD)
    page = client.get(f"/t/{task.code}/").content.decode()
    assert "Details from APIMart" in page
    assert "视频时长不支持" in page
    assert "refused the request" in task.message


def test_the_raw_answer_admins_see_is_redacted_even_when_it_arrives_unredacted(task):
    """RELIABILITY 28: the engine redacts the stored answer itself as well."""
    from generations.engine import _answer

    stored = _answer({"echo": SECRET, "nested": [{"Authorization": f"Bearer {SECRET}"}]}, SECRET)
    assert SECRET not in json.dumps(stored)


@respx.mock(base_url=APIMART)
def test_a_task_id_that_could_change_the_status_path_is_refused(respx_mock, task):
    """RELIABILITY 28/35: a gateway's id goes into a URL only if it is a plain id."""
    respx_mock.post("/v1/videos/generations").respond(
        json={"code": 200, "data": [{"status": "submitted", "task_id": "../../admin"}]}
    )
    task = step(task)
    assert task.provider_task_id == ""
    assert task.state == Task.State.NEEDS_REVIEW  # sent, and the answer cannot be used


def test_a_connect_error_message_names_no_address(task):
    with respx.mock(base_url=APIMART) as mock:
        mock.post("/v1/videos/generations").mock(
            side_effect=httpx.ConnectError("[Errno 111] refused by 10.0.0.7:443")
        )
        task = step(task)
    assert "10.0.0.7" not in task.message + task.details
