"""Key health: does a gateway still accept a key? Asked the cheapest way each gateway documents.

Every gateway we speak documents a status query for one task (OmniaKey and APIMart
`GET .../{id}`, Omni Video `GET /api/v1/tasks/{task_id}`, Omixa's job status). Asking it about a
task id that cannot exist creates nothing and is not billed; only the answer's meaning matters:

- 401 (every document's "invalid or missing key") means the key is refused;
- an answer about the task (404 "not found", 400, 402 "no balance", a 200 envelope...) means
  the gateway got past the key, so it is accepted;
- no answer (a timeout, a broken connection, an address the outbound policy refuses), a server
  error (5xx) or a rate limit (429) says nothing about the key: "error", could not tell.
  Those come before the key is looked at by many gateways and proxies, so they are not read as
  "accepted".

The request goes through the adapter's own `status` call, so it carries the same
Authorization header, deadline and outbound address policy as the engine's polls.

A refused test is a report, not a verdict: it does not mark the key invalid. The engine still
does that when a real task's request is refused (ProviderKey.mark_invalid), which is when
a key stops being used; a test that says "refused" lets the owner or an admin act first.

Team keys (no owner) are tested by a schedule: `test_team_keys` runs every hour and tests each
team key whose last test is more than RETEST_AFTER old, so each is tested about once a day
while every run stays far inside the queue's job timeout (one request per key, each within the
gateway deadline, and no new request once the run's time budget is spent).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from django.db.models import Q
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from accounts import crypto
from accounts.models import ProviderKey
from generations import providers
from generations.providers import Credentials, ErrorKind, ProviderError

logger = logging.getLogger(__name__)

# A task id every gateway's id rules allow and none of them would ever issue.
PROBE_TASK_ID = "omniweb-key-test-00000000"
ACCEPTED, REFUSED, ERROR = "accepted", "refused", "error"
MESSAGE_CHARS = 300  # ProviderKey.health_message

SCHEDULE_NAME = "omniweb-key-health"
RETEST_AFTER = timedelta(hours=23)
# The scheduled run stops starting requests after this many seconds (the queue kills a job at
# 300 s; one more request may take a gateway deadline on top of it).
RUN_BUDGET_SECONDS = 120


@dataclass(frozen=True)
class Answer:
    status: str  # ACCEPTED, REFUSED or ERROR
    message: str  # our words, short, never the secret


def read_answer(name: str, exc: ProviderError | None) -> Answer:
    """What a status query's outcome says about the key: `exc` is None for a 200 answer."""
    if exc is None:
        return Answer(ACCEPTED, f"{name} accepted the key.")
    status = exc.status_code
    if exc.kind == ErrorKind.AUTHENTICATION:
        return Answer(REFUSED, f"{name} refused the key (HTTP {status or 401}).")
    if status is not None and (status >= 500 or status == 429):
        return Answer(ERROR, f"Could not tell: {name} answered HTTP {status}; try again later.")
    if exc.kind == ErrorKind.PAYMENT:
        return Answer(
            ACCEPTED,
            f"{name} accepted the key, but says its account has no balance left (HTTP 402).",
        )
    if status is not None:
        return Answer(ACCEPTED, f"{name} accepted the key (HTTP {status} for a test task).")
    if exc.kind == ErrorKind.BUSINESS or exc.code in ("malformed_body", "unknown_status"):
        # A 200 answer we could not use as a task: the gateway read the key and answered.
        return Answer(ACCEPTED, f"{name} accepted the key.")
    return Answer(ERROR, f"Could not tell: {exc.message}")


@sensitive_variables("credentials")
def probe(provider_id: str, credentials: Credentials, client: httpx.Client | None = None) -> Answer:
    """Ask the gateway about a task that cannot exist, with the key in `credentials`."""
    adapter = providers.get(provider_id, client=client)
    try:
        adapter.status(PROBE_TASK_ID, credentials)
    except ProviderError as exc:  # scrubbed by the adapter: no text carries the key
        return read_answer(adapter.name, exc)
    return read_answer(adapter.name, None)


@sensitive_variables("secret", "credentials")
def test_key(key: ProviderKey, client: httpx.Client | None = None) -> Answer:
    """Test one key and store the answer on it. A disabled key or one refused earlier is tested
    too (it costs nothing and tells whether it would work); one that cannot be decrypted is
    not sent."""
    gateway = providers.REGISTRY.get(key.provider)
    if gateway is None:
        answer = Answer(ERROR, "Could not tell: Omniweb does not speak this key's gateway.")
    elif key.needs_reentry:
        answer = Answer(ERROR, "Could not tell: the key can no longer be read; enter it again.")
    else:
        try:
            secret = crypto.decrypt(key.secret_ciphertext)
        except crypto.DecryptionError:
            answer = Answer(ERROR, "Could not tell: the key can no longer be read; enter it again.")
        else:
            credentials = Credentials(api_key=secret, base_url=key.base_url or None)
            answer = probe(key.provider, credentials, client=client)
    now = timezone.now()
    message = answer.message[:MESSAGE_CHARS]
    ProviderKey.objects.filter(pk=key.pk).update(
        health_checked_at=now, health_status=answer.status, health_message=message
    )
    key.health_checked_at, key.health_status, key.health_message = now, answer.status, message
    logger.info("Key %s (%s) tested: %s", key.pk, key.provider, answer.status)
    return answer


def test_team_keys(now: datetime | None = None, client: httpx.Client | None = None) -> int:
    """The scheduled job: test each team key not tested for RETEST_AFTER. Returns how many were
    tested. Safe to run twice at once or again: each key is claimed by a conditional update of
    its last test time, so only one run sends its request."""
    now = now or timezone.now()
    started = time.monotonic()
    due = (
        ProviderKey.objects.team()
        .filter(Q(health_checked_at__isnull=True) | Q(health_checked_at__lt=now - RETEST_AFTER))
        .order_by("health_checked_at", "pk")
        .values_list("pk", "health_checked_at")
    )
    tested = 0
    for pk, checked_at in list(due):
        if time.monotonic() - started > RUN_BUDGET_SECONDS:
            break  # the next hourly run tests the rest
        claimed = ProviderKey.objects.filter(pk=pk, health_checked_at=checked_at)
        if checked_at is None:
            claimed = ProviderKey.objects.filter(pk=pk, health_checked_at__isnull=True)
        if not claimed.update(health_checked_at=now):
            continue  # another run took it
        test_key(ProviderKey.objects.get(pk=pk), client=client)
        tested += 1
    return tested


def ensure_schedule(**kwargs) -> None:
    """Create or update the key health schedule by name (connected to post_migrate)."""
    from django_q.models import Schedule

    Schedule.objects.update_or_create(
        name=SCHEDULE_NAME,
        defaults={
            "func": "generations.insight.keyhealth.test_team_keys",
            "schedule_type": Schedule.HOURLY,
            "repeats": -1,
        },
    )
