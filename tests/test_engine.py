"""The task engine against gateways faked at the HTTP transport, with the documents' examples.

Each test drives one leased step the way a worker does and checks what a member or an admin
would notice: the state, the message, the money, when the next check happens.
"""

import logging
from datetime import timedelta

import httpx
import pytest
import respx
from django.utils import timezone

from accounts import ledger
from accounts.models import LedgerEntry, ProviderKey
from generations import engine, fetch, jobs
from generations.models import Result, Task
from generations.providers import GenerationRequest
from generations.services import submit_task

APIMART = "https://api.apimart.ai"
OMNIAKEY = "https://api.omniakey.com"
SECRET = "sk-engine-secret-0042"
GATEWAY_ID = "task_01KS1H7ZYSJWH1N779S2FSHTKA"
SUBMITTED = {"code": 200, "data": [{"status": "submitted", "task_id": GATEWAY_ID}]}


def apimart_status(status="processing", **data):
    return {"code": 200, "data": {"id": GATEWAY_ID, "status": status, **data}}


COMPLETED = apimart_status(
    "completed",
    progress=100,
    cost=0.4,
    result={
        "videos": [{"url": ["https://cdn.example.com/videos/abc.mp4"], "expires_at": 4102444800}]
    },
)


@pytest.fixture
def member(alice, carol):
    ledger.grant(alice, 500, by=carol, reason="welcome")
    return alice


@pytest.fixture
def key(member):
    key = ProviderKey(provider="apimart", label="Mine", owner=member)
    key.set_secret(SECRET)
    key.save()
    return key


@pytest.fixture
def task(member, key):
    request = GenerationRequest("apimart", "Omni-Flash-Ext", "a fox in the snow", duration=4)
    created, _ = submit_task(member, request, key=key)
    return created


def balance(user) -> int:
    user.refresh_from_db()
    return user.credit_balance


def step(task: Task) -> Task:
    """One leased step, as a worker does it."""
    assert Task.objects.claim(task.pk, "test-worker", states=Task.ACTIVE_STATES)
    jobs.work_on(task.pk, "test-worker")
    task.refresh_from_db()
    return task


def make_due(task: Task) -> None:
    Task.objects.filter(pk=task.pk).update(next_check_at=timezone.now())


def seconds_until_next_check(task: Task) -> float:
    return (task.next_check_at - timezone.now()).total_seconds()


@pytest.fixture
def stored(monkeypatch, settings, tmp_path):
    """Downloads replaced by a real file in a temporary media folder (fetch has its own tests)."""
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    settings.MEDIA_ROOT = tmp_path
    calls = []

    def fake_fetch(url, *, kind, **kwargs):
        calls.append(url)
        name = default_storage.save("results/test.mp4", ContentFile(b"\x00\x00\x00\x18ftypmp42"))
        return fetch.StoredMedia(name, "video/mp4", 12, 320, 180, 4.0, None)

    monkeypatch.setattr(fetch, "fetch_result", fake_fetch)
    return calls


# --- submit ------------------------------------------------------------------------------------


@respx.mock(base_url=APIMART)
def test_a_queued_task_is_sent_and_polled_first_after_the_gateways_advice(respx_mock, task):
    route = respx_mock.post("/v1/videos/generations").respond(json=SUBMITTED)
    task = step(task)
    assert task.state == Task.State.SUBMITTED
    assert task.provider_task_id == GATEWAY_ID
    assert 4 <= seconds_until_next_check(task) <= 10  # APIMart: first poll after 5-10 s
    assert route.call_count == 1
    body = route.calls[0].request.content.decode()
    assert '"duration":4' in body.replace(" ", "")
    assert task.events.last().reason == f"APIMart accepted it as {GATEWAY_ID}"


@respx.mock(base_url=APIMART)
def test_a_submit_job_delivered_twice_sends_the_task_once(respx_mock, task):
    route = respx_mock.post("/v1/videos/generations").respond(json=SUBMITTED)
    assert jobs.submit(task.pk) == "done"
    assert jobs.submit(task.pk) == "taken"
    assert route.call_count == 1


