"""Per-key gateway slots: a key sends at most `max_in_flight` tasks to its gateway at once.

APIMart is faked at the HTTP transport (respx); each test drives the engine the way a
dispatcher does (lease what is due, advance each task one step) and checks what the member and
the gateway would see: which tasks were sent, what the waiting ones say, when they are looked
at next, and that nobody is charged twice or failed for waiting.
"""

import itertools
import threading
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
import respx
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from accounts import ledger
from accounts.models import LedgerEntry, ProviderKey, TeamQuota
from generations import engine, fetch, jobs
from generations.models import Task
from generations.providers import GenerationRequest
from generations.services import Order, OrderItem, SubmitRefused, fail_task, submit_order
from tests.test_admin import read_form

APIMART = "https://api.apimart.ai"
REQUEST = GenerationRequest("apimart", "Omni-Flash-Ext", "a fox in the snow", duration=4)
State = Task.State


class Gateway:
    """APIMart's dialect: every submit gets a new task id; a task's status is what the test
    sets (processing until told otherwise). `answers` replaces the answer to the submit of
    that number (1 for the first)."""

    def __init__(self, mock: respx.MockRouter):
        self.numbers = itertools.count(1)
        self.received = itertools.count(1)
        self.lock = threading.Lock()
        self.status: dict[str, dict] = {}
        self.answers: dict[int, httpx.Response] = {}
        self.submits = mock.post("/v1/videos/generations").mock(side_effect=self.submit)
        mock.get(url__regex=r"/v1/tasks/(?P<task_id>[\w-]+)$").mock(side_effect=self.poll)

    def submit(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            received = next(self.received)
            if received in self.answers:
                return self.answers[received]
            task_id = f"task_slot_{next(self.numbers)}"
            self.status[task_id] = {"id": task_id, "status": "processing", "progress": 10}
        return httpx.Response(
            200, json={"code": 200, "data": [{"status": "submitted", "task_id": task_id}]}
        )

    def poll(self, request: httpx.Request, task_id: str) -> httpx.Response:
        return httpx.Response(200, json={"code": 200, "data": self.status[task_id]})

    def finish(self, task: Task, outcome: str) -> None:
        task.refresh_from_db()
        if outcome == "succeeds":
            url = f"https://cdn.example.com/{task.provider_task_id}.mp4"
            self.status[task.provider_task_id] = {
                "id": task.provider_task_id,
                "status": "completed",
                "progress": 100,
                "result": {"videos": [{"url": [url], "expires_at": 4102444800}]},
            }
        else:
            self.status[task.provider_task_id] = {
                "id": task.provider_task_id,
                "status": "failed",
                "error": {"message": "content policy"},
            }


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    with respx.mock(base_url=APIMART, assert_all_called=False) as mock:
        yield Gateway(mock)


@pytest.fixture
def stored(monkeypatch, settings, tmp_path):
    """Downloads replaced by a small file in a temporary media folder (fetch has its own tests)."""
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    settings.MEDIA_ROOT = tmp_path

    def fake_fetch(url, *, kind, **kwargs):
        name = default_storage.save("results/slot.mp4", ContentFile(b"\x00\x00\x00\x18ftypmp42"))
        return fetch.StoredMedia(name, "video/mp4", 12, 320, 180, 4.0, None)

    monkeypatch.setattr(fetch, "fetch_result", fake_fetch)


GRANT = 1_000


@pytest.fixture
def member(alice, carol):
    ledger.grant(alice, GRANT, by=carol, reason="welcome")
    return alice


def make_key(owner, label: str, limit: int, secret: str = "sk-slots-secret-0042") -> ProviderKey:
    key = ProviderKey(provider="apimart", label=label, owner=owner, max_in_flight=limit)
    key.set_secret(secret)
    key.save()
    return key


@pytest.fixture
def key(member) -> ProviderKey:
    return make_key(member, "Studio plan", limit=2)


def order(member, *keys: ProviderKey) -> list[Task]:
    """One order with a task per key given, in that order (lower ids first)."""
    items = tuple(OrderItem(REQUEST, key) for key in keys)
    return submit_order(member, Order(items=items)).tasks


def drive() -> None:
    """One round of a dispatcher: lease every due task, advance each one step, in due order."""
    for lease in Task.objects.lease_due("test-dispatcher", limit=100, per_key=100):
        jobs.work_on(lease.pk, "test-dispatcher")


def fresh(tasks: list[Task]) -> list[Task]:
    by_pk = Task.objects.in_bulk([t.pk for t in tasks])
    return [by_pk[t.pk] for t in tasks]


def step(task: Task) -> Task:
    """One leased step of one task, as a worker does it."""
    assert Task.objects.claim(task.pk, "test-worker", states=Task.ACTIVE_STATES)
    jobs.work_on(task.pk, "test-worker")
    task.refresh_from_db()
    return task


def make_due(*tasks: Task) -> None:
    Task.objects.filter(pk__in=[t.pk for t in tasks]).update(next_check_at=timezone.now())


def is_due(task: Task) -> bool:
    task.refresh_from_db()
    return task.next_check_at <= timezone.now()


def waiting_for_a_slot(task: Task) -> bool:
    return (
        task.state == State.QUEUED
        and task.submit_sent_at is None
        and task.message.startswith("Waiting for a free slot on ")
    )


def sent(tasks: list[Task]) -> list[Task]:
    return [t for t in fresh(tasks) if t.state in Task.IN_FLIGHT_STATES]


def assert_charged_once(member, tasks: list[Task], before: int) -> None:
    """Each task debited once, refunded only if it failed; the balance and the ledger agree."""
    paid = 0
    for task in fresh(tasks):
        kinds = sorted(LedgerEntry.objects.filter(task=task).values_list("kind", flat=True))
        refunded = task.state == State.FAILED
        assert kinds == (["debit", "refund"] if refunded else ["debit"]), (task.pk, kinds)
        paid += 0 if refunded else task.credits_charged
    member.refresh_from_db()
    assert member.credit_balance == before - paid
    assert ledger.audit() == []


# --- a key sends at most its limit ------------------------------------------------------------


def test_a_key_sends_only_its_limit_and_the_rest_wait_queued_naming_the_key(gateway, member, key):
    tasks = order(member, *[key] * 5)
    drive()
    assert gateway.submits.call_count == 2
    tasks = fresh(tasks)
    assert [t.state for t in tasks] == [State.SUBMITTED] * 2 + [State.QUEUED] * 3
    for task in tasks[2:]:
        assert waiting_for_a_slot(task), task.message
        assert task.message == (
            "Waiting for a free slot on Studio plan: 2 of its 2 tasks at APIMart are running. "
            "It is sent as soon as one finishes."
        )
        assert task.submit_attempts == 0
        # Looked at again later (or sooner, when woken), not over and over.
        assert 0 < (task.next_check_at - timezone.now()).total_seconds() <= engine.SLOT_WAIT_SECONDS

    # Their next looks come and go (the gateway still runs the first two): nothing more is sent.
    make_due(*tasks)
    drive()
    assert gateway.submits.call_count == 2
    assert [t.state for t in fresh(tasks)] == [State.RUNNING] * 2 + [State.QUEUED] * 3
    assert all(waiting_for_a_slot(t) for t in fresh(tasks)[2:])
    assert not any(t.state == State.FAILED for t in fresh(tasks))
    assert_charged_once(member, tasks, GRANT)


def test_a_waiting_task_shows_the_key_label_only_never_the_secret(gateway, member, key):
    tasks = order(member, *[key] * 3)
    drive()
    waiting = fresh(tasks)[2]
    assert "Studio plan" in waiting.message
    assert "sk-slots" not in waiting.message and "0042" not in waiting.message


@pytest.mark.parametrize("outcome", ["succeeds", "fails"])
def test_when_a_task_leaves_the_gateway_exactly_one_waiting_task_is_woken_and_sent_next(
    gateway, member, key, stored, django_capture_on_commit_callbacks, outcome
):
    tasks = order(member, *[key] * 5)
    drive()
    first, second, *waiting = fresh(tasks)
    assert all(not is_due(t) for t in waiting)

    gateway.finish(first, outcome)
    make_due(first)
    # Whatever the wake-up does after commit runs too.
    with django_capture_on_commit_callbacks(execute=True):
        first = step(first)
    assert first.state == (State.SUCCEEDED if outcome == "succeeds" else State.FAILED)

    # The earliest waiting task is looked at now; the others keep their later look.
    assert [is_due(t) for t in waiting] == [True, False, False]
    assert gateway.submits.call_count == 2
    drive()
    assert gateway.submits.call_count == 3
    woken, *still = fresh(waiting)
    assert woken.state == State.SUBMITTED and woken.message == ""
    assert all(waiting_for_a_slot(t) for t in still)
    assert_charged_once(member, tasks, GRANT)


def test_a_task_waiting_for_a_slot_never_reaches_its_deadline(
    gateway, member, monkeypatch, settings, django_capture_on_commit_callbacks
):
    """Hours of waiting for a busy key do not fail a task: its deadline counts from when it
    is sent, not while it waits its turn."""
    key = make_key(member, "One at a time", limit=1)
    running, waiting = order(member, key, key)
    real_now = timezone.now
    shift = timedelta()
    monkeypatch.setattr(timezone, "now", lambda: real_now() + shift)

    drive()
    running, waiting = fresh([running, waiting])
    assert running.state == State.SUBMITTED and waiting_for_a_slot(waiting)
    # The running task is not checked meanwhile: only the waiting one is looked at.
    Task.objects.filter(pk=running.pk).update(next_check_at=timezone.now() + timedelta(days=1))
    created_deadline = waiting.deadline_at

    # Over two hours, more than four times the deadline, in steps shorter than it.
    for _ in range(5):
        shift += timedelta(minutes=settings.TASK_DEADLINE_MINUTES - 5)
        make_due(waiting)
        drive()
        waiting.refresh_from_db()
        assert waiting_for_a_slot(waiting), waiting.message
        assert waiting.deadline_at > timezone.now() + timedelta(
            minutes=settings.TASK_DEADLINE_MINUTES - 1
        )
    assert waiting.deadline_at - created_deadline > timedelta(hours=2)
    assert gateway.submits.call_count == 1

    # The slot frees at last: it is sent, with a deadline a full period ahead.
    gateway.finish(running, "fails")
    make_due(running)
    with django_capture_on_commit_callbacks(execute=True):
        step(running)
    drive()
    waiting.refresh_from_db()
    assert waiting.state == State.SUBMITTED
    assert waiting.deadline_at - timezone.now() > timedelta(
        minutes=settings.TASK_DEADLINE_MINUTES - 1
    )
    assert LedgerEntry.objects.filter(task=waiting, kind="refund").count() == 0


def test_a_task_retrying_after_a_429_is_not_woken_before_its_retry_after(
    gateway, member, key, django_capture_on_commit_callbacks
):
    first, limited, third, fourth = order(member, *[key] * 4)
    # The gateway turns the second submit away for 30 s; its slot goes to the third.
    gateway.answers[2] = httpx.Response(
        429, headers={"Retry-After": "30"}, json={"error": {"type": "rate_limit_error"}}
    )
    drive()
    first, limited, third, fourth = fresh([first, limited, third, fourth])
    assert (first.state, third.state) == (State.SUBMITTED, State.SUBMITTED)
    assert limited.state == State.QUEUED and "try again in 30 s" in limited.message
    assert waiting_for_a_slot(fourth)
    retry_at = limited.next_check_at

    gateway.finish(first, "fails")
    make_due(first)
    with django_capture_on_commit_callbacks(execute=True):
        step(first)
    limited.refresh_from_db()
    assert limited.next_check_at == retry_at  # the gateway asked for 30 s; it gets them
    assert is_due(fourth)
    drive()
    assert fresh([fourth])[0].state == State.SUBMITTED

    # Only the 429 is left waiting: a freed slot wakes nobody early.
    gateway.finish(third, "fails")
    make_due(third)
    with django_capture_on_commit_callbacks(execute=True):
        step(third)
    limited.refresh_from_db()
    assert limited.next_check_at == retry_at
    assert limited.state == State.QUEUED and limited.submit_attempts == 1


def test_the_limit_is_per_key_another_keys_tasks_are_not_held_back(gateway, member, bob, carol):
    ledger.grant(bob, 1_000, by=carol, reason="welcome")
    narrow = make_key(member, "Alice basic", limit=1, secret="sk-slots-alice-1111")
    wide = make_key(member, "Alice pro", limit=4, secret="sk-slots-alice-2222")
    bobs = make_key(bob, "Bob basic", limit=1, secret="sk-slots-bob-3333")
    alices = order(member, narrow, narrow, narrow, wide, wide, wide)
    bob_tasks = order(bob, bobs, bobs)
    drive()
    alices, bob_tasks = fresh(alices), fresh(bob_tasks)
    assert [t.state for t in alices] == [State.SUBMITTED, State.QUEUED, State.QUEUED] + [
        State.SUBMITTED
    ] * 3
    assert [t.state for t in bob_tasks] == [State.SUBMITTED, State.QUEUED]
    assert all("on Alice basic:" in t.message for t in alices[1:3])
    assert "on Bob basic:" in bob_tasks[1].message
    assert gateway.submits.call_count == 5


def test_a_lower_limit_holds_new_sends_until_the_key_is_under_it(gateway, member, key):
    tasks = order(member, *[key] * 3)
    drive()
    assert len(sent(tasks)) == 2
    ProviderKey.objects.filter(pk=key.pk).update(max_in_flight=1)
    make_due(tasks[2])
    drive()
    assert gateway.submits.call_count == 2
    assert waiting_for_a_slot(fresh(tasks)[2])


# --- races: the last check and the wake-up -------------------------------------------------------


def test_a_slot_freed_while_a_task_was_being_turned_away_still_wakes_it(
    gateway, member, monkeypatch, django_capture_on_commit_callbacks
):
    """The interleaving of two workers: one counts the key's busy slots (full), the other
    then finishes a running task and commits, then the first records the wait. The freed slot
    must still reach the waiting task at once, not after SLOT_WAIT_SECONDS."""
    key = make_key(member, "One at a time", limit=1)
    running, waiting = order(member, key, key)
    drive()
    running, waiting = fresh([running, waiting])
    assert waiting_for_a_slot(waiting)
    gateway.finish(running, "fails")
    original = engine._wait_for_slot

    def finish_meanwhile(task, *args, **kwargs):
        # The other worker's poll, between this worker's count and its wait.
        fail_task(fresh([running])[0], actor="worker", reason="The gateway failed it.")
        original(task, *args, **kwargs)

    monkeypatch.setattr(engine, "_wait_for_slot", finish_meanwhile)
    make_due(waiting)
    with django_capture_on_commit_callbacks(execute=True):
        step(waiting)
    assert is_due(waiting)


def test_a_submit_the_gateway_refuses_frees_its_slot_for_a_waiting_task(
    gateway, member, django_capture_on_commit_callbacks
):
    key = make_key(member, "One at a time", limit=1)
    refused, waiting = order(member, key, key)

    def refuse_while_the_other_is_checked(request):
        # While this request is on its way, a worker looks at the other task: no free slot.
        step(waiting)
        return httpx.Response(
            400, json={"error": {"type": "invalid_duration", "message": "invalid duration 4"}}
        )

    gateway.submits.mock(side_effect=refuse_while_the_other_is_checked)
    with django_capture_on_commit_callbacks(execute=True):
        refused = step(refused)
    assert refused.state == State.FAILED
    assert waiting_for_a_slot(fresh([waiting])[0])
    assert is_due(waiting)


@pytest.mark.django_db(transaction=True)
def test_workers_sending_one_keys_tasks_at_once_never_exceed_its_limit(alice, carol):
    """Ten workers, each on its own database connection, send ten tasks of one key at the
    same moment. The key's row lock makes them count one after the other: exactly its limit
    reaches the gateway. (On SQLite, writers run one at a time and prove it the same way.)"""
    ledger.grant(alice, 1_000, by=carol, reason="welcome")
    key = make_key(alice, "Shared plan", limit=2)
    tasks = order(alice, *[key] * 10)
    barrier = threading.Barrier(len(tasks))
    errors: list[BaseException] = []

    def send(task: Task) -> None:
        owner = f"worker-{task.pk}"
        try:
            assert Task.objects.claim(task.pk, owner, states=[State.QUEUED])
            barrier.wait(10)
            jobs.work_on(task.pk, owner)
        except BaseException as exc:  # reported below, where the test fails on it
            errors.append(exc)
        finally:
            connection.close()

    with respx.mock(base_url=APIMART, assert_all_called=False) as mock:
        gateway = Gateway(mock)
        threads = [threading.Thread(target=send, args=(t,)) for t in tasks]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)
    tasks = fresh(tasks)
    assert gateway.submits.call_count == 2
    assert sum(t.state == State.SUBMITTED for t in tasks) == 2
    assert sum(waiting_for_a_slot(t) for t in tasks) == 8
    assert ledger.audit() == []


