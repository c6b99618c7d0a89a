"""State changes of tasks, and the money that moves with them.

`submit_order` is the one submit path: it validates an order of one or more requests, checks
the rate, quotas and balance for all of it, and creates the tasks with their debits and
reference images in one transaction, or nothing. `transition` is the only way a task changes
state: a compare-and-swap on the state plus a TaskEvent. `fail_task` and `cancel_task` refund
in the same transaction as that compare-and-swap, so however many paths (a poll, a webhook, the
deadline sweep, an admin) fail the same task at once, exactly one of them wins and writes the
one refund.
"""

from __future__ import annotations

import base64
import math
import secrets
import uuid
from dataclasses import dataclass, field, replace
from datetime import timedelta
from functools import partial
from typing import Protocol

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Count, Min, Q, Subquery
from django.urls import reverse
from django.utils import timezone

from accounts.ledger import (
    EffectiveQuota,
    InsufficientCredits,
    append_debits,
    append_entry,
    lock_for_submit,
    lock_user,
    period_ends,
    spending,
)
from accounts.models import LedgerEntry, ProviderKey
from generations.models import (
    PriceMissing,
    ReferenceImage,
    Result,
    Run,
    Task,
    TaskEvent,
    price_list,
    quote,
)
from generations.providers import GenerationRequest, catalog
from omniweb import broker

# Gateways whose document accepts an image inline as a base64 data URI; the others fetch a URL.
DATA_URI_GATEWAYS = frozenset({"apimart"})


@dataclass
class SubmitRefused(Exception):
    """Why a submit was refused; nothing was written. `errors` holds per-field messages and
    `code` says which rule refused it (for callers that answer machines, like an API)."""

    message: str
    errors: dict[str, list[str]] = field(default_factory=dict)
    code: str = "refused"
    # For a limit that frees itself with time (the rate, a day's or month's spending): the
    # seconds until a submit may pass, which an API answers as Retry-After.
    retry_after: int | None = None

    def __str__(self) -> str:
        return self.message


class OrderImage(Protocol):
    """A reference image an order carries: an upload checked by the create form, or a copy of
    one a task was sent before. `encoded()` decodes it once and returns clean bytes (no
    metadata) or raises ValidationError; the service calls it only after the cheap checks."""

    name: str
    width: int
    height: int

    def encoded(self): ...


@dataclass(frozen=True)
class OrderItem:
    """One task of an order: what to generate and which key pays for it. `request` holds only
    the addresses the member pasted; the order's images are added in front of them.

    `key_checked` says the caller picked `key`, in this same request, from the keys
    `ProviderKey.objects.usable_by(user, request.provider)` lists (as the create form does), so
    the service need not ask the database again. Anything else (a retry's old key, an API's
    key code) leaves it False and the key is checked under the member's lock."""

    request: GenerationRequest
    key: ProviderKey
    key_checked: bool = False
    # The failed or canceled task this item tries again, if it does.
    retry_of: Task | None = None


@dataclass(frozen=True)
class Order:
    """Everything one submit asks for. Every way a task starts (the Create page, a batch, Try
    again, and whatever comes next) builds one of these and hands it to `submit_order`.

    The order's tasks make one new run, named `name` (the first prompt, shortened, when
    empty), unless `run` names a run of the member's to add them to (Try again)."""

    items: tuple[OrderItem, ...]
    visibility: str = "team"
    images: tuple[OrderImage, ...] = ()
    token: uuid.UUID | None = None
    actor: str = "member"
    note: str = "submitted"
    name: str = ""
    run: Run | None = None


@dataclass(frozen=True)
class OrderOutcome:
    run: Run
    tasks: list[Task]
    created: bool  # False when the token had already made these tasks: nothing was charged
    balance: int  # the member's balance once the order is done, read under their lock
    # The prices the order was charged at, by (provider, model), for a page that shows them.
    prices: dict = field(default_factory=dict)


def item_token(token: uuid.UUID | None, index: int) -> uuid.UUID | None:
    """The submit token of an order's `index`th task: the order's own for the first, derived
    for the others, so a repeated order finds every task it made."""
    if token is None or index == 0:
        return token
    return uuid.uuid5(token, str(index))


