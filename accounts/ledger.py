"""The few functions that move credits.

Every change of a balance is an append-only LedgerEntry written in the same transaction as the
cached `User.credit_balance`, with the member's row locked first so concurrent submits, refunds
and grants queue up instead of racing. Each entry has an idempotency key the database keeps
unique, so a repeated call (a retried job, a double click) cannot write twice.
"""

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count, Q, Subquery, Sum
from django.utils import timezone

from accounts.models import LedgerEntry, Quota, TeamQuota


class InsufficientCredits(Exception):
    """The entry would take the balance below zero; nothing was written."""


def _whole_credits(amount, what: str) -> None:
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise ValueError(f"A {what} is a whole number of credits above zero.")


def lock_user(user_id: int):
    """The member's row, locked until the transaction ends (a no-op outside PostgreSQL, where
    SQLite's IMMEDIATE transactions already serialize writers)."""
    return get_user_model().objects.select_for_update().get(pk=user_id)


def append_entry(
    locked_user,
    kind: str,
    amount: int,
    *,
    idempotency_key: str,
    task=None,
    reason: str = "",
    by=None,
) -> LedgerEntry:
    """Write one entry and move the cached balance with it. Call inside a transaction, with
    `locked_user` from lock_user()."""
    new_balance = locked_user.credit_balance + amount
    if new_balance < 0:
        raise InsufficientCredits(
            f"This needs {-amount} credits and the balance is {locked_user.credit_balance}."
        )
    entry = LedgerEntry.objects.create(
        user=locked_user,
        kind=kind,
        amount=amount,
        balance_after=new_balance,
        task=task,
        idempotency_key=idempotency_key,
        reason=reason,
        created_by=by,
    )
    type(locked_user).objects.filter(pk=locked_user.pk).update(credit_balance=new_balance)
    locked_user.credit_balance = new_balance
    return entry


def append_debits(locked_user, debits: list) -> list[LedgerEntry]:
    """Debit each of `debits` ((task, reason) pairs) its `credits_charged`, as append_entry
    would one by one, but with one INSERT and one balance update: each entry's balance_after
    is the balance once it and those before it are taken. All or none: InsufficientCredits,
    with nothing written, when the balance does not cover them all. Call inside a
    transaction, with `locked_user` from lock_user()."""
    balance = locked_user.credit_balance
    total = sum(task.credits_charged for task, _reason in debits)
    if balance - total < 0:
        raise InsufficientCredits(f"This needs {total} credits and the balance is {balance}.")
    entries = []
    for task, reason in debits:
        balance -= task.credits_charged
        entries.append(
            LedgerEntry(
                user=locked_user,
                kind=LedgerEntry.Kind.DEBIT,
                amount=-task.credits_charged,
                balance_after=balance,
                task=task,
                idempotency_key=f"task:{task.pk}:debit",
                reason=reason,
            )
        )
    LedgerEntry.objects.bulk_create(entries)
    type(locked_user).objects.filter(pk=locked_user.pk).update(credit_balance=balance)
    locked_user.credit_balance = balance
    return entries


@transaction.atomic
def grant(user, amount: int, *, by, reason: str, idempotency_key: str | None = None):
    """Give a member credits (an admin's grant). A repeated `idempotency_key` returns the
    entry the first call wrote."""
    _whole_credits(amount, "grant")
    locked = lock_user(user.pk)
    if idempotency_key and (done := LedgerEntry.objects.filter(idempotency_key=idempotency_key)):
        return done.get()
    return append_entry(
        locked,
        LedgerEntry.Kind.GRANT,
        amount,
        idempotency_key=idempotency_key or f"grant:{uuid.uuid4()}",
        reason=reason,
        by=by,
    )


@transaction.atomic
def deduct(user, amount: int, *, by, reason: str, idempotency_key: str | None = None):
    """Take credits back (an admin's adjustment); never below zero."""
    _whole_credits(amount, "deduction")
    if not reason.strip():
        raise ValueError("Say why the credits are taken back.")
    locked = lock_user(user.pk)
    if idempotency_key and (done := LedgerEntry.objects.filter(idempotency_key=idempotency_key)):
        return done.get()
    return append_entry(
        locked,
        LedgerEntry.Kind.ADJUSTMENT,
        -amount,
        idempotency_key=idempotency_key or f"adjustment:{uuid.uuid4()}",
        reason=reason,
        by=by,
    )


# --- Quotas -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EffectiveQuota:
    max_active_tasks: int | None
    max_credits_per_day: int | None
    max_credits_per_month: int | None
    allowed_models: tuple[str, ...]
    max_tasks_per_run: int = 100

    def allows(self, provider: str, model: str) -> bool:
        if not self.allowed_models:
            return True
        return (
            f"{provider}/{model}" in self.allowed_models or f"{provider}/*" in self.allowed_models
        )


QUOTA_FIELDS = (
    "max_active_tasks",
    "max_credits_per_day",
    "max_credits_per_month",
    "allowed_models",
)


# What only the team sets: no member overrides it.
TEAM_FIELDS = (*QUOTA_FIELDS, "max_tasks_per_run")
DEFAULT_TASKS_PER_RUN = TeamQuota._meta.get_field("max_tasks_per_run").default