# --- the admin sets the limits ----------------------------------------------------------------


def form_errors(response) -> object:
    """What the admin complained about, for a failing assertion's message."""
    return response.context["adminform"].form.errors if response.status_code == 200 else response


def test_an_admin_changes_a_keys_limit_in_the_admin(client, carol, key):
    client.force_login(carol)
    change = reverse("admin:accounts_providerkey_change", args=[key.pk])
    data = read_form(client.get(change), "providerkey_form")
    assert data["max_in_flight"] == ["2"]
    data["max_in_flight"] = ["12"]
    response = client.post(change, data)
    assert response.status_code == 302, form_errors(response)
    key.refresh_from_db()
    assert key.max_in_flight == 12
    assert key.credentials().api_key == "sk-slots-secret-0042"  # the secret is kept
    listing = client.get(reverse("admin:accounts_providerkey_changelist")).content.decode()
    assert '<td class="field-at_once">12</td>' in listing


@pytest.mark.parametrize("value", ["0", "101", "two"])
def test_a_limit_out_of_range_is_refused_beside_the_field(client, carol, key, value):
    client.force_login(carol)
    change = reverse("admin:accounts_providerkey_change", args=[key.pk])
    data = read_form(client.get(change), "providerkey_form")
    data["max_in_flight"] = [value]
    response = client.post(change, data)
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["max_in_flight"]
    key.refresh_from_db()
    assert key.max_in_flight == 2