# Durable: a submit is always a transaction of its own, never a savepoint inside someone
# else's, so its debit is committed before its job is enqueued and the lock is held only as
# long as the submit itself.
@transaction.atomic(durable=True)
def submit_order(user, order: Order) -> OrderOutcome:
    """Charge for and create every task of `order`, or none: the one submit path.

    Under one lock of the member's row (read with their quotas) it checks, for the whole order,
    the token, the submit rate, the quotas (active tasks, day and month spending), the keys and
    the balance; only then does it decode the reference images, store them, and write the
    tasks with their debits. The jobs that send the tasks are enqueued by name once the
    transaction commits. A repeated token returns the tasks the first call made and charges
    nothing. Raises SubmitRefused, with nothing written and nothing stored.

    Each thing is read once: the member's row, the quotas, the recent tasks (one count for
    the token, the rate and the active limit), the prices; every field of a task, its
    visibility included, goes into its INSERT.
    """
    if not order.items:
        raise SubmitRefused("There is nothing to submit.", code="empty")
    locked, limits = lock_for_submit(user.pk)
    counts = _task_counts(locked, order.token, active=limits.max_active_tasks is not None)
    if counts.get("repeated"):
        tokens = [item_token(order.token, i) for i in range(len(order.items))]
        tasks = {
            t.submit_token: t
            for t in Task.objects.filter(user=locked)
            .filter(submit_token__in=tokens)
            .select_related("run")
        }
        found = [tasks[t] for t in tokens if t in tasks]
        return OrderOutcome(found[0].run, found, created=False, balance=locked.credit_balance)
    checked, prices, total = _checked_order(locked, limits, counts, order)

    saved: list[str] = []
    try:
        encoded = _encode_images(order.images)
        # One time for the whole order: the submit rate counts orders by it (_task_counts).
        now = timezone.now()
        run = order.run or Run.objects.create(
            user=locked,
            name=order.name or Run.name_for(order.items[0].request.prompt),
            visibility=order.visibility,
            created_at=now,
        )
        tasks = _create_tasks(locked, order, run, now, checked, encoded, saved)
    except BaseException:
        # Storage is not transactional: whatever this attempt stored goes with the rollback.
        for name in saved:
            default_storage.delete(name)
        raise
    for task in tasks[:ORDER_JOBS]:
        # By name, after commit: a rollback leaves no job, and this module never imports the
        # engine (which imports this module).
        transaction.on_commit(partial(enqueue_submit, task.pk))
    return OrderOutcome(run, tasks, created=True, balance=locked.credit_balance, prices=prices)


def _checked_order(locked, limits: EffectiveQuota, counts: dict, order: Order):
    """(checked items, prices, total) of `order`, or SubmitRefused: every check a submit makes
    before it writes anything."""
    if order.run is not None and order.run.user_id != locked.pk:
        raise SubmitRefused("Tasks can only be added to your own runs.", code="run")
    most = limits.max_tasks_per_run
    if len(order.items) > most:
        raise SubmitRefused(
            f"This makes {len(order.items)} tasks; one submit may make at most {most}. "
            "Split it into smaller runs.",
            code="too_many",
        )
    checked, prices = _checked_items(locked, order.items, len(order.images))
    total = sum(price.total for _item, _spec, price in checked)
    _check_limits(locked, limits, counts, checked, total)
    return checked, prices, total


@dataclass(frozen=True)
class OrderQuote:
    """What an order would cost: [(item with defaults, spec, Quote)] and their total."""

    items: list
    total: int
    balance: int


@transaction.atomic
def quote_order(user, order: Order) -> OrderQuote:
    """What `submit_order` would charge for `order` now, with the same checks and the same
    refusals (SubmitRefused), writing and charging nothing. Reference images are only
    counted; they are decoded when the order is submitted."""
    locked, limits = lock_for_submit(user.pk)
    counts = _task_counts(locked, None, active=limits.max_active_tasks is not None)
    checked, _prices, total = _checked_order(locked, limits, counts, order)
    return OrderQuote(checked, total, locked.credit_balance)