@respx.mock(base_url=APIMART)
def test_a_refused_submit_fails_with_the_gateways_message_and_refunds(respx_mock, task, member):
    before = balance(member)
    respx_mock.post("/v1/videos/generations").respond(
        400,
        json={"error": {"type": "invalid_duration", "message": "invalid duration 7"}},
    )
    task = step(task)
    assert task.state == Task.State.FAILED
    assert "invalid duration 7" in task.details
    assert balance(member) == before + task.credits_charged
    assert LedgerEntry.objects.filter(task=task, kind="refund").count() == 1


@respx.mock(base_url=APIMART)
def test_a_401_fails_the_task_and_marks_the_key_refused(respx_mock, task, key):
    respx_mock.post("/v1/videos/generations").respond(
        401, json={"error": {"type": "authentication_error", "message": "Invalid token"}}
    )
    task = step(task)
    key.refresh_from_db()
    assert task.state == Task.State.FAILED
    assert key.status == "refused by the gateway"
    assert "Invalid token" in key.invalid_message


@respx.mock(base_url=APIMART)
def test_a_submit_that_never_connected_is_tried_again_without_refund(respx_mock, task, member):
    before = balance(member)
    respx_mock.post("/v1/videos/generations").mock(side_effect=httpx.ConnectError("refused"))
    task = step(task)
    assert task.state == Task.State.QUEUED
    assert task.submit_sent_at is None
    assert seconds_until_next_check(task) > 1
    assert "try again" in task.message
    assert balance(member) == before
    # Next attempt succeeds.
    respx_mock.post("/v1/videos/generations").respond(json=SUBMITTED)
    make_due(task)
    assert step(task).state == Task.State.SUBMITTED


@respx.mock(base_url=APIMART)
def test_a_rate_limited_submit_waits_for_retry_after(respx_mock, task):
    respx_mock.post("/v1/videos/generations").respond(
        429, headers={"Retry-After": "12"}, json={"error": {"type": "rate_limit_error"}}
    )
    task = step(task)
    assert task.state == Task.State.QUEUED
    assert 11 <= seconds_until_next_check(task) <= 12


@respx.mock(base_url=APIMART)
def test_a_submit_whose_answer_never_came_needs_review_not_a_refund(respx_mock, task, member):
    before = balance(member)
    respx_mock.post("/v1/videos/generations").mock(side_effect=httpx.ReadTimeout("slow"))
    task = step(task)
    assert task.state == Task.State.NEEDS_REVIEW
    assert "refunded" in task.message and "may have been created" in task.message
    assert balance(member) == before
    # Without a gateway id it cannot be polled: it waits for an admin or the final limit.
    make_due(task)
    task = step(task)
    assert task.state == Task.State.NEEDS_REVIEW
    assert task.next_check_at == task.give_up_at


def test_a_worker_that_died_mid_submit_leaves_the_task_for_review(task, member):
    before = balance(member)
    Task.objects.filter(pk=task.pk).update(submit_sent_at=timezone.now())
    with respx.mock(assert_all_called=False) as mock:
        task = step(task)
        assert not mock.calls  # never sent twice
    assert task.state == Task.State.NEEDS_REVIEW
    assert balance(member) == before


def test_a_deleted_key_fails_the_task_before_anything_is_sent(task, key, member):
    before = balance(member)
    Task.objects.filter(pk=task.pk).update(key=None)
    task = step(task)
    assert task.state == Task.State.FAILED
    assert "Nothing was sent" in task.message
    assert balance(member) == before + task.credits_charged


# --- poll --------------------------------------------------------------------------------------


@pytest.fixture
def submitted(task):
    Task.objects.filter(pk=task.pk).update(
        state=Task.State.SUBMITTED, provider_task_id=GATEWAY_ID, next_check_at=timezone.now()
    )
    task.refresh_from_db()
    return task


def status_route(respx_mock):
    return respx_mock.get(f"/v1/tasks/{GATEWAY_ID}")


@respx.mock(base_url=APIMART)
def test_a_running_task_shows_progress_and_is_polled_again_within_the_advice(respx_mock, submitted):
    status_route(respx_mock).respond(json=apimart_status(progress=40, estimated_time=180))
    task = step(submitted)
    assert task.state == Task.State.RUNNING
    assert task.progress == 40
    assert task.estimated_seconds == 180
    assert 3.9 <= seconds_until_next_check(task) <= 12


