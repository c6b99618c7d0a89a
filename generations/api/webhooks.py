"""Outbound webhooks: endpoints that receive Omniweb's events, the outbox of deliveries, and
their signed, retried sending.

A member registers https endpoints for their own tasks; an admin may register team endpoints
(no owner) that receive the events of every member's tasks. Events:

- ``task.succeeded``, ``task.failed``, ``task.canceled``: a task reached that terminal state;
  ``data`` is `task_data`.
- ``run.finished``: the last active task of a run ended; ``data`` is `run_data`.
- ``webhook.test``: the owner pressed "Send a test event".

Every event is written to the outbox (one `WebhookDelivery` per endpoint) by
`record_task_event`, which `services.transition` calls inside the transaction that changes the
task, so an event exists if and only if the change committed. Jobs enqueued after commit send
them; retries are found by `deliver_due`, which the task dispatchers start every few seconds
while something is due (`nudge`).

Sending follows Standard Webhooks: a JSON body signed with the endpoint's ``whsec_`` secret in
the ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` headers. ``webhook-id`` is
the same on every attempt of a delivery, so receivers can drop duplicates: delivery is at least
once. A 2xx answer is success; anything else is retried on `RETRY_DELAYS`, then given up; a
``410 Gone`` disables the endpoint. Events of one task reach one endpoint in order: a delivery
waits while an earlier one for the same endpoint and task is still pending.

Every request goes through the outbound address policy (generations/outbound.py): public
addresses only unless an admin allows a host in OMNIWEB_GATEWAY_ALLOWED_HOSTS, checked when
the endpoint is registered and again on the address each request connects to, with one
wall-clock deadline per request. Plain http:// is accepted only for allowed hosts.

This module is imported at the end of generations/models.py (its models belong to the
``generations`` app), so it imports from generations.models at the top only names defined
before that line, and the broker and the HTTP client lazily.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
import time
import uuid
from base64 import b64encode
from datetime import UTC, datetime, timedelta
from functools import partial

import httpx
from django.conf import settings
from django.core.cache import cache
from django.core.validators import URLValidator
from django.db import models, transaction
from django.db.models import Count, F, Q
from django.urls import reverse
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from accounts import crypto
from generations import outbound
from generations.models import Run, Task

logger = logging.getLogger("omniweb.webhooks")

# Bounds (RELIABILITY): what one member may register, and what one endpoint may hold.
MAX_URL_CHARS = 2000
MAX_DESCRIPTION_CHARS = 200
MAX_ENDPOINTS_PER_MEMBER = 10
SECRET_BYTES = 24
# Waits after the 1st, 2nd, ... failed attempt; after the last one the delivery is given up.
# About a day in all, as Standard Webhooks suggests.
RETRY_DELAYS = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
)
# One request, from connecting to the last byte of the answer, gets this long.
SEND_SECONDS = 10
# Receivers answer with a short acknowledgement; more than this is not read.
ANSWER_MAX_BYTES = 8 * 1024
# A claimed delivery is someone else's for this long; longer than any request may take.
LEASE_SECONDS = 60
# The endpoint page's delivery log.
LOG_SIZE = 50
# One sweep sends for at most this long and this many deliveries; the next carries on.
SWEEP_SECONDS = 60
SWEEP_LIMIT = 200
# Dispatchers ask at most this often whether a sweep is needed.
NUDGE_SECONDS = 5
ERROR_CHARS = 300

_SWEEP_RUNNING = "omniweb:webhooks:sweeping"
_NUDGED = "omniweb:webhooks:nudged"


class Event(models.TextChoices):
    TASK_SUCCEEDED = "task.succeeded"
    TASK_FAILED = "task.failed"
    TASK_CANCELED = "task.canceled"
    RUN_FINISHED = "run.finished"
    TEST = "webhook.test"


TASK_EVENTS = {
    Task.State.SUCCEEDED: Event.TASK_SUCCEEDED,
    Task.State.FAILED: Event.TASK_FAILED,
    Task.State.CANCELED: Event.TASK_CANCELED,
}


class TooManyEndpoints(Exception):
    """A member already has MAX_ENDPOINTS_PER_MEMBER endpoints; the message says so."""


# --- endpoints ---------------------------------------------------------------------------------


def new_secret() -> str:
    """A Standard Webhooks signing secret: ``whsec_`` and base64 of random bytes."""
    return "whsec_" + b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def _allowlisted(host: str) -> bool:
    """Whether an admin allowed `host` (by name, or as an address in an allowed range)."""
    name = host.strip("[]").rstrip(".").lower()
    literal = outbound.literal_address(host)
    for entry in getattr(settings, "GATEWAY_ALLOWED_HOSTS", ()):
        try:
            network = ipaddress.ip_network(entry.strip("[]"), strict=False)
        except ValueError:
            if entry.strip("[]").rstrip(".").lower() == name:
                return True
            continue
        if literal is not None and outbound.unwrap(literal) in network:
            return True
    return False


def url_problem(url: str) -> str | None:
    """Why webhooks may not be sent to `url`, as a sentence for a form; None if they may.

    https only (an admin-allowed host may use http), and no address the outbound policy
    refuses. A name that cannot be looked up now is accepted: every request is checked again.
    """
    try:
        URLValidator(schemes=["http", "https"])(url)
        parsed = httpx.URL(url)
    except Exception:
        return "Enter a full web address, like https://example.com/hooks/omniweb."
    if len(url) > MAX_URL_CHARS:
        return f"The address is longer than {MAX_URL_CHARS} characters."
    if parsed.userinfo:
        return "Leave the user name and password out of the address."
    host = parsed.raw_host.decode("ascii")
    if parsed.scheme != "https" and not _allowlisted(host):
        return (
            "Only https:// addresses receive webhooks, so that events travel encrypted. "
            f"(An administrator can allow plain http to a host in {outbound.SETTING}.)"
        )
    try:
        outbound.checked_addresses(host, parsed.port or (443 if parsed.scheme == "https" else 80))
    except outbound.Unresolved:
        return None
    except outbound.AddressRefused as exc:
        return exc.message[0].upper() + exc.message[1:]
    return None


class EndpointQuerySet(models.QuerySet):
    def owned_by(self, user) -> EndpointQuerySet:
        """A member's own endpoints: all they may see or change. Team endpoints are admins'."""
        return self.filter(owner=user)

    def receiving_for(self, user_id: int) -> EndpointQuerySet:
        """The enabled endpoints that get the events of `user_id`'s tasks."""
        return self.filter(Q(owner_id=user_id) | Q(owner__isnull=True), enabled=True)