# Submit jobs enqueued per order. The tasks are due at once, so the dispatcher (which the first
# job wakes) sends the rest of a large run; each key sends only its slots' worth at a time
# anyway, and a hundred jobs would only find their tasks waiting.
ORDER_JOBS = 8


def submit_task(
    user,
    request: GenerationRequest,
    *,
    key: ProviderKey,
    token: uuid.UUID | None = None,
    actor: str = "member",
    visibility: str = "team",
) -> tuple[Task, bool]:
    """An order of one request without images, through `submit_order`. Returns (task,
    created)."""
    outcome = submit_order(
        user,
        Order(
            items=(OrderItem(request, key),),
            visibility=visibility,
            token=token,
            actor=actor,
        ),
    )
    return outcome.tasks[0], outcome.created


def enqueue_submit(pk: int) -> None:
    # Through the process's one broker: django-q2's own async_task would connect anew each time.
    broker.enqueue("generations.jobs.submit", pk, task_name=f"submit task {pk}")


def _task_counts(locked, token: uuid.UUID | None, *, active: bool) -> dict[str, int]:
    """The member's tasks that bear on a submit, counted by one statement: the submits of the
    last minute (the rate), the task `token` made ("repeated"), and, when a limit asks, the
    active tasks. The index of each member's tasks by age keeps it to this member's rows.

    The rate counts submits, not tasks: a run of twelve variations is one submit (its size
    has its own cap). Every task of one order has the order's created_at, and two orders of
    one member never share one (they run one after the other under the member's lock), so
    the distinct times are the submits."""
    recent = Q(created_at__gt=timezone.now() - timedelta(minutes=1))
    wanted = {
        "recent": Count("created_at", filter=recent, distinct=True),
        "oldest_recent": Min("created_at", filter=recent),
    }
    either = recent
    if token is not None:
        wanted["repeated"] = Count("pk", filter=Q(submit_token=token))
        either |= Q(submit_token=token)
    if active:
        wanted["active"] = Count("pk", filter=Q(state__in=Task.ACTIVE_STATES))
        either |= Q(state__in=Task.ACTIVE_STATES)
    return Task.objects.filter(either, user=locked).aggregate(**wanted)


def _checked_items(locked, items: tuple[OrderItem, ...], image_count: int) -> tuple[list, dict]:
    """([(item with defaults, spec, price) of each item], the prices read), or SubmitRefused;
    the prices of the whole order are read at once."""
    # One stand-in per image lets the catalog check how many this model accepts.
    stand_ins = tuple("data:image/png;base64," for _ in range(image_count))
    requests = []
    for item in items:
        request = catalog.with_defaults(
            replace(item.request, reference_images=stand_ins + item.request.reference_images)
        )
        errors = catalog.validate(request)
        if errors:
            raise SubmitRefused("Some fields need fixing.", errors, code="invalid")
        requests.append(request)
    prices = price_list(requests)
    checked = []
    usable: dict[tuple[int, str], bool] = {}  # each key is asked about once per order
    for item, request in zip(items, requests, strict=True):
        spec = catalog.get(request.provider, request.model)
        key = item.key
        if not item.key_checked and (key.pk, request.provider) not in usable:
            usable[key.pk, request.provider] = (
                ProviderKey.objects.usable_by(locked, request.provider).filter(pk=key.pk).exists()
            )
        if not item.key_checked and not usable[key.pk, request.provider]:
            raise SubmitRefused(
                f"The key {key.label!r} cannot be used for {spec.label} ({key.status}).",
                {"key": ["Choose an active key for this gateway."]},
                code="key",
            )
        try:
            price = quote(request, prices)
        except PriceMissing:
            raise SubmitRefused(
                f"{spec.label} has no price yet; ask an admin to set one.", code="price"
            ) from None
        pasted = replace(request, reference_images=item.request.reference_images)
        checked.append((replace(item, request=pasted), spec, price))
    return checked, prices


