"""The task engine: submit a task, poll it, and store its result, one leased task at a time.

Every function here expects the caller to hold the task's lease (`Task.objects.claim` or
`lease_due`, see generations/jobs.py), so one worker advances a task at a time. State changes
still go through `services.transition`, a compare-and-swap: a worker whose lease ran out while it
waited on a gateway cannot undo what another worker did, and money moves only inside
`fail_task` / `cancel_task`, exactly once. No gateway call or download runs inside a database
transaction.

The rules, from the gateways' documents and our reliability requirements:
- a definitive refusal of a submit (400/401/402/403/409/422, Omni Video `code: 0`) fails the task
  and refunds it; 401 also marks the key refused;
- a submit is sent again only when its answer proves that nothing was created:
  * the request never left (DNS or connect failure, an address our policy refuses);
  * 429: the gateway turned it away before doing anything (its Retry-After is honoured);
  * 502 and 503: a proxy found no gateway behind it, or the gateway refused work while
    overloaded or down for maintenance;
  Every other answer may hide a created, billable task, so the task waits in "needs review"
  instead: 500 (the gateway failed while handling it, perhaps after creating it), 504 (a proxy
  gave up waiting while the gateway may still have been working), other 5xx, a read timeout, a
  broken connection after sending, and a 2xx whose body we cannot read or that names no task;
- every send respects the task's retry time and its deadline, checked before sending; neither a
  webhook nor an admin's "check now" ever sends a queued task;
- a task in review after a lost answer cannot be looked up; where the gateway later calls the
  task's own webhook URL naming its task id, that id is confirmed with a status query under our
  key and the task carries on from there;
- polls follow the gateway's advice, then grow with jitter to a cap; errors back off without
  failing the task; `Retry-After` is honoured; a 404 ends a task only after several in a row;
- past its deadline a running task goes to "needs review" and is re-checked slowly; it is failed
  and refunded only on a confirmed failure or after the final limit; an unexpected error while
  handling a task still lets these rules apply (`after_error`);
- results are copied into our storage (generations/fetch.py); a result that cannot be stored
  fails the task and refunds it, because members pay only for what they receive.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import secrets
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts.models import KeyUnusable
from generations import fetch, providers
from generations.insight import alerts, metrics
from generations.models import Result, Task
from generations.providers import ErrorKind, ProviderError, ProviderStatus
from generations.providers.base import Provider, is_safe_task_id
from generations.providers.text import redact_value
from generations.services import fail_task, transition, wake_next_on_key

logger = logging.getLogger("omniweb.engine")

ACTOR = "worker"
# 404s (or Omni Video's "task does not exist") in a row before we believe the gateway lost it.
NOT_FOUND_LIMIT = 4
# Downloads of one result before we give up even though its link has not expired.
DOWNLOAD_ATTEMPTS = 6
RETRY_AFTER_CEILING = 3600
LAST_RESPONSE_CHARS = 20_000

State = Task.State
POLLED_STATES = (State.SUBMITTED, State.RUNNING, State.NEEDS_REVIEW)


def log(task: Task, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """One line per event with the task, gateway and key ids: greppable, never a secret."""
    parts = [f"event={event}", f"task={task.pk}", f"gateway={task.provider}", f"key={task.key_id}"]
    parts += [f"{name}={value!r}" for name, value in fields.items()]
    logger.log(level, " ".join(parts))


def callback_token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def advance(task: Task) -> None:
    """Do the next step for a task this worker has leased."""
    if task.state == State.QUEUED:
        submit(task)
    elif task.state == State.FETCHING:
        store_results(task)
    elif task.state in POLLED_STATES:
        if task.provider_task_id:
            poll(task)
        elif task.callback_task_id:
            adopt_callback_id(task)
        else:
            _wait_for_review(task)


# --- submit -----------------------------------------------------------------------------------

# Statuses that prove the gateway created nothing, so the same submit may be sent again.
RESENDABLE_STATUSES = frozenset({429, 502, 503})


def submit(task: Task) -> None:
    adapter = providers.get(task.provider)
    if task.submit_sent_at is not None:
        # The last attempt sent the request and its worker died before recording the answer.
        _to_review(
            task,
            lost_answer_message(task, adapter, "Omniweb lost the answer"),
            from_states=[State.QUEUED],
        )
        return
    now = timezone.now()
    if task.next_check_at and task.next_check_at > now:
        return  # not yet: it waits for its retry time
    if task.deadline_at and now >= task.deadline_at:
        fail_task(
            task,
            actor=ACTOR,
            reason=f"{adapter.name} did not take the task before its deadline. Nothing more "
            "was sent; your credits were refunded.",
        )
        return
    try:
        credentials = task.key.credentials() if task.key else None
    except KeyUnusable as exc:
        credentials, problem = None, str(exc)
    else:
        problem = "The key that paid for this task was deleted."
    if credentials is None:
        fail_task(
            task,
            actor=ACTOR,
            reason=f"{problem} Nothing was sent to {adapter.name}; your credits were refunded.",
        )
        return

    token, callback_url = "", None
    if adapter.supports_webhook and settings.PUBLIC_URL:
        token = secrets.token_urlsafe(32)
        path = reverse("generations-webhook", args=[token])
        callback_url = f"{settings.PUBLIC_URL}{path}"
    if not take_slot(task, adapter, now, callback_token_hash(token) if token else ""):
        return  # waiting for a free slot, or canceled, taken over or rescheduled meanwhile
    task.submit_attempts += 1
    task.callback_token_hash = callback_token_hash(token) if token else ""
    log(task, "submit", attempt=task.submit_attempts, webhook=bool(callback_url))
    try:
        with metrics.timed_submit(task.provider):
            status = adapter.submit(task.generation_request(callback_url), credentials)
    except ProviderError as exc:
        _submit_failed(task, adapter, exc, credentials.api_key)
        return

    now = timezone.now()
    moved = _move(
        task,
        State.SUBMITTED,
        from_states=[State.QUEUED],
        reason=f"{adapter.name} accepted it as {status.provider_task_id}",
        provider_task_id=status.provider_task_id,
        last_response=_answer(status.raw, credentials.api_key),
        gateway_cost=status.cost,
        estimated_seconds=status.estimated_seconds,
        next_check_at=now + timedelta(seconds=first_poll_delay(adapter, status)),
        error_streak=0,
        message="",
        details="",
    )
    if not moved:
        log(task, "submit_answer_ignored", state=task.state)
        return
    log(task, "submitted", provider_task_id=status.provider_task_id)
    if status.state != providers.State.QUEUED:
        # Omixa may hold the request until the job is done; APIMart may already be running.
        _apply(task, adapter, status, credentials.api_key)


# A task waiting for a free slot on its key looks again after this long at the latest; it is
# normally woken sooner, when one of the key's tasks leaves the gateway (services.transition).
SLOT_WAIT_SECONDS = 15
# How a waiting task's message starts; the run page counts the tasks that wait by it.
WAITING_FOR_SLOT = "Waiting for a free slot"


def take_slot(task: Task, adapter: Provider, now: datetime, token_hash: str) -> bool:
    """Take one of the key's slots at its gateway for `task` and mark the task as being sent;
    False when it must not be sent now.

    The mark (submit_sent_at) is recorded before the request leaves, so a worker that dies
    mid-request leaves a trace; its conditions repeat what submit() checked, so a task moved
    meanwhile is not sent. A key has at most `max_in_flight` tasks at its gateway: those it
    has (IN_FLIGHT_STATES) and those on their way. The key's row is locked while they are
    counted and the mark is written, so two workers sending the key's tasks at once count one
    after the other. A task with no free slot stays queued, says what it waits for, and its
    deadline counts from when it leaves, not while it waits its turn.

    A slot freed while the wait is being recorded is not lost: a task leaving its slot wakes
    the key's first waiting task once its own change commits (services.transition), and a
    task that recorded its wait counts again once that commits, so whichever of the two
    commits last sees the other."""
    from accounts.models import ProviderKey

    with transaction.atomic():
        limit = (
            # FOR NO KEY UPDATE: enough to keep two senders apart, and new tasks that refer to
            # the key (a large order's INSERT) do not wait for it.
            ProviderKey.objects.select_for_update(no_key=True)
            .filter(pk=task.key_id)
            .values_list("max_in_flight", flat=True)
            .first()
        )
        busy = 0 if limit is None else _busy_slots(task)
        if limit is not None and busy >= limit:
            _wait_for_slot(task, adapter, now, busy, limit)
        else:
            return bool(
                Task.objects.filter(
                    pk=task.pk,
                    state=State.QUEUED,
                    submit_sent_at__isnull=True,
                    next_check_at__lte=now,
                ).update(
                    submit_sent_at=timezone.now(),
                    submit_attempts=F("submit_attempts") + 1,
                    callback_token_hash=token_hash,
                )
            )
    if _busy_slots(task) < limit:
        # A slot came free while the wait was recorded: look again at once.
        Task.objects.filter(pk=task.pk, state=State.QUEUED, submit_sent_at__isnull=True).update(
            next_check_at=timezone.now()
        )
    return False


def _busy_slots(task: Task) -> int:
    """The key's other tasks that hold one of its slots at the gateway."""
    return (
        Task.objects.filter(key_id=task.key_id)
        .filter(
            Q(state__in=Task.IN_FLIGHT_STATES) | Q(state=State.QUEUED, submit_sent_at__isnull=False)
        )
        .exclude(pk=task.pk)
        .count()
    )


