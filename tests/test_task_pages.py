"""A member's task pages: the list, one task, cancel, retry and the stored result files."""

import uuid

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.test import Client

from accounts import ledger
from accounts.models import LedgerEntry, ProviderKey
from generations.models import Result, Task
from generations.providers import GenerationRequest
from generations.services import fail_task, submit_task
from generations.simulator.media import render_png
from tests.conftest import PASSWORD


@pytest.fixture
def task(alice, carol, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    ledger.grant(alice, 200, by=carol, reason="welcome")
    key = ProviderKey(provider="omnivideo", label="Site", owner=alice, base_url="https://v.example")
    key.set_secret("sk-pages-0001")
    key.save()
    request = GenerationRequest("omnivideo", "nano-banana-2", "<script>alert(1)</script> a cat")
    return submit_task(alice, request, key=key)[0]


@pytest.fixture
def stored(task):
    name = default_storage.save("results/r.png", ContentFile(render_png("cat", 64, 48)))
    poster = default_storage.save("posters/r.jpg", ContentFile(b"\xff\xd8\xff\xe0jpeg"))
    Task.objects.filter(pk=task.pk).update(state=Task.State.SUCCEEDED, next_check_at=None)
    return Result.objects.create(
        task=task,
        file=name,
        poster=poster,
        content_type="image/png",
        size=10,
        width=64,
        height=48,
    )


def logged_in(client, user):
    client.login(username=user.username, password=PASSWORD)
    return client


def urls(task):
    base = f"/t/{task.code}/"
    return {
        "get": [base, f"{base}file/0", f"{base}poster/0"],
        "post": [f"{base}cancel", f"{base}retry"],
    }


def test_a_member_sees_their_task_with_the_prompt_escaped(client, alice, task):
    page = logged_in(client, alice).get(f"/t/{task.code}/").content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; a cat" in page
    assert "<script>alert(1)" not in page
    listing = client.get("/tasks/").content.decode()
    assert f"/t/{task.code}/" in listing
    assert "Queued" in listing


def test_another_member_gets_404_for_every_url_of_a_private_task(client, bob, task, stored):
    Task.objects.filter(pk=task.pk).update(visibility=Task.Visibility.PRIVATE)
    client = logged_in(client, bob)
    for path in urls(task)["get"]:
        assert client.get(path).status_code == 404, path
    for path in urls(task)["post"]:
        assert client.post(path).status_code == 404, path
    assert f"/t/{task.code}/" not in client.get("/tasks/").content.decode()
    task.refresh_from_db()
    assert task.state == Task.State.SUCCEEDED


def test_results_are_served_to_the_owner_only_with_nosniff(client, alice, stored, task):
    response = logged_in(client, alice).get(f"/t/{task.code}/file/0")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert b"".join(response.streaming_content).startswith(b"\x89PNG")
    download = client.get(f"/t/{task.code}/file/0?download=1")
    assert download["Content-Disposition"].startswith("attachment;")
    assert client.get(f"/t/{task.code}/poster/0")["Content-Type"] == "image/jpeg"
    assert client.get(f"/t/{task.code}/file/1").status_code == 404


def test_cancel_refunds_and_says_the_gateway_may_still_finish(client, alice, task):
    before = alice.__class__.objects.get(pk=alice.pk).credit_balance
    response = logged_in(client, alice).post(f"/t/{task.code}/cancel", follow=True)
    task.refresh_from_db()
    assert task.state == Task.State.CANCELED
    assert task.next_check_at is None
    assert "may still finish" in response.content.decode()
    after = alice.__class__.objects.get(pk=alice.pk).credit_balance
    assert after == before + task.credits_charged
    # A second cancel changes nothing and says why.
    again = client.post(f"/t/{task.code}/cancel", follow=True).content.decode()
    assert "cannot be canceled" in again
    assert LedgerEntry.objects.filter(task=task, kind="refund").count() == 1


def test_a_task_being_saved_cannot_be_canceled(client, alice, task):
    Task.objects.filter(pk=task.pk).update(state=Task.State.FETCHING)
    logged_in(client, alice).post(f"/t/{task.code}/cancel")
    task.refresh_from_db()
    assert task.state == Task.State.FETCHING


def test_retry_submits_a_new_task_with_the_same_parameters_and_a_new_debit(client, alice, task):
    fail_task(task, actor="test", reason="boom")
    response = logged_in(client, alice).post(f"/t/{task.code}/retry", {"form_token": uuid.uuid4()})
    new = Task.objects.exclude(pk=task.pk).get()
    assert response.status_code == 302 and response["Location"] == f"/t/{new.code}/"
    assert (new.provider, new.model, new.prompt, new.params) == (
        task.provider,
        task.model,
        task.prompt,
        task.params,
    )
    assert LedgerEntry.objects.filter(task=new, kind="debit").count() == 1


def test_only_a_failed_or_canceled_task_can_be_retried(client, alice, task):
    response = logged_in(client, alice).post(
        f"/t/{task.code}/retry", {"form_token": uuid.uuid4()}, follow=True
    )
    assert "Only a failed or canceled task" in response.content.decode()
    assert Task.objects.count() == 1


def test_cancel_and_retry_need_the_csrf_token(alice, task):
    client = Client(enforce_csrf_checks=True)
    logged_in(client, alice)
    assert client.post(f"/t/{task.code}/cancel").status_code == 403
    task.refresh_from_db()
    assert task.state == Task.State.QUEUED


def test_a_result_whose_file_was_lost_answers_404_not_an_error(client, alice, stored, task):
    default_storage.delete(stored.file.name)
    response = logged_in(client, alice).get(f"/t/{task.code}/file/0")
    assert response.status_code == 404