def test_a_key_added_without_a_limit_gets_the_default(client, carol):
    client.force_login(carol)
    response = client.post(
        reverse("admin:accounts_providerkey_add"),
        {
            "provider": "apimart",
            "label": "Team",
            "owner": "",
            "max_in_flight": "",
            "secret": "sk-team-secret-0001",
        },
    )
    assert response.status_code == 302, form_errors(response)
    assert ProviderKey.objects.get(label="Team").max_in_flight == 4


def test_a_member_cannot_change_a_keys_limit(client, member, key):
    client.force_login(member)
    change = reverse("admin:accounts_providerkey_change", args=[key.pk])
    response = client.post(change, {"max_in_flight": "50", "label": key.label})
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    key.refresh_from_db()
    assert key.max_in_flight == 2


def test_an_admin_sets_the_most_tasks_per_run_and_submits_follow_it(client, carol, member, key):
    client.force_login(carol)
    add = reverse("admin:accounts_teamquota_add")
    response = client.post(add, {"max_tasks_per_run": "3", "allowed_models": "[]"})
    assert response.status_code == 302, form_errors(response)
    team = TeamQuota.objects.get()
    assert team.max_tasks_per_run == 3
    listing = client.get(reverse("admin:accounts_teamquota_changelist")).content.decode()
    assert '<td class="field-max_tasks_per_run">3</td>' in listing
    with pytest.raises(SubmitRefused, match="one submit may make at most 3"):
        order(member, *[key] * 4)
    assert len(order(member, *[key] * 3)) == 3

    # Left empty on a later edit, the cap stays as it was.
    change = reverse("admin:accounts_teamquota_change", args=[team.pk])
    response = client.post(change, {"max_tasks_per_run": "", "allowed_models": "[]"})
    assert response.status_code == 302
    team.refresh_from_db()
    assert team.max_tasks_per_run == 3


def test_a_member_cannot_change_the_most_tasks_per_run(client, member):
    team = TeamQuota.objects.create()
    client.force_login(member)
    change = reverse("admin:accounts_teamquota_change", args=[team.pk])
    response = client.post(change, {"max_tasks_per_run": "1000", "allowed_models": "[]"})
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    team.refresh_from_db()
    assert team.max_tasks_per_run == 100