class WebhookEndpoint(models.Model):
    """An https address that receives signed events: a member's own, or (no owner) the team's."""

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="webhook_endpoints",
        help_text="Empty: a team endpoint, which receives the events of every member's tasks.",
    )
    url = models.CharField("URL", max_length=MAX_URL_CHARS)
    description = models.CharField(max_length=MAX_DESCRIPTION_CHARS, blank=True)
    secret_ciphertext = models.TextField(editable=False)
    enabled = models.BooleanField(default=True)
    disabled_reason = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    secret_rotated_at = models.DateTimeField(null=True, blank=True)

    objects = EndpointQuerySet.as_manager()

    class Meta:
        ordering = ["created_at", "id"]
        verbose_name = "webhook endpoint"

    def __str__(self) -> str:
        return self.description or self.url[:80]

    def get_absolute_url(self) -> str:
        return reverse("generations-webhook-endpoint", args=[self.code])

    @property
    def is_team(self) -> bool:
        return self.owner_id is None

    def set_new_secret(self) -> None:
        """Make and store (encrypted) a new signing secret; the caller saves."""
        self.secret_ciphertext = crypto.encrypt(new_secret())

    @property
    def secret(self) -> str:
        """The signing secret. Raises crypto.DecryptionError when the keys cannot open it."""
        return crypto.decrypt(self.secret_ciphertext)

    def rotate_secret(self) -> None:
        self.set_new_secret()
        self.secret_rotated_at = timezone.now()
        self.save(update_fields=["secret_ciphertext", "secret_rotated_at"])

    def disable(self, reason: str) -> None:
        WebhookEndpoint.objects.filter(pk=self.pk).update(enabled=False, disabled_reason=reason)
        self.enabled, self.disabled_reason = False, reason


