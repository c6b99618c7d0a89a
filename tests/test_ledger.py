"""The credits ledger and the task money rules, one behaviour per test."""

import uuid
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction
from django.db.models.deletion import ProtectedError

from accounts import ledger
from accounts.models import LedgerEntry, ProviderKey, Quota, TeamQuota
from generations.models import ModelPrice, Task, TaskEvent, quote
from generations.providers import GenerationRequest
from generations.services import (
    SubmitRefused,
    cancel_task,
    fail_task,
    submit_task,
    transition,
)

pytestmark = pytest.mark.django_db

CAT = GenerationRequest("apimart", "Omni-Flash-Ext", "a cat", duration=4, resolution="720p")


def make_key(owner, provider="apimart", label="Mine"):
    key = ProviderKey(provider=provider, label=label, owner=owner)
    key.set_secret("sk-test-abcd1234")
    key.save()
    return key


@pytest.fixture
def funded(alice, carol):
    ledger.grant(alice, 100, by=carol, reason="welcome")
    alice.refresh_from_db()
    return alice


@pytest.fixture
def key(alice):
    return make_key(alice)


def balance(user) -> int:
    user.refresh_from_db()
    return user.credit_balance


def entry_sum(user) -> int:
    return sum(LedgerEntry.objects.filter(user=user).values_list("amount", flat=True))


# --- prices ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_, total",
    [
        (CAT, 32),
        (GenerationRequest("apimart", "Omni-Flash-Ext", "p", duration=4, resolution="1080p"), 48),
        (GenerationRequest("apimart", "Omni-Flash-Ext", "p", duration=10, resolution="4k"), 240),
        (GenerationRequest("omnivideo", "gpt-image-2", "p"), 10),
        (GenerationRequest("omnivideo", "seedance-2", "p"), 60),
        (GenerationRequest("omixa", "sora", "p", duration=12, resolution="1792x1024"), 192),
        (GenerationRequest("omniakey", "pika-1.5", "p", duration=5, resolution="1080p"), 38),
    ],
)
def test_one_price_function_prices_what_is_sent(request_, total):
    assert quote(request_).total == total


def test_a_resolution_in_capitals_costs_what_it_costs_in_lower_case(funded, key, carol):
    ledger.grant(funded, 500, by=carol, reason="more")
    upper = GenerationRequest("apimart", "Omni-Flash-Ext", "p", duration=4, resolution="4K")
    task, _ = submit_task(funded, upper, key=key)
    assert (task.params["resolution"], task.credits_charged) == ("4k", 96)


def test_every_catalogued_model_has_a_seeded_price():
    from generations.providers import catalog

    priced = set(ModelPrice.objects.values_list("provider", "model"))
    assert {(s.provider, s.model) for s in catalog.MODELS} <= priced


# --- grants and submits ---------------------------------------------------------------------


def test_a_grant_adds_credits_with_an_entry(alice, carol):
    entry = ledger.grant(alice, 250, by=carol, reason="monthly")
    assert (entry.kind, entry.amount, entry.balance_after, entry.created_by) == (
        "grant",
        250,
        250,
        carol,
    )
    assert balance(alice) == 250 == entry_sum(alice)


@pytest.mark.parametrize("amount", [0, -5, 2.5, "10", True])
def test_grants_of_nothing_negative_or_fractional_are_refused(alice, carol, amount):
    with pytest.raises(ValueError):
        ledger.grant(alice, amount, by=carol, reason="x")
    assert LedgerEntry.objects.count() == 0


def test_a_deduction_never_takes_the_balance_below_zero(funded, carol):
    with pytest.raises(ledger.InsufficientCredits):
        ledger.deduct(funded, 101, by=carol, reason="too much")
    ledger.deduct(funded, 40, by=carol, reason="correction")
    assert balance(funded) == 60 == entry_sum(funded)


def test_submit_charges_the_quote_and_keeps_a_price_snapshot(funded, key):
    task, created = submit_task(funded, CAT, key=key)
    assert created and task.state == Task.State.QUEUED
    assert (task.price_unit, task.price_credits_per_unit, task.price_units) == ("second", 8, 4)
    assert task.price_multiplier == Decimal("1") and task.credits_charged == 32
    assert task.key == key and task.key_label == "Mine (APIMart …1234)"
    debit = LedgerEntry.objects.get(task=task)
    assert (debit.kind, debit.amount, debit.idempotency_key) == (
        "debit",
        -32,
        f"task:{task.pk}:debit",
    )
    assert balance(funded) == 68
    # Later price edits never change what was paid.
    ModelPrice.objects.filter(provider="apimart").update(credits_per_unit=50)
    task.refresh_from_db()
    assert task.credits_charged == 32


def test_a_submit_the_balance_cannot_cover_is_refused_and_writes_nothing(funded, key):
    big = GenerationRequest("apimart", "Omni-Flash-Ext", "p", duration=10, resolution="4k")
    with pytest.raises(SubmitRefused, match="This costs 240 credits and your balance is 100"):
        submit_task(funded, big, key=key)
    assert Task.objects.count() == 0
    assert LedgerEntry.objects.filter(kind="debit").count() == 0
    assert balance(funded) == 100


