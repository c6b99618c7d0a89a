"""Alert emails: each kind fires when it should and only then, reaches the right people, is
sent at most once an hour per subject, and can be turned off."""

from datetime import timedelta
from decimal import Decimal

import pytest
import respx
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone
from django_q.models import Schedule

from accounts import ledger
from accounts.models import LedgerEntry, ProviderKey, Quota, TeamQuota
from generations import jobs
from generations.insight import alerts
from generations.models import Task
from generations.models.insight import AlertSent, AlertSettings
from generations.providers import GenerationRequest
from generations.services import submit_task

APIMART = "https://api.apimart.ai"
SECRET = "sk-alerts-secret-0042"


@pytest.fixture(autouse=True)
def mail_settings(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.DEFAULT_FROM_EMAIL = "omniweb@studio.example"
    settings.PUBLIC_URL = "https://studio.example"


def spend(user, credits: int) -> None:
    """A task's debit of `credits` now, as a submit writes it."""
    task = make_task(user, state=Task.State.SUCCEEDED, finished_at=timezone.now())
    with transaction.atomic():
        locked = ledger.lock_user(user.pk)
        ledger.append_entry(
            locked,
            LedgerEntry.Kind.DEBIT,
            -credits,
            idempotency_key=f"task:{task.pk}:debit",
            task=task,
        )


@pytest.fixture
def member(alice, carol):
    ledger.grant(alice, 1000, by=carol, reason="welcome")
    return alice


def subjects(mailoutbox) -> list[str]:
    return [message.subject for message in mailoutbox]


def to(mailoutbox, subject: str) -> set[str]:
    return {
        address for message in mailoutbox if message.subject == subject for address in message.to
    }


# --- limits ------------------------------------------------------------------------------------


def test_nothing_is_sent_below_80_percent(member, mailoutbox):
    Quota.objects.create(user=member, max_credits_per_day=100)
    spend(member, 79)
    assert alerts.check_limits() == 0
    assert mailoutbox == []


def test_80_percent_of_the_daily_limit_mails_admins_and_the_member(member, carol, mailoutbox):
    Quota.objects.create(user=member, max_credits_per_day=100)
    spend(member, 85)
    assert alerts.check_limits() == 1
    subject = "Omniweb: alice reached 80% of their daily limit"
    assert subjects(mailoutbox) == [subject, subject]
    assert to(mailoutbox, subject) == {"carol@example.com", "alice@example.com"}
    # Each recipient gets their own message: the member does not see admin addresses.
    assert all(len(message.to) == 1 for message in mailoutbox)
    admin_mail = next(m for m in mailoutbox if m.to == ["carol@example.com"])
    assert admin_mail.from_email == "omniweb@studio.example"
    assert "alice has spent 85 of the 100 credits their daily limit allows (85%)" in admin_mail.body
    assert f"https://studio.example/admin/accounts/user/{member.pk}/change/" in admin_mail.body
    member_mail = next(m for m in mailoutbox if m.to == ["alice@example.com"])
    assert "https://studio.example/accounts/credits/" in member_mail.body
    assert "/admin/" not in member_mail.body


def test_100_percent_of_the_daily_limit_says_submits_are_refused(member, mailoutbox):
    Quota.objects.create(user=member, max_credits_per_day=100)
    spend(member, 100)
    alerts.check_limits()
    assert set(subjects(mailoutbox)) == {"Omniweb: alice reached 100% of their daily limit"}
    assert "Submits that would go past the limit are refused until" in mailoutbox[0].body


def test_the_monthly_limit_from_the_team_defaults(member, mailoutbox):
    TeamQuota.objects.create(max_credits_per_month=200)
    spend(member, 160)
    alerts.check_limits()
    assert set(subjects(mailoutbox)) == {"Omniweb: alice reached 80% of their monthly limit"}
    mailoutbox.clear()
    spend(member, 40)
    alerts.check_limits()
    assert set(subjects(mailoutbox)) == {"Omniweb: alice reached 100% of their monthly limit"}


def test_a_reached_limit_is_mailed_once_in_its_period_not_every_hour(member, mailoutbox):
    Quota.objects.create(user=member, max_credits_per_day=100)
    spend(member, 100)
    alerts.check_limits()
    AlertSent.objects.update(sent_at=timezone.now() - timedelta(hours=2))
    # Two hours later the limit is still reached today: no second email about it.
    assert alerts.check_limits() == 0
    assert len(mailoutbox) == 2


def test_a_member_without_limits_or_email_is_fine(member, carol, mailoutbox):
    spend(member, 500)
    assert alerts.check_limits() == 0
    Quota.objects.create(user=member, max_credits_per_day=100)
    type(member).objects.filter(pk=member.pk).update(email="")
    alerts.check_limits()
    assert to(mailoutbox, "Omniweb: alice reached 100% of their daily limit") == {
        "carol@example.com"
    }


def test_limits_alerts_can_be_turned_off(member, mailoutbox):
    Quota.objects.create(user=member, max_credits_per_day=100)
    spend(member, 100)
    AlertSettings.objects.create(limits=False)
    assert "limits" not in alerts.check_all()
    assert mailoutbox == []


# --- refused keys ------------------------------------------------------------------------------


@pytest.fixture
def own_key(member):
    key = ProviderKey(provider="apimart", label="Mine", owner=member)
    key.set_secret(SECRET)
    key.save()
    return key


@pytest.fixture
def task(member, own_key):
    request = GenerationRequest("apimart", "Omni-Flash-Ext", "a fox in the snow", duration=4)
    created, _ = submit_task(member, request, key=own_key)
    return created


def step(task: Task) -> Task:
    assert Task.objects.claim(task.pk, "test-worker", states=Task.ACTIVE_STATES)
    jobs.work_on(task.pk, "test-worker")
    task.refresh_from_db()
    return task


@respx.mock(base_url=APIMART)
def test_a_401_from_the_gateway_mails_admins_and_the_keys_owner(
    respx_mock, task, own_key, django_capture_on_commit_callbacks, mailoutbox
):
    respx_mock.post("/v1/videos/generations").respond(
        401,
        json={"error": {"type": "authentication_error", "message": f"Invalid token {SECRET}"}},
    )
    with django_capture_on_commit_callbacks(execute=True):
        step(task)
    subject = "Omniweb: key 'Mine' refused by APIMart"
    assert to(mailoutbox, subject) == {"carol@example.com", "alice@example.com"}
    body = mailoutbox[0].body
    assert "refused the key 'Mine' (…0042)" in body
    assert "Invalid token" in body
    assert SECRET not in body  # the gateway echoed it; the email does not
    owner_mail = next(m for m in mailoutbox if m.to == ["alice@example.com"])
    assert "https://studio.example/accounts/keys/" in owner_mail.body
    assert AlertSent.objects.get().kind == "key_refused"


@respx.mock(base_url=APIMART)
def test_a_402_says_the_account_is_empty_and_leaves_the_key_usable(
    respx_mock, task, own_key, django_capture_on_commit_callbacks, mailoutbox
):
    respx_mock.post("/v1/videos/generations").respond(
        402, json={"error": {"type": "payment_required", "message": "Insufficient balance"}}
    )
    with django_capture_on_commit_callbacks(execute=True):
        step(task)
    own_key.refresh_from_db()
    assert own_key.invalid_at is None
    assert to(mailoutbox, "Omniweb: key 'Mine' refused by APIMart") == {
        "carol@example.com",
        "alice@example.com",
    }
    assert "402: the account behind the key 'Mine' (…0042) has no balance left" in (
        mailoutbox[0].body
    )


def test_a_team_keys_refusal_goes_to_admins_only(
    carol, django_capture_on_commit_callbacks, mailoutbox
):
    key = ProviderKey(provider="apimart", label="Team APIMart")
    key.set_secret(SECRET)
    key.save()
    with django_capture_on_commit_callbacks(execute=True):
        key.mark_invalid("Invalid token")
    assert to(mailoutbox, "Omniweb: key 'Team APIMart' refused by APIMart") == {"carol@example.com"}
    assert f"https://studio.example/admin/accounts/providerkey/{key.pk}/change/" in (
        mailoutbox[0].body
    )


def test_a_rolled_back_refusal_sends_nothing(
    own_key, django_capture_on_commit_callbacks, mailoutbox
):
    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        own_key.mark_invalid("Invalid token")
        raise RuntimeError("rolled back")
    assert mailoutbox == []


def test_key_alerts_can_be_turned_off(own_key, django_capture_on_commit_callbacks, mailoutbox):
    AlertSettings.objects.create(key_refused=False)
    with django_capture_on_commit_callbacks(execute=True):
        own_key.mark_invalid("Invalid token")
    assert mailoutbox == []


# --- de-duplication ----------------------------------------------------------------------------


def test_one_subject_is_mailed_once_an_hour(own_key, mailoutbox):
    assert alerts.key_refused(own_key.pk, "Invalid token")
    assert not alerts.key_refused(own_key.pk, "Invalid token")
    assert len(mailoutbox) == 2  # carol and alice, once
    AlertSent.objects.update(sent_at=timezone.now() - timedelta(minutes=61))
    assert alerts.key_refused(own_key.pk, "Invalid token")
    assert len(mailoutbox) == 4
    assert AlertSent.objects.count() == 2


def test_a_subject_held_by_another_process_is_not_sent_twice(carol, mailoutbox):
    subject = "Omniweb: something"
    mail = alerts.Mail(("carol@example.com",), "body")
    # Another process is between its check and its record of the same subject.
    assert cache.add(alerts._lock_key(subject), "1", 60)
    assert not alerts.send_alert("stuck_tasks", subject, [mail])
    assert mailoutbox == []
    cache.delete(alerts._lock_key(subject))
    assert alerts.send_alert("stuck_tasks", subject, [mail])
    # The lock is given back once the record is written; the record keeps the hour quiet.
    assert cache.add(alerts._lock_key(subject), "1", 60)
    cache.delete(alerts._lock_key(subject))
    assert not alerts.send_alert("stuck_tasks", subject, [mail])
    assert len(mailoutbox) == 1


def test_a_failed_send_is_not_recorded_so_the_next_check_tries_again(
    carol, monkeypatch, mailoutbox
):
    from django.core.mail.backends.locmem import EmailBackend

    def broken(self, messages):
        raise ConnectionRefusedError("no mail server")

    subject = "Omniweb: something"
    mail = alerts.Mail(("carol@example.com",), "body")
    with monkeypatch.context() as patch:
        patch.setattr(EmailBackend, "send_messages", broken)
        assert not alerts.send_alert("stuck_tasks", subject, [mail])
    assert not AlertSent.objects.exists()
    assert alerts.send_alert("stuck_tasks", subject, [mail])
    assert len(mailoutbox) == 1


# --- stuck tasks -------------------------------------------------------------------------------


def make_task(user, *, state, finished_at=None, deadline_at=None, provider="apimart") -> Task:
    return Task.objects.create(
        user=user,
        provider=provider,
        model="Omni-Flash-Ext",
        kind="video",
        prompt="a fox",
        params={"duration": 4},
        key_label="Mine",
        state=state,
        price_unit="task",
        price_credits_per_unit=10,
        price_units=1,
        price_multiplier=Decimal(1),
        credits_charged=10,
        finished_at=finished_at,
        deadline_at=deadline_at,
    )


def test_stuck_tasks_mail_admins_with_links(member, carol, mailoutbox):
    now = timezone.now()
    review = make_task(member, state=Task.State.NEEDS_REVIEW, deadline_at=now - timedelta(hours=1))
    late = make_task(member, state=Task.State.RUNNING, deadline_at=now - timedelta(minutes=5))
    make_task(member, state=Task.State.RUNNING, deadline_at=now + timedelta(minutes=5))
    make_task(member, state=Task.State.FAILED, deadline_at=now - timedelta(hours=1))
    assert alerts.check_stuck_tasks()
    [message] = mailoutbox
    assert message.to == ["carol@example.com"]  # the member is not mailed about this
    assert message.subject == "Omniweb: tasks need review or are past their deadline"
    assert "2 task(s) need an admin: 1 in review, 1 still active past their deadline." in (
        message.body
    )
    assert f"/admin/generations/task/{review.pk}/change/" in message.body
    assert f"{late.code} (apimart, running, deadline" in message.body
    assert "https://studio.example/admin/generations/taskinreview/" in message.body


def test_no_stuck_tasks_no_email(member, mailoutbox):
    make_task(member, state=Task.State.RUNNING, deadline_at=timezone.now() + timedelta(hours=1))
    make_task(member, state=Task.State.SUCCEEDED, finished_at=timezone.now())
    assert not alerts.check_stuck_tasks()
    assert mailoutbox == []


def test_stuck_task_alerts_can_be_turned_off(member, mailoutbox):
    make_task(member, state=Task.State.NEEDS_REVIEW)
    AlertSettings.objects.create(stuck_tasks=False)
    alerts.check_all()
    assert mailoutbox == []


# --- failure rate ------------------------------------------------------------------------------


def finished(user, count, *, failed, ago, provider="apimart"):
    when = timezone.now() - ago
    for number in range(count):
        state = Task.State.FAILED if number < failed else Task.State.SUCCEEDED
        make_task(user, state=state, finished_at=when, provider=provider)


def test_a_spike_over_the_usual_rate_mails_admins(member, carol, mailoutbox):
    finished(member, 100, failed=5, ago=timedelta(days=2))  # usual 5%
    finished(member, 10, failed=4, ago=timedelta(minutes=10))  # last hour 40%
    assert alerts.check_failure_rates() == 1
    [message] = mailoutbox
    assert message.subject == "Omniweb: APIMart's failure rate is far above its usual"
    assert message.to == ["carol@example.com"]
    assert "APIMart failed 4 of the 10 tasks that finished in the last hour (40%)" in message.body
    assert "failed 5 of 100 (5%)" in message.body
    assert "provider__exact=apimart&state__exact=failed" in message.body


def test_a_failure_rate_near_the_usual_is_quiet(member, mailoutbox):
    finished(member, 100, failed=30, ago=timedelta(days=2))  # usual 30%
    finished(member, 10, failed=5, ago=timedelta(minutes=10))  # 50% < 30% + 30 points
    finished(member, 9, failed=9, ago=timedelta(minutes=10), provider="omniakey")  # too few
    assert alerts.check_failure_rates() == 0
    assert mailoutbox == []


def test_a_new_gateway_needs_30_points_of_failures(member, mailoutbox):
    finished(member, 10, failed=3, ago=timedelta(minutes=10))  # 30%, not above
    assert alerts.check_failure_rates() == 0
    finished(member, 1, failed=1, ago=timedelta(minutes=5))  # 4 of 11: 36%
    assert alerts.check_failure_rates() == 1


def test_failure_rate_alerts_can_be_turned_off(member, mailoutbox):
    finished(member, 10, failed=10, ago=timedelta(minutes=10))
    AlertSettings.objects.create(failure_rate=False)
    alerts.check_all()
    assert mailoutbox == []


# --- the schedule ------------------------------------------------------------------------------


def test_the_checks_run_every_five_minutes_after_migrate(db):
    schedule = Schedule.objects.get(name=alerts.SCHEDULE_NAME)
    assert schedule.func == "generations.insight.alerts.check_all"
    assert (schedule.schedule_type, schedule.minutes, schedule.repeats) == (Schedule.MINUTES, 5, -1)
    alerts.ensure_schedule()
    assert Schedule.objects.filter(name=alerts.SCHEDULE_NAME).count() == 1


def test_check_all_sends_every_kind_that_is_on(member, mailoutbox):
    Quota.objects.create(user=member, max_credits_per_day=100)
    spend(member, 100)
    make_task(member, state=Task.State.NEEDS_REVIEW)
    finished(member, 10, failed=10, ago=timedelta(minutes=10))
    assert alerts.check_all() == {"limits": 1, "stuck_tasks": 1, "failure_rate": 1}


@pytest.mark.django_db(transaction=True)
def test_two_processes_finding_the_same_problem_send_one_email(django_user_model, mailoutbox):
    """Two workers at once, each with its own database connection: one email, one record."""
    import threading

    from django.db import connection, connections

    if connection.vendor == "sqlite":
        pytest.skip("SQLite's in-memory test database is not shared between threads")
    django_user_model.objects.create_user("carol", email="carol@example.com", is_staff=True)
    subject = "Omniweb: tasks need review or are past their deadline"
    mail = alerts.Mail(("carol@example.com",), "body")
    start = threading.Barrier(4)
    results = []

    def worker():
        try:
            start.wait()
            results.append(alerts.send_alert("stuck_tasks", subject, [mail]))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, False, False, True]
    assert len(mailoutbox) == 1
    assert AlertSent.objects.filter(subject=subject).count() == 1


