"""Alert emails to admins (and to the member where it is theirs).

Four kinds, each can be turned off in the admin (AlertSettings):
- limits: a member reached 80% or 100% of a daily or monthly credit limit;
- key_refused: a gateway refused a key (401: the key; 402: the account behind it is empty);
- stuck_tasks: tasks waiting in review, or still active past their deadline;
- failure_rate: a gateway failing far more tasks in the last hour than it usually does.

The subject line is what de-duplicates: a subject is mailed at most once an hour (a limit
reached stays reached until its period starts again, so that one is mailed once a period).
`check_all` runs every five minutes as a django-q2 schedule; a refused key is reported as soon
as the transaction that marked it commits.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.mail import EmailMessage, get_connection
from django.db import transaction
from django.db.models import Count, Q, Sum
from django.urls import reverse
from django.utils import timezone

from accounts import ledger
from accounts.models import LedgerEntry, ProviderKey
from generations import providers
from generations.models import Task
from generations.models.insight import AlertSent, AlertSettings

logger = logging.getLogger("omniweb.alerts")

SCHEDULE_NAME = "omniweb-alerts"
DEDUP_WINDOW = timedelta(hours=1)
# How long one process may hold a subject while it checks, sends and records; a process that
# dies holding it only delays that alert by this much.
LOCK_SECONDS = 60

# Failure-rate spike: judged only on a gateway that finished at least this many tasks in the
# last hour, and only when its failure rate there is above both SPIKE_FACTOR times its rate
# over the previous week and that rate plus SPIKE_POINTS.
SPIKE_MIN_TASKS = 10
SPIKE_FACTOR = 3
SPIKE_POINTS = 0.30
USUAL_PERIOD = timedelta(days=7)
RECENT_PERIOD = timedelta(hours=1)
# Stuck tasks listed by code in one email; the rest are counted.
STUCK_LISTED = 20

# Gateways sometimes repeat what they were sent; anything shaped like a secret is cut out
# before a message goes into an email.
TOKEN_LIKE = re.compile(r"\b(?:sk|pk|key|tok)[-_][A-Za-z0-9_\-]{6,}|[A-Za-z0-9_\-]{32,}")


@dataclass(frozen=True)
class Mail:
    to: tuple[str, ...]
    body: str


def link(path: str) -> str:
    """An absolute address where the site knows its own (PUBLIC_URL), the path otherwise."""
    return f"{settings.PUBLIC_URL}{path}" if settings.PUBLIC_URL else path


def admin_emails() -> list[str]:
    users = get_user_model().objects.filter(is_active=True, is_staff=True).exclude(email="")
    return sorted(set(users.values_list("email", flat=True)))


def _lock_key(subject: str) -> str:
    return "omniweb:alert:" + hashlib.sha256(subject.encode()).hexdigest()[:32]


def send_alert(kind: str, subject: str, mails: list[Mail], since: datetime | None = None) -> bool:
    """Send `mails` under `subject` unless that subject was sent since `since` (an hour ago by
    default, never later). Returns whether it was sent.

    Two processes may find the same problem at once: the subject is held in the shared cache
    (an atomic add) while one of them checks, sends and records, and the other skips it; the
    record then keeps the subject quiet for the rest of the window."""
    mails = [mail for mail in mails if mail.to]
    if not mails:
        return False
    now = timezone.now()
    since = min(since or now, now - DEDUP_WINDOW)
    lock = _lock_key(subject)
    if not cache.add(lock, "1", LOCK_SECONDS):
        return False
    try:
        if AlertSent.objects.filter(subject=subject, sent_at__gte=since).exists():
            return False
        messages = [
            EmailMessage(subject, mail.body, settings.DEFAULT_FROM_EMAIL, [address])
            for mail in mails
            for address in mail.to
        ]
        try:
            get_connection().send_messages(messages)
        except Exception:
            # Unsent means unrecorded: the next check tries again.
            logger.exception("event=alert_not_sent kind=%s", kind)
            return False
        AlertSent.objects.create(
            kind=kind,
            subject=subject,
            recipients=", ".join(message.to[0] for message in messages),
            body=mails[0].body,
            sent_at=now,
        )
        logger.info("event=alert_sent kind=%s recipients=%d", kind, len(messages))
        return True
    finally:
        cache.delete(lock)


# --- limits ------------------------------------------------------------------------------------


def check_limits(now: datetime | None = None) -> int:
    """Mail each member who spent 80% or 100% of a daily or monthly limit. Returns the number
    of alerts sent."""
    now = now or timezone.now()
    day, month = ledger.period_starts(now)
    tomorrow, next_month = ledger.period_ends(now)
    # Only members who spent anything this month can be near a limit: one grouped query finds
    # them, then each one's limits are read.
    spent = (
        LedgerEntry.objects.filter(
            kind__in=[LedgerEntry.Kind.DEBIT, LedgerEntry.Kind.REFUND],
            created_at__gte=min(day, month),
            created_at__lte=now,
        )
        .values("user")
        .annotate(
            today=Sum("amount", filter=Q(created_at__gte=day)),
            month=Sum("amount", filter=Q(created_at__gte=month)),
        )
    )
    totals = {row["user"]: row for row in spent}
    members = get_user_model().objects.filter(pk__in=totals, is_active=True)
    sent = 0
    for member in members:
        quota = ledger.effective_quota(member)
        row = totals[member.pk]
        periods = (
            ("daily", quota.max_credits_per_day, -(row["today"] or 0), day, tomorrow),
            ("monthly", quota.max_credits_per_month, -(row["month"] or 0), month, next_month),
        )
        for period, limit, credits, start, reset in periods:
            if not limit or limit <= 0 or credits * 100 < 80 * limit:
                continue
            percent = 100 if credits >= limit else 80
            sent += _limit_alert(member, period, percent, credits, limit, start, reset)
    return sent


def _limit_alert(member, period, percent, credits, limit, start, reset) -> bool:
    subject = f"Omniweb: {member.username} reached {percent}% of their {period} limit"
    when = timezone.localtime(reset).strftime("%d %b %Y %H:%M")
    facts = (
        f"{member.username} has spent {credits} of the {limit} credits their {period} limit "
        f"allows ({credits * 100 // limit}%).\n"
    )
    if percent == 100:
        facts += f"Submits that would go past the limit are refused until {when}.\n"
    else:
        facts += f"At {limit} credits, submits are refused until {when}.\n"
    to_admins = Mail(
        tuple(admin_emails()),
        facts
        + "\nThe member's limits (Quota) are under their user in the admin: "
        + link(reverse("admin:accounts_user_change", args=[member.pk]))
        + "\n",
    )
    mails = [to_admins]
    if member.email and member.email not in to_admins.to:
        mails.append(
            Mail(
                (member.email,),
                facts
                + "\nYour spending: "
                + link(reverse("accounts-credits"))
                + "\nAsk an admin if you need a higher limit.\n",
            )
        )
    # A limit reached stays reached until its period starts again: one email a period.
    return send_alert("limits", subject, mails, since=start)


# --- refused keys ------------------------------------------------------------------------------


def key_refused_on_commit(key: ProviderKey, message: str, status: int = 401) -> None:
    """Report a refused key once the transaction that noticed it commits; a rollback sends
    nothing."""
    pk = key.pk
    transaction.on_commit(lambda: key_refused(pk, message, status))


def key_refused(key_pk: int, message: str, status: int = 401) -> bool:
    """Mail admins, and the key's owner when it is a member's own key. Never raises: a mail
    that cannot be sent must not break the task engine."""
    try:
        if not AlertSettings.current().key_refused:
            return False
        key = ProviderKey.objects.select_related("owner").filter(pk=key_pk).first()
        if key is None:
            return False
        return _key_alert(key, message, status)
    except Exception:
        logger.exception("event=alert_failed kind=key_refused")
        return False


def _key_alert(key: ProviderKey, message: str, status: int) -> bool:
    gateway = key.provider_name or key.provider
    subject = f"Omniweb: key '{key.label}' refused by {gateway}"
    if status == 402:
        what = (
            f"{gateway} answered 402: the account behind the key {key.label!r} ({key.masked}) "
            "has no balance left. Tasks sent with it fail until the account is recharged there."
        )
    else:
        what = (
            f"{gateway} answered {status}: it refused the key {key.label!r} ({key.masked}). "
            "Omniweb no longer uses it until its secret is replaced."
        )
    said = TOKEN_LIKE.sub("[hidden]", message)[:300]
    facts = f"{what}\n\n{gateway} said: {said}\n"
    admins = admin_emails()
    mails = [
        Mail(
            tuple(admins),
            facts
            + "\nThe key in the admin: "
            + link(reverse("admin:accounts_providerkey_change", args=[key.pk]))
            + "\n",
        )
    ]
    owner = key.owner
    if owner is not None and owner.email and owner.email not in admins:
        mails.append(
            Mail((owner.email,), facts + "\nYour keys: " + link(reverse("accounts-keys")) + "\n")
        )
    return send_alert("key_refused", subject, mails)


# --- stuck tasks -------------------------------------------------------------------------------


def check_stuck_tasks(now: datetime | None = None) -> bool:
    """One email listing the tasks that wait in review or are past their deadline."""
    now = now or timezone.now()
    stuck = Task.objects.filter(
        Q(state=Task.State.NEEDS_REVIEW)
        | Q(state__in=Task.ACTIVE_STATES, deadline_at__isnull=False, deadline_at__lt=now)
    )
    counts = stuck.aggregate(
        total=Count("pk"),
        review=Count("pk", filter=Q(state=Task.State.NEEDS_REVIEW)),
        # A task in review past its deadline is counted once, as in review.
        late=Count("pk", filter=Q(deadline_at__lt=now) & ~Q(state=Task.State.NEEDS_REVIEW)),
    )
    if not counts["total"]:
        return False
    lines = [
        f"{counts['total']} task(s) need an admin: {counts['review']} in review, "
        f"{counts['late']} still active past their deadline.",
        "",
    ]
    listed = stuck.order_by("created_at").values_list(
        "pk", "code", "provider", "state", "deadline_at"
    )[:STUCK_LISTED]
    for pk, code, provider, state, deadline in listed:
        late = (
            f", deadline {timezone.localtime(deadline):%d %b %H:%M}"
            if deadline and deadline < now
            else ""
        )
        path = reverse("admin:generations_task_change", args=[pk])
        lines.append(f"- {code} ({provider}, {state}{late}): {link(path)}")
    if counts["total"] > STUCK_LISTED:
        lines.append(f"... and {counts['total'] - STUCK_LISTED} more.")
    lines += ["", "Tasks in review: " + link(reverse("admin:generations_taskinreview_changelist"))]
    mail = Mail(tuple(admin_emails()), "\n".join(lines) + "\n")
    return send_alert(
        "stuck_tasks", "Omniweb: tasks need review or are past their deadline", [mail]
    )


# --- failure rate ------------------------------------------------------------------------------


def failure_rates(now: datetime | None = None) -> dict[str, dict]:
    """Per gateway: finished (succeeded or failed; a cancel is the member's choice) and failed
    tasks in the last hour and in the week before it, by when they finished. One query."""
    now = now or timezone.now()
    hour_ago = now - RECENT_PERIOD
    week_ago = hour_ago - USUAL_PERIOD
    recent = Q(finished_at__gte=hour_ago)
    usual = Q(finished_at__lt=hour_ago)
    failed = Q(state=Task.State.FAILED)
    rows = (
        Task.objects.filter(
            state__in=[Task.State.SUCCEEDED, Task.State.FAILED],
            finished_at__gte=week_ago,
            finished_at__lte=now,
        )
        .values("provider")
        .annotate(
            recent=Count("pk", filter=recent),
            recent_failed=Count("pk", filter=recent & failed),
            usual=Count("pk", filter=usual),
            usual_failed=Count("pk", filter=usual & failed),
        )
    )
    return {row.pop("provider"): row for row in rows}


def is_spike(row: dict) -> bool:
    if row["recent"] < SPIKE_MIN_TASKS:
        return False
    rate = row["recent_failed"] / row["recent"]
    usual = row["usual_failed"] / row["usual"] if row["usual"] else 0.0
    return rate > max(SPIKE_FACTOR * usual, usual + SPIKE_POINTS)


def check_failure_rates(now: datetime | None = None) -> int:
    sent = 0
    for provider, row in failure_rates(now).items():
        if not is_spike(row):
            continue
        name = providers.REGISTRY[provider].name if provider in providers.REGISTRY else provider
        rate = 100 * row["recent_failed"] // row["recent"]
        usual = 100 * row["usual_failed"] // row["usual"] if row["usual"] else 0
        body = (
            f"{name} failed {row['recent_failed']} of the {row['recent']} tasks that finished in "
            f"the last hour ({rate}%); over the week before, it failed {row['usual_failed']} of "
            f"{row['usual']} ({usual}%).\n\n"
            "Failed tasks in the admin: "
            + link(reverse("admin:generations_task_changelist"))
            + f"?provider__exact={provider}&state__exact=failed\n"
        )
        subject = f"Omniweb: {name}'s failure rate is far above its usual"
        sent += send_alert("failure_rate", subject, [Mail(tuple(admin_emails()), body)])
    return sent


# --- the periodic job --------------------------------------------------------------------------


def check_all() -> dict[str, int]:
    """Job: every check that is turned on. Returns how many alerts each sent."""
    turned_on = AlertSettings.current()
    sent = {}
    if turned_on.limits:
        sent["limits"] = check_limits()
    if turned_on.stuck_tasks:
        sent["stuck_tasks"] = int(check_stuck_tasks())
    if turned_on.failure_rate:
        sent["failure_rate"] = check_failure_rates()
    return sent


def ensure_schedule(**kwargs) -> None:
    """Create or update the alerts schedule, by name (run after every migrate)."""
    from django_q.models import Schedule

    Schedule.objects.update_or_create(
        name=SCHEDULE_NAME,
        defaults={
            "func": "generations.insight.alerts.check_all",
            "schedule_type": Schedule.MINUTES,
            "minutes": 5,
            "repeats": -1,
        },
    )
