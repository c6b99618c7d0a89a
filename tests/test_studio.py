"""Task cards and their poller, task pages, the first run, and who may reach what."""

import re
from datetime import timedelta
from io import StringIO

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from accounts import ledger
from accounts.models import LedgerEntry, ProviderKey
from generations.cards import timing
from generations.models import Result, Task
from generations.providers import GenerationRequest
from generations.services import fail_task, submit_task
from generations.templatetags.studio import duration_words
from tests.conftest import PASSWORD
from tests.test_accounts import concrete_urls

pytestmark = pytest.mark.django_db


def make_key(user, label="Mine"):
    key = ProviderKey(provider="apimart", label=label, owner=user)
    key.set_secret("sk-studio-0001")
    key.save()
    return key


def make_task(user, carol, prompt="a cat", visibility=Task.Visibility.TEAM):
    ledger.grant(user, 100, by=carol, reason="welcome")
    key = ProviderKey.objects.filter(owner=user).first() or make_key(user)
    request = GenerationRequest("apimart", "Omni-Flash-Ext", prompt, duration=4)
    task = submit_task(user, request, key=key)[0]
    Task.objects.filter(pk=task.pk).update(visibility=visibility)
    task.refresh_from_db()
    return task


def finish(task, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    name = default_storage.save("results/x.mp4", ContentFile(b"\x00\x00\x00\x18ftypmp42"))
    poster = default_storage.save("posters/x.jpg", ContentFile(b"\xff\xd8\xff"))
    Result.objects.create(
        task=task,
        file=name,
        poster=poster,
        content_type="video/mp4",
        size=12,
        width=320,
        height=180,
        duration=4.0,
    )
    Task.objects.filter(pk=task.pk).update(
        state=Task.State.SUCCEEDED, finished_at=timezone.now(), next_check_at=None
    )
    task.refresh_from_db()
    return task


def logged_in(client, user):
    client.login(username=user.username, password=PASSWORD)
    return client


# --- cards and the poller ----------------------------------------------------------------


def test_active_cards_carry_one_poller_that_stops_when_nothing_is_active(
    client, alice, carol, settings, tmp_path
):
    task = make_task(alice, carol)
    page = logged_in(client, alice).get("/tasks/").content.decode()
    assert page.count('id="card-poller"') == 1
    assert "every 3s" in page
    assert f'name="watch" value="{task.code}"' in page

    update = client.get("/tasks/cards", {"watch": [str(task.code)]}).content.decode()
    assert f'id="task-{task.code}"' in update and 'hx-swap-oob="true"' in update
    assert "every 3s" in update

    finish(task, settings, tmp_path)
    update = client.get("/tasks/cards", {"watch": [str(task.code)]}).content.decode()
    assert "every 3s" not in update  # nothing active any more: polling stops
    assert "tasks-changed from:body" in update  # a new submit wakes it again
    assert 'name="watch"' not in update
    assert f"/t/{task.code}/poster/0" in update


def test_the_poller_answers_only_for_tasks_the_member_may_see(client, alice, bob, carol):
    private = make_task(bob, carol, visibility=Task.Visibility.PRIVATE)
    mine = make_task(alice, carol)
    update = (
        logged_in(client, alice)
        .get("/tasks/cards", {"watch": [str(private.code), str(mine.code), "not-a-code"]})
        .content.decode()
    )
    assert str(mine.code) in update
    assert str(private.code) not in update


def test_a_card_shows_the_gateways_percentage_or_a_marked_estimate(alice, carol):
    task = make_task(alice, carol)
    Task.objects.filter(pk=task.pk).update(
        state=Task.State.RUNNING, created_at=timezone.now() - timedelta(seconds=30)
    )
    task.refresh_from_db()
    task.estimated_seconds = 120
    estimate = timing(task)
    assert estimate.estimated and 20 <= estimate.percent <= 30 and 85 <= estimate.remaining <= 95
    task.progress = 40
    reported = timing(task)
    assert (reported.percent, reported.estimated) == (40, False)


def test_card_times_read_as_words():
    assert [duration_words(s) for s in (5, 60, 130, 3600, 3900)] == [
        "5 s",
        "1 min",
        "2 min 10 s",
        "1 h",
        "1 h 5 min",
    ]


def test_a_failed_card_says_what_happened_and_what_to_do(client, alice, carol):
    task = make_task(alice, carol)
    fail_task(
        task, actor="worker", reason="APIMart: invalid duration 7. Your credits were refunded."
    )
    page = logged_in(client, alice).get("/tasks/").content.decode()
    assert "invalid duration 7" in page
    assert "refunded" in page and "try again" in page.lower()


# --- task list and page ------------------------------------------------------------------


def test_my_tasks_filters_by_state_and_says_when_a_filter_is_wrong(client, alice, carol):
    done, waiting = make_task(alice, carol, "first"), make_task(alice, carol, "second")
    fail_task(done, actor="test", reason="boom")
    client = logged_in(client, alice)
    page = client.get("/tasks/", {"state": "failed"}).content.decode()
    assert str(done.code) in page and str(waiting.code) not in page
    page = client.get("/tasks/", {"state": "exploded", "kind": "video"}).content.decode()
    assert "There is no state" in page
    assert str(done.code) in page and str(waiting.code) in page


def test_teammates_see_a_team_task_but_cannot_change_it(client, alice, bob, carol):
    task = make_task(alice, carol)
    client = logged_in(client, bob)
    page = client.get(f"/t/{task.code}/").content.decode()
    assert "Shared by" in page and "Cancel and refund" not in page
    assert "sk-studio-0001" not in page and "…0001" not in page
    for action in ("cancel", "retry", "delete", "visibility"):
        assert client.post(f"/t/{task.code}/{action}").status_code == 404
    task.refresh_from_db()
    assert task.state == Task.State.QUEUED


def test_making_a_task_private_hides_it_from_the_team(client, alice, bob, carol):
    task = make_task(alice, carol)
    logged_in(client, alice).post(f"/t/{task.code}/visibility", {"visibility": "private"})
    task.refresh_from_db()
    assert task.visibility == "private"
    response = client.post(f"/t/{task.code}/visibility", {"visibility": "public"}, follow=True)
    assert "Choose team or private." in response.content.decode()
    assert logged_in(Client(), bob).get(f"/t/{task.code}/").status_code == 404


def test_deleting_a_finished_task_removes_its_files_and_keeps_the_ledger(
    client, alice, carol, settings, tmp_path
):
    task = finish(make_task(alice, carol), settings, tmp_path)
    client = logged_in(client, alice)
    response = client.post(f"/t/{task.code}/delete")
    assert response.status_code == 302
    assert client.get(f"/t/{task.code}/").status_code == 404
    assert not Result.objects.filter(task=task).exists()
    assert list((tmp_path / "results").iterdir()) == []
    assert LedgerEntry.objects.filter(task=task).count() == 1
    call_command("audit_ledger", stdout=StringIO())


def test_an_active_task_cannot_be_deleted(client, alice, carol):
    task = make_task(alice, carol)
    response = logged_in(client, alice).post(f"/t/{task.code}/delete", follow=True)
    assert "cancel it first" in response.content.decode()
    task.refresh_from_db()
    assert task.deleted_at is None


def test_media_are_never_served_from_a_public_path(client, alice, carol, settings, tmp_path):
    task = finish(make_task(alice, carol), settings, tmp_path)
    result = task.results.get()
    assert logged_in(client, alice).get(f"/media/{result.file.name}").status_code == 404


# --- who may reach what (RELIABILITY 20 and 22) ------------------------------------------


def object_urls():
    """Every route that names an object by code, whatever app it is in."""
    return sorted(path for name, path in concrete_urls() if "00000000-0000-4000" in path)


def test_another_member_gets_404_on_every_url_of_a_private_task_or_key(
    client, alice, bob, carol, settings, tmp_path
):
    task = finish(make_task(alice, carol, visibility=Task.Visibility.PRIVATE), settings, tmp_path)
    key = ProviderKey.objects.get(owner=alice)
    paths = object_urls()
    assert len(paths) >= 10, paths
    client = logged_in(client, bob)
    for sample in paths:
        code = key.code if sample.startswith("/accounts/keys/") else task.code
        path = sample.replace("00000000-0000-4000-8000-000000000000", str(code))
        assert client.get(path).status_code in (404, 405), path
        assert client.post(path, {"visibility": "team", "label": "x"}).status_code in (
            404,
            405,
        ), path
    task.refresh_from_db()
    key.refresh_from_db()
    assert (task.visibility, task.deleted_at, key.label) == ("private", None, "Mine")


def test_every_post_needs_the_csrf_token(alice, carol, settings, tmp_path):
    task = make_task(alice, carol)
    client = Client(enforce_csrf_checks=True)
    logged_in(client, alice)
    for action in ("cancel", "retry", "delete", "visibility"):
        assert client.post(f"/t/{task.code}/{action}").status_code == 403
        # htmx requests too: without the header htmx sends, refused the same way.
        assert client.post(f"/t/{task.code}/{action}", HTTP_HX_REQUEST="true").status_code == 403
    task.refresh_from_db()
    assert task.state == Task.State.QUEUED


def test_pages_send_the_csrf_token_with_every_htmx_request(client, alice):
    page = logged_in(client, alice).get("/tasks/").content.decode()
    assert re.search(r"hx-headers='\{\"x-csrftoken\": \"[^\"]+\"\}'", page)


# --- first run -----------------------------------------------------------------------------


def test_the_first_run_gives_the_admin_simulator_keys_and_credits_once(carol, settings):
    settings.SIMULATOR_ENABLED = True
    out = StringIO()
    call_command("ensure_demo", "--site", "http://127.0.0.1:8000", stdout=out)
    call_command("ensure_demo", "--site", "http://127.0.0.1:8000", stdout=out)
    keys = ProviderKey.objects.visible_to(carol)
    assert sorted(keys.values_list("provider", flat=True)) == [
        "apimart",
        "omixa",
        "omniakey",
        "omnivideo",
    ]
    assert all(k.base_url.startswith("http://127.0.0.1:8000/simulator/") for k in keys)
    grants = LedgerEntry.objects.filter(user=carol, kind="grant")
    assert [g.amount for g in grants] == [1000]
    carol.refresh_from_db()
    assert carol.credit_balance == 1000


def test_without_the_simulator_the_first_run_adds_nothing(carol, settings):
    settings.SIMULATOR_ENABLED = False
    out = StringIO()
    call_command("ensure_demo", "--site", "http://127.0.0.1:8000", stdout=out)
    assert "simulator is off" in out.getvalue()
    assert not ProviderKey.objects.exists() and not LedgerEntry.objects.exists()