def _wait_for_slot(task: Task, adapter: Provider, now: datetime, busy: int, limit: int) -> None:
    label = task.key.label if task.key else "its key"
    message = (
        f"{WAITING_FOR_SLOT} on {label}: {busy} of its {limit} tasks at {adapter.name} "
        "are running. It is sent as soon as one finishes."
    )
    fields = {"next_check_at": now + timedelta(seconds=SLOT_WAIT_SECONDS), "message": message}
    deadline = now + timedelta(minutes=settings.TASK_DEADLINE_MINUTES)
    if task.deadline_at and task.deadline_at < deadline:
        fields["deadline_at"] = deadline
    give_up = now + timedelta(hours=settings.TASK_FINAL_LIMIT_HOURS)
    if task.give_up_at and task.give_up_at < give_up:
        fields["give_up_at"] = give_up
    waited = Task.objects.filter(pk=task.pk, state=State.QUEUED, submit_sent_at__isnull=True)
    if waited.update(**fields) and task.message != message:
        log(task, "slot_wait", busy=busy, limit=limit)


def lost_answer_message(task: Task, adapter: Provider, what: str) -> str:
    """What a member reads when a submit's answer was lost: nothing can be checked
    automatically, so say who does what, and when the refund comes at the latest."""
    when = timezone.localtime(task.give_up_at).strftime("%d %b %Y %H:%M") if task.give_up_at else ""
    parts = [
        f"{what} while handing this task to {adapter.name}, so it may have been created there "
        "and Omniweb cannot look it up."
    ]
    if task.callback_token_hash:
        parts.append(
            f"If {adapter.name} reports the task to Omniweb's callback, Omniweb picks it up by "
            "itself."
        )
    parts.append(f"An admin can check with {adapter.name};")
    parts.append(
        f"if nothing is delivered, your credits are refunded by {when}."
        if when
        else "if nothing is delivered, your credits are refunded."
    )
    return " ".join(parts)