def test_poll_intervals_grow_with_jitter_to_the_cap(settings):
    from generations.providers.apimart import APIMart

    settings.POLL_CAP_SECONDS = 60
    early = [engine.poll_delay(APIMart(), 1) for _ in range(50)]
    late = [engine.poll_delay(APIMart(), 40) for _ in range(50)]
    assert all(4 <= d <= 12 for d in early)
    assert len({round(d, 3) for d in early}) > 10  # jittered, not in lockstep
    assert max(late) == 60 and min(late) == 60
    assert engine.backoff(1) < engine.backoff(3) < engine.backoff(5)
    assert engine.backoff(50) <= settings.ERROR_BACKOFF_CAP_SECONDS


@respx.mock(base_url=APIMART)
def test_a_429_while_polling_waits_for_retry_after_and_never_fails(respx_mock, submitted):
    status_route(respx_mock).respond(
        429, headers={"Retry-After": "30"}, json={"error": {"type": "rate_limit_error"}}
    )
    task = step(submitted)
    assert task.state == Task.State.SUBMITTED
    assert 29 <= seconds_until_next_check(task) <= 30
    assert "Checking again" in task.message


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(502, text="<html>Bad Gateway</html>"),
        httpx.Response(200, text="<html>not json"),
        httpx.Response(200, json=apimart_status("teleporting")),
    ],
    ids=["5xx", "malformed", "unknown-status"],
)
def test_transient_poll_errors_back_off_and_never_fail(submitted, answer):
    task = submitted
    delays = []
    with respx.mock(base_url=APIMART) as respx_mock:
        status_route(respx_mock).mock(return_value=answer)
        for _ in range(4):
            make_due(task)
            task = step(task)
            delays.append(seconds_until_next_check(task))
            assert task.state == Task.State.SUBMITTED
    assert task.error_streak == 4
    assert delays[-1] > delays[0]
    assert not LedgerEntry.objects.filter(task=task, kind="refund").exists()


@respx.mock(base_url=APIMART)
def test_an_unknown_status_is_logged_for_people_to_add(respx_mock, submitted, caplog):
    status_route(respx_mock).respond(json=apimart_status("teleporting"))
    with caplog.at_level(logging.WARNING):
        step(submitted)
    assert "teleporting" in caplog.text


@respx.mock(base_url=APIMART)
def test_a_404_ends_the_task_only_after_several_in_a_row(respx_mock, submitted, member):
    before = balance(member)
    route = status_route(respx_mock)
    route.respond(404, json={"error": {"type": "not_found", "message": "task not found"}})
    task = submitted
    for _ in range(engine.NOT_FOUND_LIMIT - 1):
        task = step(task)
        assert task.state == Task.State.SUBMITTED
        make_due(task)
    # One good answer resets the count.
    route.respond(json=apimart_status(progress=10))
    task = step(task)
    assert task.not_found_streak == 0
    route.respond(404, json={"error": {"type": "not_found", "message": "task not found"}})
    for _ in range(engine.NOT_FOUND_LIMIT):
        make_due(task)
        task = step(task)
    assert task.state == Task.State.FAILED
    assert "no longer knows" in task.message
    assert balance(member) == before + task.credits_charged


@respx.mock(base_url=APIMART)
def test_a_failed_task_is_refunded_once_and_never_polled_again(respx_mock, submitted, member):
    before = balance(member)
    route = status_route(respx_mock)
    route.respond(json=apimart_status("failed", error={"message": "content policy", "code": "x"}))
    task = step(submitted)
    assert task.state == Task.State.FAILED
    assert "content policy" in task.details
    assert task.next_check_at is None
    assert balance(member) == before + task.credits_charged
    assert not Task.objects.due(timezone.now() + timedelta(days=3)).filter(pk=task.pk).exists()
    assert Task.objects.claim(task.pk, "late-worker", states=Task.ACTIVE_STATES) is False


@respx.mock(base_url=APIMART)
def test_a_finished_task_is_stored_and_succeeds(respx_mock, submitted, stored, member):
    before = balance(member)
    status_route(respx_mock).respond(json=COMPLETED)
    task = step(submitted)
    assert task.state == Task.State.SUCCEEDED
    assert stored == ["https://cdn.example.com/videos/abc.mp4"]
    result = Result.objects.get(task=task)
    assert (result.width, result.height, result.duration) == (320, 180, 4.0)
    assert str(task.gateway_cost) == "0.4000"
    assert balance(member) == before
    assert [e.to_state for e in task.events.all()][-2:] == ["fetching", "succeeded"]