def effective_quota(user) -> EffectiveQuota:
    """The member's own limits where set, the team's defaults elsewhere; None is no limit."""
    team = TeamQuota.current()
    own = Quota.objects.filter(user=user).first()
    return _combined(own, {name: getattr(team, name) for name in TEAM_FIELDS})


def _combined(own, team: dict) -> EffectiveQuota:
    def pick(name: str):
        value = getattr(own, name, None) if own else None
        return value if value is not None else team[name]

    allowed = (own.allowed_models if own and own.allowed_models else team["allowed_models"]) or []
    return EffectiveQuota(
        pick("max_active_tasks"),
        pick("max_credits_per_day"),
        pick("max_credits_per_month"),
        tuple(allowed),
        # No team row yet: the field's default.
        team.get("max_tasks_per_run") or DEFAULT_TASKS_PER_RUN,
    )


def lock_for_submit(user_id: int):
    """(the member's row locked as lock_user() locks it, their effective quota), read by one
    statement: a submit needs both, and every extra round trip under the lock is time other
    submits of the same member wait. The quotas are read in the same transaction as the
    balance, so an admin's change applies from the next submit on."""
    team = TeamQuota.objects.order_by("pk")
    locked = (
        get_user_model()
        .objects.select_related("quota")
        # Only the member's row is locked: their quota row may not exist (an outer join), and
        # nothing here writes it.
        .select_for_update(of=("self",))
        .annotate(**{f"team_{name}": Subquery(team.values(name)[:1]) for name in TEAM_FIELDS})
        .get(pk=user_id)
    )
    # A member without a Quota row of their own: the reverse accessor raises AttributeError.
    own = getattr(locked, "quota", None)
    limits = _combined(own, {name: getattr(locked, f"team_{name}") for name in TEAM_FIELDS})
    return locked, limits


def period_starts(now: datetime | None = None) -> tuple[datetime, datetime]:
    """Start of today and of this month, in the site's time zone."""
    local = timezone.localtime(now or timezone.now())
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return day, day.replace(day=1)


def period_ends(now: datetime | None = None) -> tuple[datetime, datetime]:
    """Start of tomorrow and of next month, in the site's time zone: when today's and this
    month's spending limits start again."""
    day, month = period_starts(now)
    tomorrow = timezone.localtime(day + timedelta(hours=36)).replace(hour=0)
    next_month = timezone.localtime(month + timedelta(days=40)).replace(day=1, hour=0)
    return tomorrow, next_month


def spending(user, now: datetime | None = None) -> dict[str, int]:
    """Credits spent (debits less refunds) today and this month."""
    day, month = period_starts(now)
    # Bounded by the month in the WHERE clause, so a submit reads one month of history at most.
    money = LedgerEntry.objects.filter(
        user=user,
        kind__in=[LedgerEntry.Kind.DEBIT, LedgerEntry.Kind.REFUND],
        created_at__gte=min(day, month),
    )
    sums = money.aggregate(
        today=Sum("amount", filter=Q(created_at__gte=day)),
        month=Sum("amount", filter=Q(created_at__gte=month)),
    )
    return {"today": -(sums["today"] or 0), "month": -(sums["month"] or 0)}


# --- Audit -------------------------------------------------------------------------------------


def audit() -> list[str]:
    """Every way the ledger could be wrong, as sentences; empty when it is right."""
    from generations.models import Task

    problems = []
    User = get_user_model()
    sums = dict(
        LedgerEntry.objects.values_list("user")
        .annotate(total=Sum("amount"))
        .values_list("user", "total")
    )
    for user_id, username, cached in User.objects.values_list("pk", "username", "credit_balance"):
        total = sums.get(user_id, 0)
        if cached != total:
            problems.append(f"{username}: cached balance {cached} but entries sum to {total}")
        if total < 0:
            problems.append(f"{username}: entries sum to {total}, below zero")

    tasks = Task.objects.annotate(
        debits=Count("ledger_entries", filter=Q(ledger_entries__kind="debit")),
        refunds=Count("ledger_entries", filter=Q(ledger_entries__kind="refund")),
        debited=Sum("ledger_entries__amount", filter=Q(ledger_entries__kind="debit")),
        refunded=Sum("ledger_entries__amount", filter=Q(ledger_entries__kind="refund")),
    ).values_list(
        "pk", "code", "state", "credits_charged", "debits", "refunds", "debited", "refunded"
    )
    unsuccessful = {Task.State.FAILED, Task.State.CANCELED}
    for _pk, code, state, charged, debits, refunds, debited, refunded in tasks:
        name = f"task {code}"
        if debits != 1:
            problems.append(f"{name}: {debits} debits, expected exactly one")
        elif -debited != charged:
            problems.append(f"{name}: debited {-debited} but charged {charged}")
        if refunds > 1:
            problems.append(f"{name}: {refunds} refunds")
        if refunds and refunded > -(debited or 0):
            problems.append(f"{name}: refunded {refunded}, more than its debit")
        if state in unsuccessful and refunds != 1:
            problems.append(f"{name}: {state} but refunded {refunds} times")
        if state not in unsuccessful and refunds:
            problems.append(f"{name}: {state} yet refunded")
    return problems
