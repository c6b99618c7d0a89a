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
- a submit the gateway never took (connect failure, 429, 5xx) is tried again until the task's
  deadline; a submit whose answer never came (read timeout, broken or unreadable answer) may
  have created and billed a task, so it waits in "needs review" instead of failing;
- polls follow the gateway's advice, then grow with jitter to a cap; errors back off without
  failing the task; `Retry-After` is honoured; a 404 ends a task only after several in a row;
- past its deadline a running task goes to "needs review" and is re-checked slowly; it is failed
  and refunded only on a confirmed failure or after the final limit;
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
from django.db.models import F
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts.models import KeyUnusable
from generations import fetch, providers
from generations.models import Result, Task
from generations.providers import ErrorKind, ProviderError, ProviderStatus
from generations.providers.base import Provider
from generations.services import fail_task, transition

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
        else:
            _wait_for_review(task)


# --- submit -----------------------------------------------------------------------------------


def submit(task: Task) -> None:
    adapter = providers.get(task.provider)
    if task.submit_sent_at is not None:
        # The last attempt sent the request and its worker died before recording the answer.
        _to_review(
            task,
            f"Omniweb lost the answer while handing this task to {adapter.name}; it may have "
            "been created there. An admin will check; if it was not delivered you are refunded.",
            from_states=[State.QUEUED],
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
    # Recorded before the request leaves, so a worker that dies mid-request leaves a trace.
    marked = Task.objects.filter(
        pk=task.pk, state=State.QUEUED, submit_sent_at__isnull=True
    ).update(
        submit_sent_at=timezone.now(),
        submit_attempts=F("submit_attempts") + 1,
        callback_token_hash=callback_token_hash(token) if token else "",
    )
    if not marked:
        return  # canceled, or taken over, while we read the key
    task.submit_attempts += 1
    log(task, "submit", attempt=task.submit_attempts, webhook=bool(callback_url))
    try:
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
    )
    if not moved:
        log(task, "submit_answer_ignored", state=task.state)
        return
    log(task, "submitted", provider_task_id=status.provider_task_id)
    if status.state != providers.State.QUEUED:
        # Omixa may hold the request until the job is done; APIMart may already be running.
        _apply(task, adapter, status, credentials.api_key)


def _submit_failed(task: Task, adapter: Provider, exc: ProviderError, secret: str) -> None:
    answer = _answer(exc.body, secret, exc.status_code)
    if exc.kind == ErrorKind.AUTHENTICATION and task.key:
        task.key.mark_invalid(exc.message)
    if exc.permanent:
        log(task, "submit_refused", logging.WARNING, code=exc.code, status=exc.status_code)
        fail_task(
            task,
            actor=ACTOR,
            reason=f"{exc.message} Your credits were refunded.",
            last_response=answer,
        )
        return
    never_taken = (
        not exc.request_sent
        or exc.kind == ErrorKind.RATE_LIMIT
        or (exc.status_code is not None and exc.status_code >= 500)
    )
    if not never_taken:
        # Sent, but no answer we can read: the gateway may have created and billed it.
        log(task, "submit_unconfirmed", logging.WARNING, code=exc.code)
        _to_review(
            task,
            f"{exc.message} The task may have been created at {adapter.name}; an admin will "
            "check. If it was not delivered you are refunded.",
            from_states=[State.QUEUED],
            last_response=answer,
            submit_sent_at=task.submit_sent_at or timezone.now(),
        )
        return
    now = timezone.now()
    if task.deadline_at and now >= task.deadline_at:
        fail_task(
            task,
            actor=ACTOR,
            reason=f"{adapter.name} did not take the task before its deadline ({exc.message}). "
            "Your credits were refunded.",
            last_response=answer,
        )
        return
    delay = _retry_delay(exc, task.submit_attempts)
    log(task, "submit_retry", code=exc.code, status=exc.status_code, delay=round(delay, 1))
    Task.objects.filter(pk=task.pk, state=State.QUEUED).update(
        submit_sent_at=None,
        next_check_at=now + timedelta(seconds=delay),
        message=f"{exc.message} Omniweb will try again in {round(delay)} s.",
        last_response=answer,
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
    Task.objects.filter(pk=task.pk).update(polls=F("polls") + 1)
    task.polls += 1
    try:
        status = adapter.status(task.provider_task_id, credentials)
    except ProviderError as exc:
        _poll_failed(task, adapter, exc, credentials.api_key)
        return
    _apply(task, adapter, status, credentials.api_key)


def _apply(task: Task, adapter: Provider, status: ProviderStatus, secret: str) -> None:
    """Act on what the gateway says about a task."""
    now = timezone.now()
    fields: dict[str, Any] = {
        "last_response": _answer(status.raw, secret),
        "error_streak": 0,
        "not_found_streak": 0,
    }
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
            reason=f"{adapter.name} reported that the task failed: {status.error} "
            "Your credits were refunded.",
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
        Task.objects.filter(pk=task.pk, state=task.state).update(**fields)
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
                reason=f"{adapter.name} no longer knows this task ({exc.message}). "
                "Your credits were refunded.",
                last_response=answer,
                not_found_streak=streak,
            )
            return
        delay = backoff(streak)
        _note_error(task, exc, delay, answer, not_found_streak=streak)
    elif exc.kind == ErrorKind.AUTHENTICATION:
        if task.key:
            task.key.mark_invalid(exc.message)
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
        **fields,
    }
    if not review:
        update["message"] = f"{exc.message} Checking again in {round(delay)} s."
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
    text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False, default=str)
    if secret and secret in text:
        text = text.replace(secret, "[redacted]")
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