def _check_limits(
    locked, limits: EffectiveQuota, counts: dict[str, int], checked: list, total: int
) -> None:
    """The member's rate, quotas and balance, for the whole order at once."""
    count = len(checked)
    limit = settings.SUBMIT_RATE_PER_MINUTE
    now = timezone.now()
    if counts["recent"] + 1 > limit:
        # The oldest submit of the last minute leaves the window first.
        oldest = counts.get("oldest_recent") or now
        raise SubmitRefused(
            f"You have submitted {limit} times in the last minute, the limit; "
            "wait a moment and submit again.",
            code="rate_limited",
            retry_after=_seconds_until(oldest + timedelta(minutes=1), now),
        )
    for item, spec, _price in checked:
        if not limits.allows(item.request.provider, item.request.model):
            raise SubmitRefused(f"Your quota does not include {spec.label}.", code="not_allowed")
    if limits.max_active_tasks is not None:
        active = counts["active"]
        if active + count > limits.max_active_tasks:
            raise SubmitRefused(
                f"You already have {active} active tasks, your limit; wait for one to finish."
                if count == 1
                else f"You have {active} active tasks and this adds {count}; your limit is "
                f"{limits.max_active_tasks}.",
                code="quota",
                # Only a hint: it depends on how fast the gateways finish the active tasks.
                retry_after=ACTIVE_RETRY_HINT_SECONDS,
            )
    what = "This costs" if count == 1 else f"These {count} tasks cost"
    day_limit, month_limit = limits.max_credits_per_day, limits.max_credits_per_month
    if day_limit is not None or month_limit is not None:
        spent = spending(locked)
        if day_limit is not None and spent["today"] + total > day_limit:
            raise SubmitRefused(
                f"{what} {total} credits; you have spent {spent['today']} of your "
                f"{day_limit} for today.",
                code="quota",
                retry_after=_seconds_until(period_ends(now)[0], now),
            )
        if month_limit is not None and spent["month"] + total > month_limit:
            raise SubmitRefused(
                f"{what} {total} credits; you have spent {spent['month']} of your "
                f"{month_limit} for this month.",
                code="quota",
                retry_after=_seconds_until(period_ends(now)[1], now),
            )
    if locked.credit_balance < total:
        raise SubmitRefused(
            f"{what} {total} credits and your balance is {locked.credit_balance}.",
            code="balance",
        )


# What an API tells a member at their active-task limit to wait before trying again.
ACTIVE_RETRY_HINT_SECONDS = 30


def _seconds_until(when, now) -> int:
    return max(1, math.ceil((when - now).total_seconds()))


def _encode_images(images) -> list:
    """Each image decoded once and re-encoded without metadata, or SubmitRefused."""
    encoded, errors = [], []
    for image in images:
        try:
            encoded.append((image, image.encoded()))
        except ValidationError as exc:
            errors.extend(exc.messages)
    if errors:
        raise SubmitRefused(
            "A reference image could not be read.", {"reference_images": errors}, code="invalid"
        )
    return encoded


def reference_url(token: str) -> str:
    return f"{settings.PUBLIC_URL}{reverse('generations-reference', args=[token])}"