def test_admins_turn_kinds_off_in_the_admin_and_read_what_was_sent(client, carol, own_key):
    client.force_login(carol)
    response = client.post(
        "/admin/generations/alertsettings/add/",
        {"limits": "on", "stuck_tasks": "on", "failure_rate": "on"},
    )
    assert response.status_code == 302
    assert not AlertSettings.current().key_refused
    # One row only: no second one can be added, and the row cannot be deleted.
    assert client.get("/admin/generations/alertsettings/add/").status_code == 403
    row = AlertSettings.objects.get()
    assert client.get(f"/admin/generations/alertsettings/{row.pk}/delete/").status_code == 403

    AlertSettings.objects.update(key_refused=True)
    alerts.key_refused(own_key.pk, "Invalid token")
    page = client.get("/admin/generations/alertsent/")
    assert page.status_code == 200
    assert "Omniweb: key &#x27;Mine&#x27; refused by APIMart" in page.content.decode()
    sent = AlertSent.objects.get()
    assert client.get(f"/admin/generations/alertsent/{sent.pk}/change/").status_code == 200
    response = client.post(f"/admin/generations/alertsent/{sent.pk}/change/", {"subject": "x"})
    assert response.status_code == 403
    assert AlertSent.objects.get().subject == "Omniweb: key 'Mine' refused by APIMart"