@respx.mock(base_url=APIMART)
def test_the_last_answer_is_kept_for_admins_without_our_key(respx_mock, submitted):
    echo = apimart_status(progress=5, note=f"you sent Bearer {SECRET}")
    status_route(respx_mock).respond(json=echo)
    task = step(submitted)
    assert task.last_response["body"]["data"]["progress"] == 5
    assert SECRET not in str(task.last_response)


@respx.mock(base_url=APIMART)
def test_logs_name_task_gateway_and_key_but_never_the_secret(respx_mock, task, caplog):
    respx_mock.post("/v1/videos/generations").respond(json=SUBMITTED)
    with caplog.at_level(logging.DEBUG):
        step(task)
    assert f"task={task.pk} gateway=apimart key={task.key_id}" in caplog.text
    assert SECRET not in caplog.text


@respx.mock(base_url=APIMART)
def test_a_revoked_key_while_polling_puts_the_task_in_review(respx_mock, submitted, key):
    status_route(respx_mock).respond(
        401, json={"error": {"type": "authentication_error", "message": "Invalid token"}}
    )
    task = step(submitted)
    key.refresh_from_db()
    assert task.state == Task.State.NEEDS_REVIEW
    assert key.invalid_at is not None


# --- deadlines ---------------------------------------------------------------------------------


@respx.mock(base_url=APIMART)
def test_past_its_deadline_a_running_task_needs_review_and_is_rechecked_slowly(
    respx_mock, submitted, member, settings
):
    before = balance(member)
    Task.objects.filter(pk=submitted.pk).update(deadline_at=timezone.now() - timedelta(seconds=1))
    status_route(respx_mock).respond(json=apimart_status(progress=90))
    task = step(submitted)
    assert task.state == Task.State.NEEDS_REVIEW
    assert "past its deadline" in task.message
    assert seconds_until_next_check(task) > settings.REVIEW_RECHECK_SECONDS - 5
    assert balance(member) == before
    # It finishes after all: the member gets the result, and no refund.
    make_due(task)
    status_route(respx_mock).respond(json=apimart_status("failed", error={"message": "boom"}))
    task = step(task)
    assert task.state == Task.State.FAILED
    assert balance(member) == before + task.credits_charged


@respx.mock(base_url=APIMART)
def test_after_the_final_limit_an_unconfirmed_task_is_failed_and_refunded(
    respx_mock, submitted, member
):
    before = balance(member)
    past = timezone.now() - timedelta(seconds=1)
    Task.objects.filter(pk=submitted.pk).update(
        state=Task.State.NEEDS_REVIEW, deadline_at=past, give_up_at=past
    )
    status_route(respx_mock).respond(json=apimart_status(progress=99))
    task = step(submitted)
    assert task.state == Task.State.FAILED
    assert "48 hours" in task.message
    assert balance(member) == before + task.credits_charged


# --- downloads ---------------------------------------------------------------------------------


@pytest.fixture
def fetching(submitted):
    Task.objects.filter(pk=submitted.pk).update(
        state=Task.State.FETCHING,
        gateway_results=[{"url": "https://cdn.example.com/a.mp4", "valid_until": None}],
    )
    submitted.refresh_from_db()
    return submitted


def failing_fetch(monkeypatch, retryable):
    def fake(url, *, kind, **kwargs):
        raise fetch.FetchFailed("the link answered 503", retryable=retryable)

    monkeypatch.setattr(fetch, "fetch_result", fake)


def test_a_download_that_fails_for_now_is_retried_with_backoff(fetching, monkeypatch, member):
    before = balance(member)
    failing_fetch(monkeypatch, retryable=True)
    task = step(fetching)
    assert task.state == Task.State.FETCHING
    assert task.download_attempts == 1
    assert seconds_until_next_check(task) >= 1
    assert balance(member) == before