def _create_tasks(locked, order: Order, run: Run, now, checked: list, images, saved) -> list[Task]:
    """Write the order's tasks, their reference images, debits and first events: one INSERT
    per table and one balance update, however many tasks the order has."""
    tasks, references = [], []
    for index, (item, spec, price) in enumerate(checked):
        request, key = item.request, item.key
        # Each task owns its copies of the images: they are deleted with it, and their public
        # links close when it ends, whatever happens to the order's other tasks.
        tokens = [secrets.token_urlsafe(24) for _ in images]
        if spec.provider in DATA_URI_GATEWAYS:
            sent = tuple(data_uri(clean) for _image, clean in images)
        else:
            sent = tuple(reference_url(token) for token in tokens)
        task = Task(
            user=locked,
            run=run,
            created_at=now,
            # Due at once: the job enqueued on commit normally takes it first; if that job is
            # lost (or the order is larger than ORDER_JOBS) the dispatcher finds the task.
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
                "reference_images": list(sent + request.reference_images),
            },
            key=key,
            key_label=f"{key.label} ({key.provider_name} {key.masked})",
            submit_token=item_token(order.token, index),
            retry_of=item.retry_of,
            visibility=order.visibility,
            price_unit=price.unit,
            price_credits_per_unit=price.credits_per_unit,
            price_units=price.units,
            price_multiplier=price.multiplier,
            credits_charged=price.total,
            updated_at=now,
        )
        tasks.append(task)
        for token, (image, clean) in zip(tokens, images, strict=True):
            name = default_storage.save(
                f"references/{token}.{clean.extension}", ContentFile(clean.data)
            )
            saved.append(name)
            references.append(
                ReferenceImage(
                    user=locked,
                    task=task,
                    token=token,
                    file=name,
                    content_type=clean.content_type,
                    width=image.width,
                    height=image.height,
                    size=len(clean.data),
                )
            )
    Task.objects.bulk_create(tasks)
    # Each reference (and debit) takes its task's new key from the task as it is saved.
    ReferenceImage.objects.bulk_create(references)
    labels = [spec.label for _item, spec, _price in checked]
    try:
        append_debits(locked, list(zip(tasks, labels, strict=True)))
    except InsufficientCredits as exc:  # the balance was checked under the lock; belt and braces
        raise SubmitRefused(str(exc), code="balance") from None
    TaskEvent.objects.bulk_create(
        TaskEvent(task=task, to_state=task.state, actor=order.actor, reason=order.note)
        for task in tasks
    )
    return tasks


def data_uri(clean: EncodedImage) -> str:
    return f"data:{clean.content_type};base64,{base64.b64encode(clean.data).decode('ascii')}"


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
    if current in (*Task.IN_FLIGHT_STATES, Task.State.QUEUED) and (
        to_state not in Task.IN_FLIGHT_STATES
    ):
        # It may have held one of its key's slots (a queued task holds one while its request
        # is on its way). Once this commits, so a task that recorded its wait meanwhile is
        # seen; engine.take_slot looks again after recording one, for the other order.
        # Robust: the change has committed; a failed wake only costs a waiting task its turn
        # until its next scheduled look.
        transaction.on_commit(partial(wake_next_on_key, task.key_id), robust=True)
    task.state = to_state
    for name, value in fields.items():
        setattr(task, name, value)
    if to_state in Task.TERMINAL_STATES:
        # Outbound webhooks: recorded in this transaction, sent once it commits.
        from generations.api.webhooks import record_task_event

        record_task_event(task, to_state)
    return True


def wake_next_on_key(key_id: int | None) -> None:
    """A task left its key's slot at the gateway: the key's earliest task waiting for a slot
    (engine.take_slot) is looked at now rather than at its next scheduled look. Only tasks
    never sent are woken: one sent before may be waiting out a gateway's Retry-After."""
    if key_id is None:
        return
    now = timezone.now()
    waiting = (
        Task.objects.filter(
            key_id=key_id,
            state=Task.State.QUEUED,
            submit_sent_at__isnull=True,
            submit_attempts=0,
            next_check_at__gt=now,
        )
        .order_by("id")
        .values("pk")[:1]
    )
    Task.objects.filter(pk__in=Subquery(waiting)).update(next_check_at=now)


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


@dataclass(frozen=True)
class EncodedImage:
    """A reference image as it is stored and sent: decoded and written again in its own
    format, with nothing but its pixels (and its colour profile): no EXIF, no GPS position, no
    XMP, no text chunks, no comments."""

    data: bytes
    content_type: str
    extension: str


@dataclass(frozen=True)
class StoredReference:
    """A reference image a task was sent, as an image of a new order (Try again): the stored
    file was cleaned when it was uploaded, so it is copied as it is."""

    reference: ReferenceImage

    @property
    def name(self) -> str:
        return "A reference image of the earlier task"

    @property
    def width(self) -> int:
        return self.reference.width

    @property
    def height(self) -> int:
        return self.reference.height

    def encoded(self) -> EncodedImage:
        try:
            with self.reference.file.open("rb") as handle:
                data = handle.read()
        except (FileNotFoundError, OSError):
            raise ValidationError(
                f"{self.name} is no longer stored; start again from Create."
            ) from None
        extension = self.reference.file.name.rsplit(".", 1)[-1]
        return EncodedImage(data, self.reference.content_type, extension)