def _submit_failed(task: Task, adapter: Provider, exc: ProviderError, secret: str) -> None:
    answer = _answer(exc.body, secret, exc.status_code)
    details = exc_details(exc)
    counted = metrics.answer_counts(exc.status_code)  # added to whichever update follows
    if exc.kind == ErrorKind.AUTHENTICATION and task.key:
        task.key.mark_invalid(key_problem(exc))
    if exc.kind == ErrorKind.PAYMENT and task.key:
        alerts.key_refused_on_commit(task.key, key_problem(exc), status=402)
    if exc.permanent:
        log(task, "submit_refused", logging.WARNING, code=exc.code, status=exc.status_code)
        fail_task(
            task,
            actor=ACTOR,
            reason=f"{exc.message} Your credits were refunded.",
            last_response=answer,
            details=details,
            **counted,
        )
        return
    nothing_created = not exc.request_sent or exc.status_code in RESENDABLE_STATUSES
    if not nothing_created:
        # Sent, and the answer does not prove nothing was made: the gateway may have created
        # and billed it, so sending it again could make (and bill) a second one.
        log(task, "submit_unconfirmed", logging.WARNING, code=exc.code, status=exc.status_code)
        _to_review(
            task,
            lost_answer_message(task, adapter, exc.message.rstrip(".") + ";"),
            from_states=[State.QUEUED],
            last_response=answer,
            details=details,
            submit_sent_at=task.submit_sent_at or timezone.now(),
            **counted,
        )
        return
    now = timezone.now()
    delay = _retry_delay(exc, task.submit_attempts)
    if task.deadline_at and now + timedelta(seconds=delay) >= task.deadline_at:
        fail_task(
            task,
            actor=ACTOR,
            reason=f"{adapter.name} did not take the task before its deadline ({exc.message}) "
            "Nothing more was sent; your credits were refunded.",
            last_response=answer,
            details=details,
            **counted,
        )
        return
    log(task, "submit_retry", code=exc.code, status=exc.status_code, delay=round(delay, 1))
    Task.objects.filter(pk=task.pk, state=State.QUEUED).update(
        submit_sent_at=None,
        next_check_at=now + timedelta(seconds=delay),
        message=f"{exc.message} Omniweb will try again in {round(delay)} s.",
        details=details,
        last_response=answer,
        **counted,
    )
    # Turned away, it no longer holds a slot: another of the key's tasks may go meanwhile.
    wake_next_on_key(task.key_id)