def test_a_result_whose_link_expired_fails_and_is_refunded(fetching, monkeypatch, member):
    before = balance(member)
    gone = (timezone.now() - timedelta(minutes=1)).isoformat()
    Task.objects.filter(pk=fetching.pk).update(
        gateway_results=[{"url": "https://cdn.example.com/a.mp4", "valid_until": gone}]
    )
    failing_fetch(monkeypatch, retryable=True)
    task = step(fetching)
    assert task.state == Task.State.FAILED
    assert task.message.startswith("The result could not be saved")
    assert balance(member) == before + task.credits_charged


def test_when_two_workers_store_the_same_result_one_file_is_kept(
    fetching, monkeypatch, settings, tmp_path
):
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    settings.MEDIA_ROOT = tmp_path

    def other_worker_finishes_first(url, *, kind, **kwargs):
        Result.objects.create(
            task=fetching, position=0, file="results/theirs.mp4", content_type="video/mp4", size=1
        )
        name = default_storage.save("results/ours.mp4", ContentFile(b"\x00\x00\x00\x18ftypmp42"))
        return fetch.StoredMedia(name, "video/mp4", 12, 320, 180, 4.0, None)

    monkeypatch.setattr(fetch, "fetch_result", other_worker_finishes_first)
    engine.store_results(fetching)
    fetching.refresh_from_db()
    assert fetching.state == Task.State.SUCCEEDED
    assert list(Result.objects.filter(task=fetching).values_list("file", flat=True)) == [
        "results/theirs.mp4"
    ]
    assert list((tmp_path / "results").iterdir()) == []  # our copy was deleted


# --- webhooks ----------------------------------------------------------------------------------


@pytest.fixture
def webhook_task(member, settings):
    settings.PUBLIC_URL = "https://studio.example.org"
    key = ProviderKey(provider="omniakey", label="OK", owner=member)
    key.set_secret(SECRET)
    key.save()
    request = GenerationRequest("omniakey", "sora", "a lighthouse at dusk")
    task, _ = submit_task(member, request, key=key)
    return task


@respx.mock(base_url=OMNIAKEY)
def test_omniakey_gets_a_per_task_webhook_url_whose_token_is_stored_hashed(
    respx_mock, webhook_task
):
    route = respx_mock.post("/v1/videos/generations").respond(
        json={"id": "vtask-1", "status": "pending", "estimated_time": 120}
    )
    task = step(webhook_task)
    sent = route.calls[0].request.content.decode()
    url = sent.split('"webhook_url":')[1].split('"')[1]
    assert url.startswith("https://studio.example.org/hooks/")
    token = url.rsplit("/", 1)[1]
    assert len(token) >= 40
    assert task.callback_token_hash == engine.callback_token_hash(token)
    assert token not in task.callback_token_hash


def test_a_webhook_only_makes_the_next_poll_immediate(client, webhook_task):
    token = "t" * 43
    later = timezone.now() + timedelta(minutes=5)
    Task.objects.filter(pk=webhook_task.pk).update(
        state=Task.State.SUBMITTED,
        provider_task_id="vtask-1",
        callback_token_hash=engine.callback_token_hash(token),
        next_check_at=later,
    )
    # The body claims success; it is not believed.
    response = client.post(
        f"/hooks/{token}", {"status": "completed"}, content_type="application/json"
    )
    assert response.status_code == 204
    webhook_task.refresh_from_db()
    assert webhook_task.state == Task.State.SUBMITTED
    assert webhook_task.next_check_at <= timezone.now()
    # Duplicate calls change nothing more.
    assert client.post(f"/hooks/{token}").status_code == 204
    assert webhook_task.events.count() == 1


def test_forged_missing_or_finished_task_tokens_answer_404(client, webhook_task):
    token = "s" * 43
    Task.objects.filter(pk=webhook_task.pk).update(
        callback_token_hash=engine.callback_token_hash(token)
    )
    assert client.post("/hooks/" + "x" * 43).status_code == 404
    assert client.post("/hooks/").status_code == 404
    Task.objects.filter(pk=webhook_task.pk).update(state=Task.State.SUCCEEDED)
    assert client.post(f"/hooks/{token}").status_code == 404
    assert client.get(f"/hooks/{token}").status_code == 405


