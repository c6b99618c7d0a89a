"""CSV exports of tasks and of ledger entries for one period and, optionally, one member.

For the team's accountant: staff only, one row per task or per ledger entry, times in the site's
time zone. A file is written while it is sent: rows come from the database in chunks
(`iterator(chunk_size=...)` over `values_list`), so an export of a year holds one chunk in
memory, not the file. Credits refunded come from each task's refund entry through a subquery,
so the number of queries does not grow with the number of rows.

A cell is text a spreadsheet may read as a formula; one that starts like a formula gets a
leading apostrophe (OWASP's advice on CSV injection). Numbers are written as numbers.
"""

from __future__ import annotations

import calendar
import csv
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import IntegerField, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from accounts.models import LedgerEntry
from generations.insight.access import staff_only
from generations.models import Task

MAX_DAYS = 366
# Rows fetched per round trip: big enough to keep round trips few, small enough to keep memory.
CHUNK_SIZE = 2000
# What makes a spreadsheet read a cell as a formula (OWASP: = + - @, and tab / carriage return).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

TASK_COLUMNS = (
    "task id",
    "created",
    "finished",
    "member",
    "gateway",
    "model",
    "key label",
    "state",
    "units",
    "unit",
    "credits per unit",
    "price multiplier",
    "credits charged",
    "credits refunded",
    "gateway cost",
    "gateway task id",
    "run id",
)
LEDGER_COLUMNS = (
    "entry id",
    "time",
    "member",
    "kind",
    "amount",
    "balance after",
    "task id",
    "reason",
    "created by",
)


class BadParameters(ValueError):
    """A period or member the export cannot use; the message is shown as it is."""


@dataclass(frozen=True)
class Period:
    """Whole days from `first` to `last` (both included), in the site's time zone."""

    first: date
    last: date
    member: Any = None  # a User, or None for everyone

    @property
    def start(self) -> datetime:
        return timezone.make_aware(datetime.combine(self.first, time.min))

    @property
    def end(self) -> datetime:
        """The first moment after the period."""
        return timezone.make_aware(datetime.combine(self.last + timedelta(days=1), time.min))

    def filename(self, what: str) -> str:
        who = ""
        if self.member is not None:
            who = "-" + (re.sub(r"[^A-Za-z0-9_.-]", "_", self.member.get_username()) or "member")
        return f"{what}{who}-{self.first.isoformat()}_{self.last.isoformat()}.csv"


def this_month(today: date | None = None) -> tuple[date, date]:
    today = today or timezone.localdate()
    days = calendar.monthrange(today.year, today.month)[1]
    return today.replace(day=1), today.replace(day=days)


def parse_date(value: str, name: str) -> date:
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise BadParameters(f"{name!r} must be a date such as 2026-01-31.") from None


def parse_period(query) -> Period:
    """The period and member of an export's query string; BadParameters says what is wrong."""
    default_first, default_last = this_month()
    raw_first, raw_last = query.get("from", ""), query.get("to", "")
    first = parse_date(raw_first, "from") if raw_first.strip() else default_first
    last = parse_date(raw_last, "to") if raw_last.strip() else default_last
    if first > last:
        raise BadParameters("'from' must not be after 'to'.")
    if (last - first).days + 1 > MAX_DAYS:
        raise BadParameters(f"A period is at most {MAX_DAYS} days; choose a shorter one.")
    member = None
    username = query.get("member", "").strip()
    if username:
        member = get_user_model().objects.filter(username=username).first()
        if member is None:
            raise BadParameters(f"There is no member {username!r}.")
    return Period(first, last, member)


def cell(value: Any) -> Any:
    """A value as a CSV cell: times in the site's time zone, text guarded against formulas."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return timezone.localtime(value).isoformat(timespec="seconds")
    if isinstance(value, str):
        return "'" + value if value.startswith(FORMULA_STARTS) else value
    if isinstance(value, int | float) or hasattr(value, "as_tuple"):  # numbers, Decimals
        return value
    return str(value)  # UUIDs


def task_rows(period: Period) -> Iterator[tuple]:
    refunded = LedgerEntry.objects.filter(task=OuterRef("pk"), kind=LedgerEntry.Kind.REFUND).values(
        "amount"
    )[:1]
    tasks = Task.objects.filter(created_at__gte=period.start, created_at__lt=period.end)
    if period.member is not None:
        tasks = tasks.filter(user=period.member)
    rows = (
        tasks.annotate(refunded=Coalesce(Subquery(refunded), Value(0), output_field=IntegerField()))
        .order_by("created_at", "pk")
        .values_list(
            "code",
            "created_at",
            "finished_at",
            "user__username",
            "provider",
            "model",
            "key_label",
            "state",
            "price_units",
            "price_unit",
            "price_credits_per_unit",
            "price_multiplier",
            "credits_charged",
            "refunded",
            "gateway_cost",
            "provider_task_id",
            "run__code",
        )
    )
    return rows.iterator(chunk_size=CHUNK_SIZE)


def ledger_rows(period: Period) -> Iterator[tuple]:
    entries = LedgerEntry.objects.filter(created_at__gte=period.start, created_at__lt=period.end)
    if period.member is not None:
        entries = entries.filter(user=period.member)
    rows = entries.order_by("created_at", "pk").values_list(
        "pk",
        "created_at",
        "user__username",
        "kind",
        "amount",
        "balance_after",
        "task__code",
        "reason",
        "created_by__username",
    )
    return rows.iterator(chunk_size=CHUNK_SIZE)


class _Line:
    """A file-like object whose write hands the line back, so csv.writer can feed a stream."""

    def write(self, value: str) -> str:
        return value


def csv_lines(header: Iterable[str], rows: Iterable[tuple]) -> Iterator[str]:
    writer = csv.writer(_Line())
    yield writer.writerow(header)
    for row in rows:
        yield writer.writerow([cell(value) for value in row])


def streamed_csv(period: Period, what: str, header, rows) -> StreamingHttpResponse:
    response = StreamingHttpResponse(
        csv_lines(header, rows), content_type="text/csv; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="{period.filename(what)}"'
    response["Cache-Control"] = "private, no-store"
    return response


def bad_request(exc: BadParameters) -> HttpResponse:
    return HttpResponseBadRequest(str(exc), content_type="text/plain; charset=utf-8")


@staff_only
@require_GET
def tasks_csv(request: HttpRequest) -> HttpResponse:
    try:
        period = parse_period(request.GET)
    except BadParameters as exc:
        return bad_request(exc)
    return streamed_csv(period, "tasks", TASK_COLUMNS, task_rows(period))


@staff_only
@require_GET
def ledger_csv(request: HttpRequest) -> HttpResponse:
    try:
        period = parse_period(request.GET)
    except BadParameters as exc:
        return bad_request(exc)
    return streamed_csv(period, "ledger", LEDGER_COLUMNS, ledger_rows(period))


@staff_only
@require_GET
def exports_page(request: HttpRequest) -> HttpResponse:
    first, last = this_month()
    members = get_user_model().objects.filter(is_active=True).order_by("username")
    return render(
        request,
        "insight/exports.html",
        {
            "first": first,
            "last": last,
            "members": members.values_list("username", flat=True),
            "max_days": MAX_DAYS,
            "time_zone": timezone.get_current_timezone_name(),
            "task_columns": TASK_COLUMNS,
            "ledger_columns": LEDGER_COLUMNS,
        },
    )