def exc_details(exc: ProviderError) -> str:
    """The gateway's own words about an error, as the provider layer bounded and redacted
    them; shown to the member under "details"."""
    return exc.details or ""


def key_problem(exc: ProviderError) -> str:
    """What the key's owner reads on the Keys page about a refusal."""
    return f"{exc.message} ({exc.details})" if exc.details else exc.message


# --- a lost submit found again through the gateway's callback -------------------------------


def note_callback(task: Task, body: Any) -> None:
    """A gateway called this task's own webhook URL. Usually that only means "poll now". For a
    task whose submit answer was lost, the call may name the gateway's task id: keep it as a
    candidate, to be confirmed with a status query under our key before it is believed."""
    from generations.services import recheck_now

    if task.state == State.NEEDS_REVIEW and not task.provider_task_id:
        candidate = _callback_task_id(task, body)
        if candidate:
            Task.objects.filter(pk=task.pk, state=State.NEEDS_REVIEW, provider_task_id="").update(
                callback_task_id=candidate, next_check_at=timezone.now()
            )
            log(task, "callback_task_id", candidate=candidate)
        return
    recheck_now(task)


def _callback_task_id(task: Task, body: Any) -> str:
    adapter = providers.get(task.provider)
    try:
        candidate = adapter.parse_status(body).provider_task_id
    except Exception:  # any shape at all may arrive here; a body we cannot read names nothing
        return ""
    if not is_safe_task_id(candidate):
        return ""
    # One upstream task never stands for two of ours.
    if Task.objects.filter(provider=task.provider, provider_task_id=candidate).exists():
        return ""
    return candidate