def test_webhooks_are_rate_limited_per_address(client, webhook_task, settings, monkeypatch):
    settings.WEBHOOK_RATE_PER_MINUTE = 3
    # The count's window is a minute of the clock: pinned to the middle of one, so the five
    # calls never straddle two windows.
    monkeypatch.setattr("omniweb.ratelimit.time.time", lambda: 1_800_000_030.0)
    from django.core.cache import cache

    cache.clear()
    codes = [client.post("/hooks/" + "y" * 43).status_code for _ in range(5)]
    assert codes == [404, 404, 404, 429, 429]


# --- leases ------------------------------------------------------------------------------------


def test_two_dispatchers_lease_disjoint_tasks_and_respect_the_per_key_limit(member, key):
    request = GenerationRequest("apimart", "Omni-Flash-Ext", "many", duration=4)
    tasks = [submit_task(member, request, key=key)[0] for _ in range(6)]
    first = Task.objects.lease_due("one", limit=10, per_key=2)
    second = Task.objects.lease_due("two", limit=10, per_key=10)
    assert len(first) == 2
    assert len(second) == 4
    assert not {lease.pk for lease in first} & {lease.pk for lease in second}
    assert Task.objects.lease_due("three", limit=10, per_key=10) == []
    assert len(tasks) == 6


def test_a_dead_workers_lease_expires_and_another_worker_takes_over(task):
    Task.objects.filter(pk=task.pk).update(
        lease_owner="dead", lease_until=timezone.now() - timedelta(seconds=1)
    )
    leased = Task.objects.lease_due("alive", limit=5, per_key=5)
    assert [lease.pk for lease in leased] == [task.pk]
    task.refresh_from_db()
    assert task.lease_owner == "alive"


@pytest.mark.django_db
def test_the_dispatcher_schedule_is_created_once_by_name():
    from django_q.models import Schedule

    jobs.ensure_schedule()
    jobs.ensure_schedule()
    schedule = Schedule.objects.get(name=jobs.SCHEDULE_NAME)
    assert Schedule.objects.filter(name=jobs.SCHEDULE_NAME).count() == 1
    assert schedule.func == "generations.jobs.ensure_dispatchers"
    assert schedule.schedule_type == Schedule.MINUTES and schedule.minutes == 1


@pytest.mark.parametrize(
    "change, error",
    [
        ({"LEASE_SECONDS": 30}, "omniweb.E004"),
        ({"DISPATCH_SECONDS": 200}, "omniweb.E005"),
    ],
)
def test_engine_timings_that_would_run_a_task_twice_stop_start_up(settings, change, error):
    from generations.checks import check_engine_timing

    for name, value in change.items():
        setattr(settings, name, value)
    assert error in [e.id for e in check_engine_timing(None)]


def test_the_default_engine_timings_pass_the_start_up_check():
    from generations.checks import check_engine_timing

    assert check_engine_timing(None) == []


@pytest.mark.django_db(transaction=True)
def test_the_same_poll_run_twice_at_once_changes_state_once(alice, carol):
    """Leases normally prevent it; if two workers still poll one task together (a lease that
    ran out mid-call), the state compare-and-swap lets one of them act."""
    import threading

    from django.db import connections

    ledger.grant(alice, 500, by=carol, reason="welcome")
    key = ProviderKey(provider="apimart", label="Mine", owner=alice)
    key.set_secret(SECRET)
    key.save()
    request = GenerationRequest("apimart", "Omni-Flash-Ext", "twice", duration=4)
    task, _ = submit_task(alice, request, key=key)
    Task.objects.filter(pk=task.pk).update(state=Task.State.RUNNING, provider_task_id=GATEWAY_ID)
    barrier = threading.Barrier(2)

    def poll_once():
        try:
            copy = Task.objects.select_related("key").get(pk=task.pk)
            barrier.wait(5)
            engine.poll(copy)
        finally:
            connections.close_all()

    with respx.mock(base_url=APIMART) as mock:
        mock.get(f"/v1/tasks/{GATEWAY_ID}").respond(
            json=apimart_status("failed", error={"message": "nope"})
        )
        threads = [threading.Thread(target=poll_once) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert mock.calls.call_count == 2
    task.refresh_from_db()
    assert task.state == Task.State.FAILED
    assert task.events.filter(to_state="failed").count() == 1
    assert LedgerEntry.objects.filter(task=task, kind="refund").count() == 1
    assert balance(alice) == 500