@dataclass(frozen=True)
class StoredResult:
    """A stored result image, or a result's poster, as an image of a new order (Use as
    reference). The gateway made that file, not the member's checked upload, so the copy is
    checked and written again like an upload: its header against the upload limits, then its
    pixels decoded once without metadata. The stored file is read only when the order is
    about to be stored (`encoded()`), after the cheap checks."""

    result: Result
    poster: bool = False

    @property
    def name(self) -> str:
        return "The poster of the earlier result" if self.poster else "The earlier result image"

    @property
    def width(self) -> int:
        return self._checked().width

    @property
    def height(self) -> int:
        return self._checked().height

    def encoded(self) -> EncodedImage:
        return self._checked().encoded()

    def _checked(self):
        """The stored file as a CheckedImage (read and checked on the first call only)."""
        cached = self.__dict__.get("_checked_image")
        if cached is None:
            # The form module checks uploads; it imports this one, so it is imported here.
            from generations.forms import MAX_IMAGE_BYTES, check_image

            stored = self.result.poster if self.poster else self.result.file
            try:
                with stored.open("rb") as handle:
                    # One byte past the limit is enough for the check to refuse a larger file.
                    data = handle.read(MAX_IMAGE_BYTES + 1)
            except (FileNotFoundError, OSError, ValueError):
                raise ValidationError(
                    f"{self.name} is no longer stored; choose another image."
                ) from None
            cached = check_image(ContentFile(data, name=self.name))
            object.__setattr__(self, "_checked_image", cached)
        return cached


def retry_order(task: Task, *, token: uuid.UUID | None, actor: str = "member") -> Order:
    """The order that tries a failed or canceled task again: same request, key, visibility
    and reference images. Raises SubmitRefused when the task cannot be tried again."""
    if task.state not in (Task.State.FAILED, Task.State.CANCELED):
        raise SubmitRefused("Only a failed or canceled task can be tried again.", code="state")
    if task.key is None:
        raise SubmitRefused(
            "The key that paid for this task is gone; choose another key.", code="key"
        )
    references = list(task.references.order_by("id"))
    ours = reference_url("x")[:-1]
    pasted = tuple(
        url
        for url in task.params.get("reference_images") or ()
        if isinstance(url, str)
        and not url.startswith(ours)
        # Uploads sent inline are copied from their stored files instead.
        and not (references and url.startswith("data:"))
    )
    request = replace(task.generation_request(), reference_images=pasted)
    return Order(
        items=(OrderItem(request, task.key, retry_of=task),),
        visibility=task.visibility,
        images=tuple(StoredReference(reference) for reference in references),
        token=token,
        actor=actor,
        note=f"retry of task {task.code}",
        run=task.run,
    )


def retry_task(task: Task, *, token: uuid.UUID | None = None, actor: str = "member") -> Task:
    """Submit a failed or canceled task again as a new task: a new debit, through the one
    submit path (rate limit and token included). Raises SubmitRefused like any submit."""
    return submit_order(task.user, retry_order(task, token=token, actor=actor)).tasks[0]


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


# What "check now" may hurry: never a queued task, whose next step is a send that must wait
# for its retry time.
RECHECKABLE_STATES = (
    Task.State.SUBMITTED,
    Task.State.RUNNING,
    Task.State.FETCHING,
    Task.State.NEEDS_REVIEW,
)


def recheck_now(task: Task) -> bool:
    """Ask the engine to look at a task the gateway has at once (admin action, webhook cue).
    A queued task is left alone: checking it would mean sending it."""
    return bool(
        Task.objects.filter(pk=task.pk, state__in=RECHECKABLE_STATES).update(
            next_check_at=timezone.now()
        )
    )


def delete_task(task: Task) -> bool:
    """Delete a finished task for its member: results and reference images removed, row kept
    (the ledger refers to it) and hidden everywhere. False for an active task, which must be
    canceled first."""
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
    # The images the member sent with it go too: they lived only for this task.
    for reference in ReferenceImage.objects.filter(task=task):
        reference.file.delete(save=False)
    ReferenceImage.objects.filter(task=task).delete()
    return True