@transaction.atomic
def register_endpoint(user, url: str, description: str = "") -> WebhookEndpoint:
    """Save a new endpoint of `user`'s with a new secret, within the per-member cap. The URL
    is expected checked (`url_problem`). Raises TooManyEndpoints."""
    from accounts.ledger import lock_user

    # Under the member's lock, so two quick submits cannot both pass the count.
    lock_user(user.pk)
    if WebhookEndpoint.objects.owned_by(user).count() >= MAX_ENDPOINTS_PER_MEMBER:
        raise TooManyEndpoints(
            f"You have {MAX_ENDPOINTS_PER_MEMBER} endpoints, the most a member may have. "
            "Delete one you no longer use first."
        )
    endpoint = WebhookEndpoint(owner=user, url=url, description=description)
    endpoint.set_new_secret()
    endpoint.save()
    return endpoint


# --- the outbox --------------------------------------------------------------------------------


class DeliveryQuerySet(models.QuerySet):
    def due(self, now: datetime) -> DeliveryQuerySet:
        """Pending deliveries whose attempt is due and that nobody holds."""
        return self.filter(state=WebhookDelivery.State.PENDING, next_attempt_at__lte=now).filter(
            Q(lease_until__isnull=True) | Q(lease_until__lt=now)
        )


class WebhookDelivery(models.Model):
    """One event for one endpoint, from recorded to delivered or given up."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    # The task the event is about (for run.finished, the one whose end finished the run):
    # events of one task reach an endpoint in order. None for test events.
    task = models.ForeignKey(
        Task, on_delete=models.CASCADE, null=True, blank=True, related_name="webhook_deliveries"
    )
    event_type = models.CharField(max_length=40, choices=Event.choices)
    payload = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    lease_owner = models.CharField(max_length=100, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=ERROR_CHARS, blank=True)
    last_duration_ms = models.PositiveIntegerField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = DeliveryQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        verbose_name = "webhook delivery"
        verbose_name_plural = "webhook deliveries"
        indexes = [
            # The sweep reads only the pending rows, in due order.
            models.Index(
                fields=["next_attempt_at", "id"],
                name="webhook_due_order",
                condition=Q(state="pending"),
            ),
            # "Is an earlier event of this task still on its way to this endpoint?"
            models.Index(
                fields=["endpoint", "task", "id"],
                name="webhook_pending_per_task",
                condition=Q(state="pending"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} → {self.endpoint}"

    @property
    def msg_id(self) -> str:
        """The Standard Webhooks message id: the same on every attempt."""
        return f"msg_{self.code.hex}"


def _stamp(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def task_data(task: Task, run: Run | None = None) -> dict:
    """A task exactly as GET /api/v1/tasks/{id} shows it (links under OMNIWEB_PUBLIC_URL), so
    a script reads webhooks and API answers with one parser. `run` saves a query when the
    caller has it. A failed or canceled task is refunded in the same transaction that records
    its event (services._end_with_refund), so its refund is shown whole."""
    # Imported here: this module loads with generations.models, before the API's schemas can.
    from ninja.responses import NinjaJSONEncoder

    from generations.api.schemas import TaskOut, task_out

    if run is not None:
        task.run = run
    refunded = task.credits_charged if task.state in (Task.State.FAILED, Task.State.CANCELED) else 0
    data = TaskOut.model_validate(task_out(task, refunded)).model_dump()
    # Through the API's own encoder, so times and codes read exactly as its answers do.
    return json.loads(json.dumps(data, cls=NinjaJSONEncoder))


def run_data(run: Run, counts: dict[str, int], finished_at: datetime) -> dict:
    """A finished run: how many of its tasks ended in each terminal state."""
    return {
        "id": str(run.code),
        "object": "run",
        "name": run.name,
        "counts": {state: counts.get(state, 0) for state in Task.TERMINAL_STATES},
        "finished_at": _stamp(finished_at),
    }


def envelope(event_type: str, at: datetime, data: dict) -> dict:
    return {"type": event_type, "timestamp": _stamp(at), "data": data}


def record_task_event(task: Task, to_state: str) -> list[int]:
    """Write the outbox rows for `task` reaching the terminal `to_state` (and, if it was its
    run's last active task, for the run finishing), one per endpoint that receives them.

    Called by services.transition inside its transaction, after its compare-and-swap won, so
    each event is recorded once. Costs one query when nobody's endpoint wants it. The jobs
    that send the rows are enqueued once the transaction commits.
    """
    event_type = TASK_EVENTS.get(to_state)
    if event_type is None:
        return []
    endpoints = list(
        WebhookEndpoint.objects.receiving_for(task.user_id).values_list("pk", flat=True)
    )
    if not endpoints:
        return []
    now = timezone.now()
    # Locking the run makes tasks of one run that end at once take turns here, so exactly
    # one of them sees no active task left and records run.finished.
    run = Run.objects.select_for_update().only("code", "name").get(pk=task.run_id)
    counts = dict(
        Task.objects.filter(run_id=run.pk)
        .order_by()
        .values_list("state")
        .annotate(n=Count("id"))
        .values_list("state", "n")
    )
    events = [(event_type, task_data(task, run))]
    if not any(state in Task.ACTIVE_STATES for state in counts):
        events.append((Event.RUN_FINISHED, run_data(run, counts, now)))
    # Task event rows first: ids give each endpoint's events of this task their order.
    rows = WebhookDelivery.objects.bulk_create(
        WebhookDelivery(
            endpoint_id=endpoint,
            task=task,
            event_type=kind,
            payload=envelope(kind, now, data),
            created_at=now,
            next_attempt_at=now,
        )
        for kind, data in events
        for endpoint in endpoints
    )
    pks = [row.pk for row in rows]
    # Robust: the task's change has committed; a broker hiccup only delays these to the sweep.
    transaction.on_commit(partial(enqueue_deliveries, pks), robust=True)
    return pks


@transaction.atomic
def send_test_event(endpoint: WebhookEndpoint) -> WebhookDelivery:
    """Queue a ``webhook.test`` event for `endpoint`, whether or not it is enabled."""
    now = timezone.now()
    data = {
        "object": "endpoint",
        "id": str(endpoint.code),
        "message": "A test event from Omniweb: your endpoint receives and can verify events.",
    }
    delivery = WebhookDelivery.objects.create(
        endpoint=endpoint,
        event_type=Event.TEST,
        payload=envelope(Event.TEST, now, data),
        created_at=now,
        next_attempt_at=now,
    )
    transaction.on_commit(partial(enqueue_deliveries, [delivery.pk]), robust=True)
    return delivery


def resend(delivery: WebhookDelivery) -> bool:
    """Put a failed delivery back in the outbox as new (same webhook-id, a fresh schedule of
    attempts); False if it had not failed."""
    now = timezone.now()
    with transaction.atomic():
        updated = WebhookDelivery.objects.filter(
            pk=delivery.pk, state=WebhookDelivery.State.FAILED
        ).update(
            state=WebhookDelivery.State.PENDING,
            attempts=0,
            next_attempt_at=now,
            finished_at=None,
            lease_owner="",
            lease_until=None,
        )
        if updated:
            transaction.on_commit(partial(enqueue_deliveries, [delivery.pk]), robust=True)
    return bool(updated)


def enqueue_deliveries(pks: list[int]) -> None:
    from omniweb import broker

    for pk in pks:
        broker.enqueue("generations.api.webhooks.deliver", pk, task_name=f"webhook {pk}")


# --- sending -----------------------------------------------------------------------------------


def retry_delay(attempts: int) -> timedelta | None:
    """How long to wait after the `attempts`th failed attempt; None once it is given up."""
    if attempts < 1 or attempts > len(RETRY_DELAYS):
        return None
    return RETRY_DELAYS[attempts - 1]


def body_of(payload: dict) -> bytes:
    """The exact bytes httpx sends for `payload` as JSON: what the signature covers."""
    return httpx.Request("POST", "https://omniweb.invalid/", json=payload).content


def signed_headers(secret: str, msg_id: str, body: bytes, at: datetime) -> dict[str, str]:
    signature = Webhook(secret).sign(msg_id, at, body.decode("utf-8"))
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
        "Content-Type": "application/json",
        "User-Agent": "Omniweb-Webhooks",
    }


def _post(endpoint: WebhookEndpoint, delivery: WebhookDelivery, client) -> tuple[int | None, str]:
    """Send one attempt; (status code or None, a short error or "")."""
    problem = _scheme_problem(endpoint.url)
    if problem:
        return None, problem
    try:
        secret = endpoint.secret
    except crypto.DecryptionError:
        return None, "The endpoint's secret cannot be decrypted; rotate it."
    body = body_of(delivery.payload)
    # The signing time is the real time of the attempt, whatever `now` the caller passed:
    # receivers refuse timestamps far from their clock.
    headers = signed_headers(secret, delivery.msg_id, body, datetime.now(tz=UTC))
    if client is None:
        from generations.providers.http import shared_client

        client = shared_client()
    try:
        response = outbound.gateway_request(
            client,
            "POST",
            endpoint.url,
            headers=headers,
            json=delivery.payload,
            timeout=httpx.Timeout(SEND_SECONDS, connect=5.0, pool=5.0),
            max_bytes=ANSWER_MAX_BYTES,
        )
    except outbound.GatewayRefused as exc:
        words = {
            "redirected": "The endpoint answered with a redirect; webhooks do not follow them.",
            "answer_too_large": f"The answer was longer than {ANSWER_MAX_BYTES // 1024} KB.",
        }
        return None, words.get(exc.code) or exc.message[0].upper() + exc.message[1:]
    except httpx.TimeoutException:
        return None, f"No answer within {SEND_SECONDS} seconds."
    except httpx.HTTPError as exc:
        return None, f"Could not connect: {type(exc).__name__}."
    except outbound.PeerMismatch:
        return None, "The connection led to another address than the one checked."
    return response.status_code, ""


def _scheme_problem(url: str) -> str | None:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "The endpoint's address is not valid."
    if parsed.scheme == "https":
        return None
    if parsed.scheme == "http" and _allowlisted(parsed.raw_host.decode("ascii")):
        return None
    return "Only https:// addresses receive webhooks."


def deliver(pk: int, *, now: datetime | None = None, client=None) -> str:
    """Job: send delivery `pk` if it is due, then the next event of its task for the same
    endpoint that was waiting for it. Safe to run any number of times at once: each attempt
    is claimed with a conditional update. `now` and `client` are for tests."""
    outcome, following = _deliver_one(pk, now, client)
    while following is not None:
        outcome, following = _deliver_one(following, now, client)
    return outcome


def _deliver_one(pk: int, now: datetime | None, client) -> tuple[str, int | None]:
    now = now or timezone.now()
    delivery = WebhookDelivery.objects.select_related("endpoint").filter(pk=pk).first()
    if delivery is None or delivery.state != WebhookDelivery.State.PENDING:
        return "done", None
    if delivery.task_id and _earlier_pending(delivery).exists():
        return "waiting", None  # the earlier one sends this when it is done
    owner = f"deliver-{uuid.uuid4().hex[:12]}"
    claimed = (
        WebhookDelivery.objects.due(now)
        .filter(pk=pk)
        .update(
            lease_owner=owner,
            lease_until=now + timedelta(seconds=LEASE_SECONDS),
            attempts=F("attempts") + 1,
            last_attempt_at=now,
        )
    )
    if not claimed:
        return "taken", None
    delivery.refresh_from_db(fields=["attempts"])
    endpoint = delivery.endpoint
    if not endpoint.enabled:
        _finish(
            delivery,
            owner,
            WebhookDelivery.State.FAILED,
            now,
            error="Not sent: the endpoint is disabled.",
        )
        return "endpoint disabled", _next_in_line(delivery, now)

    started = time.monotonic()
    status, error = _post(endpoint, delivery, client)
    duration_ms = int((time.monotonic() - started) * 1000)
    if status is not None and 200 <= status < 300:
        _finish(
            delivery,
            owner,
            WebhookDelivery.State.DELIVERED,
            now,
            status=status,
            duration_ms=duration_ms,
        )
        logger.info("event=webhook_delivered delivery=%s status=%s", pk, status)
        return "delivered", _next_in_line(delivery, now)
    if status is not None:
        error = f"The endpoint answered HTTP {status}."
    if status == 410:
        # Standard Webhooks: 410 Gone means "stop sending".
        endpoint.disable(
            f"Disabled on {now:%Y-%m-%d %H:%M} UTC: the endpoint answered 410 Gone. "
            "Enable it again once it receives events."
        )
        _finish(
            delivery,
            owner,
            WebhookDelivery.State.FAILED,
            now,
            status=status,
            error=error,
            duration_ms=duration_ms,
        )
        logger.warning("event=webhook_gone endpoint=%s", endpoint.pk)
        return "gone", None
    delay = retry_delay(delivery.attempts)
    logger.warning(
        "event=webhook_failed delivery=%s attempt=%s status=%s", pk, delivery.attempts, status
    )
    if delay is None:
        _finish(
            delivery,
            owner,
            WebhookDelivery.State.FAILED,
            now,
            status=status,
            error=error + " Given up.",
            duration_ms=duration_ms,
        )
        return "given up", _next_in_line(delivery, now)
    _finish(
        delivery,
        owner,
        WebhookDelivery.State.PENDING,
        now,
        status=status,
        error=error,
        duration_ms=duration_ms,
        next_attempt_at=now + delay,
    )
    return "retrying", None


def _earlier_pending(delivery: WebhookDelivery):
    return WebhookDelivery.objects.filter(
        endpoint_id=delivery.endpoint_id,
        task_id=delivery.task_id,
        state=WebhookDelivery.State.PENDING,
        id__lt=delivery.pk,
    )


def _next_in_line(delivery: WebhookDelivery, now: datetime) -> int | None:
    """The next pending event of the same task for the same endpoint, if one waits."""
    if not delivery.task_id:
        return None
    return (
        WebhookDelivery.objects.filter(
            endpoint_id=delivery.endpoint_id,
            task_id=delivery.task_id,
            state=WebhookDelivery.State.PENDING,
            id__gt=delivery.pk,
            next_attempt_at__lte=now,
        )
        .order_by("id")
        .values_list("pk", flat=True)
        .first()
    )


def _finish(
    delivery: WebhookDelivery,
    owner: str,
    state: str,
    now: datetime,
    *,
    status: int | None = None,
    error: str = "",
    duration_ms: int | None = None,
    next_attempt_at: datetime | None = None,
) -> None:
    # Only the holder of the claim records its attempt.
    WebhookDelivery.objects.filter(pk=delivery.pk, lease_owner=owner).update(
        state=state,
        lease_owner="",
        lease_until=None,
        last_status=status,
        last_error=error[:ERROR_CHARS],
        last_duration_ms=duration_ms,
        next_attempt_at=next_attempt_at,
        finished_at=None if state == WebhookDelivery.State.PENDING else now,
    )


def deliver_due(*, now: datetime | None = None, client=None, seconds: float = SWEEP_SECONDS) -> str:
    """Job: send the deliveries whose attempt is due, oldest first, for at most `seconds`.
    One sweep at a time per cache; an overlapping one returns at once."""
    run_id = uuid.uuid4().hex
    if not cache.add(_SWEEP_RUNNING, run_id, timeout=int(seconds) + LEASE_SECONDS):
        return "already sweeping"
    try:
        now = now or timezone.now()
        stop_at = time.monotonic() + seconds
        due = WebhookDelivery.objects.due(now).order_by("next_attempt_at", "id")
        outcomes: dict[str, int] = {}
        for pk in due.values_list("pk", flat=True)[:SWEEP_LIMIT]:
            if time.monotonic() > stop_at:
                break
            outcome = deliver(pk, now=now, client=client)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        return ", ".join(f"{n} {what}" for what, n in sorted(outcomes.items())) or "nothing due"
    finally:
        if cache.get(_SWEEP_RUNNING) == run_id:
            cache.delete(_SWEEP_RUNNING)


def nudge() -> bool:
    """Start a sweep if deliveries are due and none runs; asks the database at most once per
    NUDGE_SECONDS per cache. Called by the task dispatchers every few seconds; never raises,
    so a broker or database hiccup here cannot end a dispatcher's run."""
    try:
        if cache.get(_SWEEP_RUNNING) or not cache.add(_NUDGED, 1, timeout=NUDGE_SECONDS):
            return False
        if not WebhookDelivery.objects.due(timezone.now()).exists():
            return False
        from omniweb import broker

        broker.enqueue("generations.api.webhooks.deliver_due", task_name="webhooks due")
        return True
    except Exception:
        logger.warning("event=webhook_nudge_failed", exc_info=True)
        return False