def test_an_invalid_request_is_refused_per_field_before_any_charge(funded, key):
    bad = GenerationRequest("apimart", "Omni-Flash-Ext", "", duration=7)
    with pytest.raises(SubmitRefused) as caught:
        submit_task(funded, bad, key=key)
    assert set(caught.value.errors) == {"prompt", "duration"}
    assert Task.objects.count() == 0 and balance(funded) == 100


def test_a_repeated_form_token_returns_the_first_task_and_charges_once(funded, key):
    token = uuid.uuid4()
    first, created = submit_task(funded, CAT, key=key, token=token)
    again, created_again = submit_task(funded, CAT, key=key, token=token)
    assert created and not created_again and again.pk == first.pk
    assert LedgerEntry.objects.filter(kind="debit").count() == 1
    assert balance(funded) == 68


# --- keys at submit -----------------------------------------------------------------------------


def test_a_disabled_refused_or_foreign_key_cannot_pay(funded, key, bob):
    ProviderKey.objects.filter(pk=key.pk).update(is_disabled=True)
    with pytest.raises(SubmitRefused, match="disabled"):
        submit_task(funded, CAT, key=ProviderKey.objects.get(pk=key.pk))
    ProviderKey.objects.filter(pk=key.pk).update(is_disabled=False)
    key.mark_invalid("Invalid token")
    with pytest.raises(SubmitRefused, match="refused by the gateway"):
        submit_task(funded, CAT, key=key)
    with pytest.raises(SubmitRefused):
        submit_task(funded, CAT, key=make_key(bob, label="Bob's"))
    with pytest.raises(SubmitRefused):
        submit_task(funded, CAT, key=make_key(funded, provider="omniakey"))  # wrong gateway
    assert Task.objects.count() == 0 and balance(funded) == 100


def test_replacing_a_refused_secret_puts_the_key_back_in_use(funded, key):
    key.mark_invalid("Invalid token")
    key.set_secret("sk-new-secret-9999")
    key.save()
    task, _ = submit_task(funded, CAT, key=key)
    assert task.key_label.endswith("…9999)")


def test_a_team_key_pays_only_for_members_it_is_shared_with(funded, bob, carol):
    team = make_key(None, label="Team")
    team.allowed_users.add(funded)
    ledger.grant(bob, 100, by=carol, reason="welcome")
    task, _ = submit_task(funded, CAT, key=team)
    assert task.key == team
    with pytest.raises(SubmitRefused):
        submit_task(bob, CAT, key=team)


def test_a_members_own_key_comes_first_among_the_keys_they_may_use(funded, key):
    team = make_key(None, label="A team key")
    team.allowed_users.add(funded)
    make_key(None, label="Not shared")
    assert list(ProviderKey.objects.choices_for(funded, "apimart")) == [key, team]
    ProviderKey.objects.filter(pk=key.pk).update(is_disabled=True)
    assert list(ProviderKey.objects.choices_for(funded, "apimart")) == [team]
    assert list(ProviderKey.objects.choices_for(funded, "omniakey")) == []


# --- quotas ---------------------------------------------------------------------------------------


def test_the_active_task_limit_refuses_the_next_submit(funded, key):
    Quota.objects.create(user=funded, max_active_tasks=2)
    submit_task(funded, CAT, key=key)
    submit_task(funded, CAT, key=key)
    with pytest.raises(SubmitRefused, match="already have 2 active tasks"):
        submit_task(funded, CAT, key=key)
    assert Task.objects.count() == 2


def test_daily_and_monthly_spend_limits_count_refunds_back(funded, key):
    TeamQuota.objects.create(max_credits_per_day=64)
    first, _ = submit_task(funded, CAT, key=key)
    submit_task(funded, CAT, key=key)
    with pytest.raises(SubmitRefused, match="spent 64 of your 64 for today"):
        submit_task(funded, CAT, key=key)
    fail_task(first, actor="poll", reason="gateway failed")
    submit_task(funded, CAT, key=key)  # the refund gave room back
    Quota.objects.create(user=funded, max_credits_per_day=1000, max_credits_per_month=70)
    with pytest.raises(SubmitRefused, match="for this month"):
        submit_task(funded, CAT, key=key)


def test_a_members_own_quota_overrides_the_team_default(funded):
    TeamQuota.objects.create(max_active_tasks=1, allowed_models=["omniakey/*"])
    Quota.objects.create(user=funded, max_active_tasks=5)
    limits = ledger.effective_quota(funded)
    assert limits.max_active_tasks == 5
    assert limits.allows("omniakey", "sora") and not limits.allows("apimart", "Omni-Flash-Ext")


def test_a_model_outside_the_quota_is_refused(funded, key):
    Quota.objects.create(user=funded, allowed_models=["omnivideo/*"])
    with pytest.raises(SubmitRefused, match="does not include Omni Flash Ext"):
        submit_task(funded, CAT, key=key)