def adopt_callback_id(task: Task) -> None:
    """Confirm a callback's task id with the gateway, then carry on as if the submit's answer
    had arrived. An id the gateway does not know (under our key) is dropped."""
    adapter = providers.get(task.provider)
    candidate = task.callback_task_id
    try:
        if task.key is None:
            raise KeyUnusable("The key that paid for this task was deleted.")
        credentials = task.key.credentials()
        status = adapter.status(candidate, credentials)
    except KeyUnusable:
        _wait_for_review(task)
        return
    except ProviderError as exc:
        if exc.kind in (ErrorKind.NOT_FOUND, ErrorKind.BUSINESS, ErrorKind.AUTHENTICATION):
            log(task, "callback_task_id_refused", logging.WARNING, code=exc.code)
            Task.objects.filter(pk=task.pk, state=State.NEEDS_REVIEW).update(
                callback_task_id="", next_check_at=task.give_up_at
            )
        else:
            _schedule(task, _retry_delay(exc, task.error_streak + 1))
        return
    if status.provider_task_id != candidate:
        log(task, "callback_task_id_mismatch", logging.WARNING)
        Task.objects.filter(pk=task.pk).update(callback_task_id="", next_check_at=task.give_up_at)
        return
    moved = _move(
        task,
        State.RUNNING,
        from_states=[State.NEEDS_REVIEW],
        reason=f"{adapter.name} confirmed it as {candidate} after a callback",
        provider_task_id=candidate,
        callback_task_id="",
        message="",
        details="",
        error_streak=0,
    )
    if moved:
        log(task, "recovered", provider_task_id=candidate)
        _apply(task, adapter, status, credentials.api_key)


# --- after an unexpected error --------------------------------------------------------------


def after_error(pk: int) -> None:
    """Something unexpected failed while handling this task. Apply the deadline rules anyway,
    so no answer a gateway sends can keep a task from review or its refund."""
    task = Task.objects.select_related("key").filter(pk=pk).first()
    if task is None or not task.is_active or _past_final_limit(task):
        return
    now = timezone.now()
    if not (task.deadline_at and now >= task.deadline_at):
        return
    adapter = providers.get(task.provider)
    if task.state == State.QUEUED and task.submit_sent_at is None:
        fail_task(
            task,
            actor=ACTOR,
            reason=f"{adapter.name} did not take the task before its deadline. Nothing more "
            "was sent; your credits were refunded.",
        )
    elif task.state == State.QUEUED:
        _to_review(
            task,
            lost_answer_message(task, adapter, "Omniweb lost the answer"),
            from_states=[State.QUEUED],
        )
    elif task.state in (State.SUBMITTED, State.RUNNING):
        _to_review(
            task,
            f"Omniweb could not read {adapter.name}'s answers about this task before its "
            "deadline. It checks again every few minutes; if nothing is delivered, your "
            "credits are refunded.",
        )


# --- poll -------------------------------------------------------------------------------------


def poll(task: Task) -> None:
    adapter = providers.get(task.provider)
    try:
        if task.key is None:
            raise KeyUnusable("The key that paid for this task was deleted.")
        credentials = task.key.credentials()
    except KeyUnusable as exc:
        _to_review(
            task,
            f"{exc} Omniweb cannot check on the task until the key works again; if the task "
            "is not delivered you are refunded.",
        )
        if not _past_final_limit(task):
            _schedule(task, settings.REVIEW_RECHECK_SECONDS)
        return
    # Counted by the update that records the answer, whatever it is, not by one of its own.
    task.polls += 1
    try:
        with metrics.timed_poll(task.provider):
            status = adapter.status(task.provider_task_id, credentials)
    except ProviderError as exc:
        _poll_failed(task, adapter, exc, credentials.api_key)
        return
    _apply(task, adapter, status, credentials.api_key, polled=True)


