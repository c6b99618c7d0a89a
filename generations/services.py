"""State changes of tasks, and the money that moves with them.

`submit_task` validates, checks quotas and the balance, creates the task and writes its debit in
one transaction. `transition` is the only way a task changes state: a compare-and-swap on the
state plus a TaskEvent. `fail_task` and `cancel_task` refund in the same transaction as that
compare-and-swap, so however many paths (a poll, a webhook, the deadline sweep, an admin) fail
the same task at once, exactly one of them wins and writes the one refund.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.ledger import InsufficientCredits, append_entry, effective_quota, lock_user, spending
from accounts.models import LedgerEntry, ProviderKey
from generations import jobs
from generations.models import PriceMissing, Task, TaskEvent, quote
from generations.providers import GenerationRequest, catalog


@dataclass
class SubmitRefused(Exception):
    """Why a submit was refused; nothing was written. `errors` holds per-field messages."""

    message: str
    errors: dict[str, list[str]] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message


@transaction.atomic
def submit_task(
    user,
    request: GenerationRequest,
    *,
    key: ProviderKey,
    token: uuid.UUID | None = None,
    actor: str = "member",
) -> tuple[Task, bool]:
    """Charge for and create a task. Returns (task, created); a repeated `token` returns the
    task the first call made, and charges nothing more."""
    locked = lock_user(user.pk)
    if token is not None:
        existing = Task.objects.filter(user=locked, submit_token=token).first()
        if existing:
            return existing, False

    request = catalog.with_defaults(request)
    errors = catalog.validate(request)
    if errors:
        raise SubmitRefused("Some fields need fixing.", errors)
    spec = catalog.get(request.provider, request.model)
    if not ProviderKey.objects.usable_by(locked, request.provider).filter(pk=key.pk).exists():
        raise SubmitRefused(
            f"The key {key.label!r} cannot be used for {spec.label} ({key.status}).",
            {"key": ["Choose an active key for this gateway."]},
        )
    try:
        price = quote(request)
    except PriceMissing:
        raise SubmitRefused(f"{spec.label} has no price yet; ask an admin to set one.") from None

    limits = effective_quota(locked)
    if not limits.allows(request.provider, request.model):
        raise SubmitRefused(f"Your quota does not include {spec.label}.")
    if limits.max_active_tasks is not None:
        active = Task.objects.filter(user=locked).active().count()
        if active >= limits.max_active_tasks:
            raise SubmitRefused(
                f"You already have {active} active tasks, your limit; wait for one to finish."
            )
    spent = spending(locked)
    day_limit, month_limit = limits.max_credits_per_day, limits.max_credits_per_month
    if day_limit is not None and spent["today"] + price.total > day_limit:
        raise SubmitRefused(
            f"This costs {price.total} credits; you have spent {spent['today']} of your "
            f"{day_limit} for today."
        )
    if month_limit is not None and spent["month"] + price.total > month_limit:
        raise SubmitRefused(
            f"This costs {price.total} credits; you have spent {spent['month']} of your "
            f"{month_limit} for this month."
        )
    if locked.credit_balance < price.total:
        raise SubmitRefused(
            f"This costs {price.total} credits and your balance is {locked.credit_balance}."
        )

    now = timezone.now()
    task = Task.objects.create(
        user=locked,
        created_at=now,
        # Due at once: the job enqueued below normally takes it first; if that job is lost the
        # dispatcher still finds the task.
        next_check_at=now,
        deadline_at=now + timedelta(minutes=settings.TASK_DEADLINE_MINUTES),
        give_up_at=now + timedelta(hours=settings.TASK_FINAL_LIMIT_HOURS),
        provider=request.provider,
        model=request.model,
        kind=spec.kind.value,
        prompt=request.prompt,
        params={
            "duration": request.duration,
            "resolution": request.resolution,
            "aspect_ratio": request.aspect_ratio,
            "reference_images": list(request.reference_images),
        },
        key=key,
        key_label=f"{key.label} ({key.provider_name} {key.masked})",
        submit_token=token,
        price_unit=price.unit,
        price_credits_per_unit=price.credits_per_unit,
        price_units=price.units,
        price_multiplier=price.multiplier,
        credits_charged=price.total,
    )
    try:
        append_entry(
            locked,
            LedgerEntry.Kind.DEBIT,
            -price.total,
            idempotency_key=f"task:{task.pk}:debit",
            task=task,
            reason=f"{spec.label}",
        )
    except InsufficientCredits as exc:  # the balance was checked under the lock; belt and braces
        raise SubmitRefused(str(exc)) from None
    TaskEvent.objects.create(task=task, to_state=task.state, actor=actor, reason="submitted")
    # Only once the debit and the task are committed; a rollback leaves no job behind.
    transaction.on_commit(partial(jobs.enqueue_submit, task.pk))
    return task, True


def transition(
    task: Task,
    to_state: str,
    *,
    from_states,
    actor: str,
    reason: str = "",
    **fields,
) -> bool:
    """Move `task` to `to_state` if it is still in one of `from_states`; False if another path
    moved it first. Terminal states never change. Call inside a transaction."""
    from_states = [s for s in from_states if s not in Task.TERMINAL_STATES]
    current = (
        Task.objects.select_for_update().filter(pk=task.pk).values_list("state", flat=True).first()
    )
    if current not in from_states:
        return False
    now = timezone.now()
    if to_state in Task.TERMINAL_STATES:
        # Finished for good: nobody polls it again and no lease is left hanging.
        fields.update(finished_at=now, next_check_at=None, lease_owner="", lease_until=None)
    updated = Task.objects.filter(pk=task.pk, state=current).update(
        state=to_state, updated_at=now, **fields
    )
    if not updated:
        return False
    TaskEvent.objects.create(
        task=task, from_state=current, to_state=to_state, actor=actor, reason=reason
    )
    task.state = to_state
    for name, value in fields.items():
        setattr(task, name, value)
    return True


def _end_with_refund(
    task: Task, to_state: str, *, actor: str, reason: str, from_states=Task.ACTIVE_STATES, **fields
) -> bool:
    with transaction.atomic():
        if not transition(
            task,
            to_state,
            from_states=from_states,
            actor=actor,
            reason=reason,
            message=reason,
            **fields,
        ):
            return False
        locked = lock_user(task.user_id)
        append_entry(
            locked,
            LedgerEntry.Kind.REFUND,
            task.credits_charged,
            idempotency_key=f"task:{task.pk}:refund",
            task=task,
            reason=reason[:300],
        )
        return True


def fail_task(task: Task, *, actor: str, reason: str, **fields) -> bool:
    """Fail an active task and refund it, exactly once whoever calls."""
    return _end_with_refund(task, Task.State.FAILED, actor=actor, reason=reason, **fields)


def cancel_task(task: Task, *, actor: str, reason: str = "Canceled.") -> bool:
    """Cancel an active task and refund it, exactly once whoever calls."""
    return _end_with_refund(task, Task.State.CANCELED, actor=actor, reason=reason)


# A member may cancel while the gateway works or while we wait to confirm; a task whose result
# is being saved is already delivered by the gateway, so it finishes instead.
CANCELABLE_STATES = (
    Task.State.QUEUED,
    Task.State.SUBMITTED,
    Task.State.RUNNING,
    Task.State.NEEDS_REVIEW,
)


def cancel_by_member(task: Task, *, actor: str = "member") -> bool:
    """The member's cancel: refunded, never polled again. No gateway documents a cancel call,
    so the gateway may still finish (and bill) the task; the message says so."""
    reason = (
        f"Canceled and refunded. {task.provider_name} offers no way to stop a task, so it may "
        "still finish there; Omniweb will not fetch it."
    )
    return _end_with_refund(
        task, Task.State.CANCELED, actor=actor, reason=reason, from_states=CANCELABLE_STATES
    )


@transaction.atomic
def retry_task(task: Task, *, actor: str = "member") -> Task:
    """Submit a failed or canceled task again as a new task with the same parameters: a new
    debit. Raises SubmitRefused like any submit (no key, no balance, quota)."""
    if task.state not in (Task.State.FAILED, Task.State.CANCELED):
        raise SubmitRefused("Only a failed or canceled task can be tried again.")
    if task.key is None:
        raise SubmitRefused("The key that paid for this task is gone; choose another key.")
    new, _ = submit_task(task.user, task.generation_request(), key=task.key, actor=actor)
    TaskEvent.objects.create(
        task=new, to_state=new.state, actor=actor, reason=f"retry of task {task.code}"
    )
    return new


@transaction.atomic
def mark_delivered(task: Task, *, actor: str) -> bool:
    """An admin confirmed at the gateway that the member got the result another way: the task
    ends succeeded without a refund."""
    return transition(
        task,
        Task.State.SUCCEEDED,
        from_states=[Task.State.NEEDS_REVIEW],
        actor=actor,
        reason="An admin confirmed the gateway delivered this task.",
        message="An admin confirmed the gateway delivered this task.",
        progress=100,
    )


def recheck_now(task: Task) -> bool:
    """Ask the engine to look at an active task at once (admin action, webhook cue)."""
    return bool(
        Task.objects.filter(pk=task.pk, state__in=Task.ACTIVE_STATES).update(
            next_check_at=timezone.now()
        )
    )


def delete_task(task: Task) -> bool:
    """Delete a finished task for its member: files removed, row kept (the ledger refers to it)
    and hidden everywhere. False for an active task, which must be canceled first."""
    from generations.models import Result

    updated = Task.objects.filter(
        pk=task.pk, state__in=Task.TERMINAL_STATES, deleted_at__isnull=True
    ).update(deleted_at=timezone.now())
    if not updated:
        return False
    for result in Result.objects.filter(task=task):
        for stored in (result.file, result.poster):
            if stored:
                stored.delete(save=False)
    Result.objects.filter(task=task).delete()
    return True