# --- ending tasks -----------------------------------------------------------------------------


def test_a_failed_task_is_refunded_exactly_once(funded, key):
    task, _ = submit_task(funded, CAT, key=key)
    assert fail_task(task, actor="poll", reason="moderation")
    assert not fail_task(task, actor="webhook", reason="moderation")
    assert not cancel_task(task, actor="member")
    refund = LedgerEntry.objects.get(task=task, kind="refund")
    assert (refund.amount, refund.idempotency_key) == (32, f"task:{task.pk}:refund")
    assert balance(funded) == 100 == entry_sum(funded)
    task.refresh_from_db()
    assert (task.state, task.message) == ("failed", "moderation") and task.finished_at
    assert [(e.from_state, e.to_state, e.actor) for e in task.events.all()] == [
        ("", "queued", "member"),
        ("queued", "failed", "poll"),
    ]


def test_terminal_states_never_change(funded, key):
    task, _ = submit_task(funded, CAT, key=key)
    with transaction.atomic():
        assert transition(task, Task.State.SUCCEEDED, from_states=Task.ACTIVE_STATES, actor="poll")
    assert not fail_task(task, actor="deadline", reason="late")
    with transaction.atomic():
        assert not transition(task, Task.State.RUNNING, from_states=Task.State.values, actor="poll")
    task.refresh_from_db()
    assert task.state == "succeeded"
    assert not LedgerEntry.objects.filter(kind="refund").exists()


def test_a_canceled_task_is_refunded(funded, key):
    task, _ = submit_task(funded, CAT, key=key)
    assert cancel_task(task, actor="member")
    assert balance(funded) == 100
    assert Task.objects.get(pk=task.pk).state == "canceled"


def test_an_error_between_debit_and_task_record_leaves_nothing(funded, key, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    # The task's first event is written last, after its debit.
    monkeypatch.setattr(TaskEvent.objects, "bulk_create", broken)
    with pytest.raises(RuntimeError):
        submit_task(funded, CAT, key=key)
    assert Task.objects.count() == 0 and LedgerEntry.objects.filter(kind="debit").count() == 0
    assert balance(funded) == 100


def test_an_error_during_a_refund_leaves_the_task_active_and_unrefunded(funded, key, monkeypatch):
    task, _ = submit_task(funded, CAT, key=key)

    def broken(*args, **kwargs):
        raise RuntimeError("connection lost")

    monkeypatch.setattr(ledger, "append_entry", broken)
    monkeypatch.setattr("generations.services.append_entry", broken)
    with pytest.raises(RuntimeError):
        fail_task(task, actor="poll", reason="x")
    task.refresh_from_db()
    assert task.state == "queued" and balance(funded) == 68


# --- append-only and the audit ------------------------------------------------------------------


def test_the_database_refuses_to_edit_a_ledger_entry(funded):
    entry = LedgerEntry.objects.get(user=funded)
    with pytest.raises(DatabaseError), transaction.atomic():
        LedgerEntry.objects.filter(pk=entry.pk).update(amount=1_000_000)
    with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "UPDATE accounts_ledgerentry SET reason = 'edited' WHERE id = %s", [entry.pk]
        )
    assert LedgerEntry.objects.get(pk=entry.pk).amount == 100


def test_the_database_refuses_to_delete_a_ledger_entry_on_postgresql(funded):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite refuses updates only: its test flush deletes rows")
    entry = LedgerEntry.objects.get(user=funded)
    with pytest.raises(DatabaseError), transaction.atomic():
        LedgerEntry.objects.filter(pk=entry.pk).delete()
    assert LedgerEntry.objects.filter(pk=entry.pk).exists()


def test_a_member_with_ledger_entries_cannot_be_deleted(funded):
    with pytest.raises(ProtectedError), transaction.atomic():
        funded.delete()
    assert type(funded).objects.filter(pk=funded.pk).exists()


def test_the_audit_passes_on_a_sound_ledger_and_names_every_mismatch(funded, key, capsys):
    task, _ = submit_task(funded, CAT, key=key)
    fail_task(task, actor="poll", reason="x")
    submit_task(funded, CAT, key=key)
    assert ledger.audit() == []
    call_command("audit_ledger")
    assert "Ledger audit passed: 4 entries checked." in capsys.readouterr().out

    type(funded).objects.filter(pk=funded.pk).update(credit_balance=999)
    Task.objects.filter(pk=task.pk).update(state="succeeded")  # refunded yet "succeeded"
    problems = ledger.audit()
    assert "alice: cached balance 999 but entries sum to 68" in problems
    assert f"task {task.code}: succeeded yet refunded" in problems
    with pytest.raises(CommandError, match="2 problems"):
        call_command("audit_ledger")


def test_the_audit_finds_a_failed_task_that_was_never_refunded(funded, key):
    task, _ = submit_task(funded, CAT, key=key)
    Task.objects.filter(pk=task.pk).update(state="failed")
    assert ledger.audit() == [f"task {task.code}: failed but refunded 0 times"]