def _apply(
    task: Task, adapter: Provider, status: ProviderStatus, secret: str, *, polled: bool = False
) -> None:
    """Act on what the gateway says about a task (`polled`: the answer to a poll, which the
    update counts)."""
    now = timezone.now()
    fields: dict[str, Any] = {
        "last_response": _answer(status.raw, secret),
        "error_streak": 0,
        "not_found_streak": 0,
    }
    if polled:
        fields["polls"] = task.polls
    if status.cost is not None:
        fields["gateway_cost"] = status.cost
    if status.estimated_seconds is not None:
        fields["estimated_seconds"] = status.estimated_seconds
    if status.progress is not None:
        fields["progress"] = status.progress

    if status.state == providers.State.SUCCEEDED:
        results = [
            {"url": r.url, "valid_until": r.expires_at.isoformat() if r.expires_at else None}
            for r in status.results
        ]
        moved = _move(
            task,
            State.FETCHING,
            from_states=POLLED_STATES,
            reason=f"{adapter.name} finished it",
            gateway_results=results,
            next_check_at=now,
            message="",
            **{**fields, "progress": 100},
        )
        if moved:
            log(task, "gateway_succeeded", results=len(results))
            store_results(task)
        return

    if status.state == providers.State.FAILED:
        log(task, "gateway_failed", logging.WARNING, code=status.error_code)
        fail_task(
            task,
            actor=ACTOR,
            reason=f"{status.error} Your credits were refunded.",
            details=status.details or "",
            **fields,
        )
        return

    # Still queued or running at the gateway.
    if task.state == State.NEEDS_REVIEW:
        delay = settings.REVIEW_RECHECK_SECONDS
    else:
        delay = poll_delay(adapter, task.polls)
    fields["next_check_at"] = now + timedelta(seconds=delay)
    if status.state == providers.State.RUNNING and task.state == State.SUBMITTED:
        _move(
            task,
            State.RUNNING,
            from_states=[State.SUBMITTED],
            reason=f"{adapter.name} started it",
            message="",
            **fields,
        )
    else:
        if task.state != State.NEEDS_REVIEW:
            fields["message"] = ""
        if polled:
            fields["polls"] = F("polls") + 1  # a second poll racing this one still counts
        rows = Task.objects.filter(pk=task.pk, state=task.state)
        if not _deadlines_due(task):
            # Nothing is left to do for this task, so the same update lets go of its lease: a
            # poll that finds a task still running costs its load and this one statement. The
            # condition on the owner keeps a worker whose lease ran out from writing over the
            # answer of the worker that took the task over.
            held = rows.filter(lease_owner=task.lease_owner).update(
                lease_owner="", lease_until=None, **fields
            )
            if held:
                task.lease_owner, task.lease_until = "", None
            return
        rows.update(**fields)
    _check_deadlines(task, adapter)


def _poll_failed(task: Task, adapter: Provider, exc: ProviderError, secret: str) -> None:
    answer = _answer(exc.body, secret, exc.status_code)
    if exc.kind in (ErrorKind.NOT_FOUND, ErrorKind.BUSINESS):
        streak = task.not_found_streak + 1
        if streak >= NOT_FOUND_LIMIT:
            log(task, "gateway_lost_task", logging.WARNING, streak=streak)
            fail_task(
                task,
                actor=ACTOR,
                reason=f"{adapter.name} no longer knows this task. Your credits were refunded.",
                details=exc_details(exc),
                last_response=answer,
                not_found_streak=streak,
                polls=task.polls,
                **metrics.answer_counts(exc.status_code),
            )
            return
        delay = backoff(streak)
        _note_error(task, exc, delay, answer, not_found_streak=streak)
    elif exc.kind == ErrorKind.AUTHENTICATION:
        if task.key:
            task.key.mark_invalid(key_problem(exc))
        _to_review(
            task,
            f"{exc.message} Omniweb cannot check on the task until the key is replaced; if the "
            "task is not delivered you are refunded.",
            last_response=answer,
        )
        delay = settings.REVIEW_RECHECK_SECONDS
        _note_error(task, exc, delay, answer, review=True)
    else:
        # Rate limits, 5xx, timeouts, broken bodies, unknown statuses: wait, never fail.
        delay = _retry_delay(exc, task.error_streak + 1)
        _note_error(task, exc, delay, answer, error_streak=task.error_streak + 1)
    _check_deadlines(task, adapter)


def _note_error(
    task: Task, exc: ProviderError, delay: float, answer, *, review: bool = False, **fields
) -> None:
    log(task, "poll_error", code=exc.code, status=exc.status_code, delay=round(delay, 1))
    update = {
        "next_check_at": timezone.now() + timedelta(seconds=delay),
        "last_response": answer,
        "polls": F("polls") + 1,  # a poll that failed is a poll all the same
        **metrics.answer_counts(exc.status_code),
        **fields,
    }
    if not review:
        update["message"] = f"{exc.message} Checking again in {round(delay)} s."
        update["details"] = exc_details(exc)
    Task.objects.filter(pk=task.pk, state__in=POLLED_STATES).update(**update)
    for name, value in fields.items():
        setattr(task, name, value)


def _check_deadlines(task: Task, adapter: Provider) -> None:
    if _past_final_limit(task):
        return
    now = timezone.now()
    running = task.state in (State.SUBMITTED, State.RUNNING)
    if running and task.deadline_at and now >= task.deadline_at:
        _to_review(
            task,
            f"{adapter.name} is still working on this task past its deadline. Omniweb keeps "
            "checking; if it is never delivered you are refunded.",
        )
        _schedule(task, settings.REVIEW_RECHECK_SECONDS)


def _deadlines_due(task: Task) -> bool:
    """Whether _check_deadlines has anything to do for this task now."""
    now = timezone.now()
    if task.give_up_at and now >= task.give_up_at:
        return True
    running = task.state in (State.SUBMITTED, State.RUNNING)
    return bool(running and task.deadline_at and now >= task.deadline_at)


def _past_final_limit(task: Task) -> bool:
    """Fail and refund a task with no confirmed result after the final limit."""
    if not task.give_up_at or timezone.now() < task.give_up_at:
        return False
    hours = settings.TASK_FINAL_LIMIT_HOURS
    fail_task(
        task,
        actor=ACTOR,
        reason=f"No confirmed result after {hours} hours, so Omniweb refunded your credits. "
        "If the gateway delivers later, it will not be fetched.",
    )
    return True


def _wait_for_review(task: Task) -> None:
    """A task in review that we cannot poll (no gateway id): only an admin or the final limit
    ends it."""
    if not _past_final_limit(task):
        Task.objects.filter(pk=task.pk, state=State.NEEDS_REVIEW).update(
            next_check_at=task.give_up_at
        )


def _to_review(task: Task, message: str, *, from_states=(State.SUBMITTED, State.RUNNING), **fields):
    if task.state == State.NEEDS_REVIEW:
        return False
    moved = _move(
        task,
        State.NEEDS_REVIEW,
        from_states=from_states,
        reason=message,
        message=message,
        next_check_at=timezone.now() + timedelta(seconds=settings.REVIEW_RECHECK_SECONDS),
        **fields,
    )
    if moved:
        log(task, "needs_review", logging.WARNING)
    return moved


def _move(task: Task, to_state: str, *, from_states, reason: str, **fields) -> bool:
    """The engine's state change: the compare-and-swap, in its own transaction."""
    with transaction.atomic():
        return transition(
            task, to_state, from_states=from_states, actor=ACTOR, reason=reason, **fields
        )


def _schedule(task: Task, seconds: float) -> None:
    Task.objects.filter(pk=task.pk, state__in=Task.ACTIVE_STATES).update(
        next_check_at=timezone.now() + timedelta(seconds=seconds)
    )


# --- results ----------------------------------------------------------------------------------


def store_results(task: Task) -> None:
    """Copy every result into our storage, then finish the task. Safe to run twice at once:
    one row per result position wins and the loser deletes its copy."""
    stored = set(Result.objects.filter(task=task).values_list("position", flat=True))
    for position, item in enumerate(task.gateway_results):
        if position in stored:
            continue
        try:
            media = fetch.fetch_result(item["url"], kind=task.kind)
        except fetch.FetchFailed as exc:
            _download_failed(task, item, exc)
            return
        try:
            with transaction.atomic():
                Result.objects.create(
                    task=task,
                    position=position,
                    file=media.name,
                    poster=media.poster_name or "",
                    content_type=media.content_type,
                    size=media.size,
                    width=media.width,
                    height=media.height,
                    duration=media.duration,
                )
        except IntegrityError:
            _delete_files(media)
            log(task, "result_already_stored", position=position)
            continue
        log(task, "result_stored", position=position, size=media.size, type=media.content_type)
    done = _move(
        task,
        State.SUCCEEDED,
        from_states=[State.FETCHING],
        reason="result stored",
        message="",
        progress=100,
    )
    if done:
        log(task, "succeeded")


def _download_failed(task: Task, item: dict, exc: fetch.FetchFailed) -> None:
    now = timezone.now()
    attempts = task.download_attempts + 1
    expires = parse_datetime(item.get("valid_until") or "")
    link_alive = expires is None or now < expires
    if exc.retryable and link_alive and attempts < DOWNLOAD_ATTEMPTS:
        delay = backoff(attempts)
        if expires:
            delay = max(1.0, min(delay, (expires - now).total_seconds()))
        log(task, "download_retry", logging.WARNING, attempt=attempts, delay=round(delay, 1))
        Task.objects.filter(pk=task.pk, state=State.FETCHING).update(
            download_attempts=attempts,
            next_check_at=now + timedelta(seconds=delay),
            message=f"Saving the result failed ({exc.message}); trying again.",
        )
        return
    log(task, "download_failed", logging.WARNING, attempt=attempts)
    fail_task(
        task,
        actor=ACTOR,
        reason=f"The result could not be saved: {exc.message} Your credits were refunded.",
        download_attempts=attempts,
    )


def _delete_files(media: fetch.StoredMedia) -> None:
    from django.core.files.storage import default_storage

    for name in (media.name, media.poster_name):
        if name:
            default_storage.delete(name)


# --- timing -----------------------------------------------------------------------------------


def _jitter(seconds: float) -> float:
    # Spread polls so hundreds of tasks submitted together do not hit the gateway together.
    return seconds * random.uniform(0.8, 1.2)


def first_poll_delay(adapter: Provider, status: ProviderStatus) -> float:
    """The gateway's advice: its own first-poll window, or half its estimate if longer."""
    delay = random.uniform(*adapter.first_poll_seconds)
    if status.estimated_seconds:
        delay = max(delay, status.estimated_seconds / 2)
    return min(delay, settings.POLL_CAP_SECONDS)


def poll_delay(adapter: Provider, polls: int) -> float:
    """The gateway's interval for the first few polls, then 25% longer each time, to the cap."""
    base = random.uniform(*adapter.poll_interval_seconds) * 1.25 ** max(0, polls - 6)
    return min(_jitter(base), settings.POLL_CAP_SECONDS)


def backoff(streak: int) -> float:
    """After `streak` errors in a row: 4, 8, 16 ... seconds with jitter, to the error cap."""
    return min(_jitter(2.0 ** (min(streak, 16) + 1)), settings.ERROR_BACKOFF_CAP_SECONDS)


def _retry_delay(exc: ProviderError, streak: int) -> float:
    if exc.retry_after is not None:
        return max(1.0, min(exc.retry_after, RETRY_AFTER_CEILING))
    return backoff(streak)


# --- what admins see --------------------------------------------------------------------------


def _answer(body: Any, secret: str, status_code: int | None = None) -> dict:
    """The gateway's answer as admins see it: capped, and never containing our key."""
    if body is None:
        return {"status_code": status_code} if status_code else {}
    # The provider layer redacted it already; again here, for answers that come another way.
    body = redact_value(body, secret)
    text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False, default=str)
    text = text.replace("\x00", "").replace("\\u0000", "")  # PostgreSQL's JSON refuses NUL
    if len(text) > LAST_RESPONSE_CHARS:
        text = text[:LAST_RESPONSE_CHARS]
        return {"status_code": status_code, "truncated": text, "at": _now_iso()}
    try:
        parsed = json.loads(text) if not isinstance(body, str) else text
    except ValueError:
        parsed = text
    return {"status_code": status_code, "body": parsed, "at": _now_iso()}


def _now_iso() -> str:
    now: datetime = timezone.now()
    return now.isoformat()
