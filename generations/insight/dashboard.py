"""The admin dashboard's figures: how each gateway and key behaves, where credits go, and the
tasks whose gateway-reported cost disagrees with what we expect.

Every figure is an aggregate computed by the database (values().annotate() with filtered
Count/Sum/Avg), so the number of queries depends on the gateways, keys and models, never on
the number of tasks. Percentiles use percentile_cont on PostgreSQL; SQLite has no such
aggregate, so there one query numbers each group's rows in order (ROW_NUMBER) and returns only
the one or two rows each percentile falls between, which are interpolated the same way.

Bases, stated once: behaviour and cost per model count the tasks *created* in the period;
credits debited and refunded count the ledger entries *made* in the period.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from django.db import connection
from django.db.models import (
    Aggregate,
    Avg,
    Count,
    Exists,
    F,
    FloatField,
    Func,
    OuterRef,
    Q,
    QuerySet,
    Sum,
    Window,
)
from django.db.models.functions import Cast, Coalesce, RowNumber, TruncDate, TruncMonth
from django.utils import timezone

from accounts.models import LedgerEntry
from generations import providers
from generations.models import Task, TaskEvent

MAX_CUSTOM_DAYS = 366
RECONCILIATION_ROWS = 200
# A task's gateway cost per unit further than this from its model's median is flagged.
COST_TOLERANCE = 0.25
# The gateways whose documents return what a task cost them (APIMart `cost`, Omni Video
# `credits`); only their tasks can be reconciled.
REPORTS_COST = ("apimart", "omnivideo")

PERIODS = {"day": "Today", "week": "This week", "month": "This month", "custom": "Custom"}


@dataclass(frozen=True)
class Period:
    kind: str
    start: datetime  # inclusive
    end: datetime  # exclusive
    first_day: date
    last_day: date

    @property
    def label(self) -> str:
        if self.first_day == self.last_day:
            return f"{PERIODS[self.kind]}: {self.first_day:%d %b %Y}"
        return f"{PERIODS[self.kind]}: {self.first_day:%d %b %Y} – {self.last_day:%d %b %Y}"


def _midnight(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


def _span(kind: str, first: date, last: date) -> Period:
    return Period(kind, _midnight(first), _midnight(last + timedelta(days=1)), first, last)


def choose_period(params, today: date | None = None) -> tuple[Period, str]:
    """The period asked for in `params` (period=day|week|month|custom with from/to dates) in
    the site's time zone, and a message when the request made no sense: then the month."""
    today = today or timezone.localdate()
    kind = params.get("period", "month")
    if kind == "day":
        return _span("day", today, today), ""
    if kind == "week":
        monday = today - timedelta(days=today.weekday())
        return _span("week", monday, monday + timedelta(days=6)), ""
    month = _span("month", today.replace(day=1), _month_end(today))
    if kind != "custom":
        return month, "" if kind == "month" else "Unknown period; showing this month."
    try:
        first = date.fromisoformat(params.get("from", ""))
        last = date.fromisoformat(params.get("to", ""))
    except ValueError:
        return month, "The dates must look like 2026-01-31; showing this month."
    if last < first:
        return month, "The end date is before the start date; showing this month."
    if (last - first).days + 1 > MAX_CUSTOM_DAYS:
        return month, f"A period is at most {MAX_CUSTOM_DAYS} days; showing this month."
    return _span("custom", first, last), ""


def _month_end(day: date) -> date:
    following = (day.replace(day=28) + timedelta(days=4)).replace(day=1)
    return following - timedelta(days=1)


class Seconds(Func):
    """Seconds from `start` to `end` as a float, on both databases."""

    output_field = FloatField()

    def __init__(self, end, start, **extra):
        super().__init__(end, start, **extra)

    def _parts(self, compiler):
        (end, end_params), (start, start_params) = (
            compiler.compile(expression) for expression in self.get_source_expressions()
        )
        return end, start, (*end_params, *start_params)

    def as_sqlite(self, compiler, connection, **extra):
        end, start, params = self._parts(compiler)
        return f"((julianday({end}) - julianday({start})) * 86400.0)", params

    def as_sql(self, compiler, connection, **extra):
        end, start, params = self._parts(compiler)
        return f"(EXTRACT(EPOCH FROM ({end} - {start})))::double precision", params


class Percentile(Aggregate):
    """PostgreSQL's percentile_cont: the interpolated percentile of an ordered group."""

    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression, fraction: float, **extra):
        super().__init__(expression, fraction=float(fraction), **extra)


def _refund_exists():
    return Exists(LedgerEntry.objects.filter(task=OuterRef("pk"), kind=LedgerEntry.Kind.REFUND))


def tasks_in(period: Period) -> QuerySet[Task]:
    return Task.objects.filter(created_at__gte=period.start, created_at__lt=period.end)


@dataclass
class Behaviour:
    """How one gateway (or one of its keys) behaved over the period."""

    provider: str
    name: str
    key_label: str = ""
    tasks: int = 0
    succeeded: int = 0
    failed: int = 0
    canceled: int = 0
    refunded: int = 0
    needs_review: int = 0
    p50: float | None = None
    p95: float | None = None
    lag: float | None = None  # seconds from the gateway's completion to ours, on average
    polls: float | None = None
    http_429s: int = 0
    http_5xxs: int = 0

    def rate(self, count: int) -> float | None:
        return count / self.tasks if self.tasks else None

    @property
    def success_rate(self):
        return self.rate(self.succeeded)

    @property
    def failure_rate(self):
        return self.rate(self.failed)

    @property
    def refund_rate(self):
        return self.rate(self.refunded)

    @property
    def review_rate(self):
        return self.rate(self.needs_review)

    # Shown as percentages; a dash where there was nothing to divide.
    @property
    def shown_rates(self) -> list[str]:
        rates = (self.success_rate, self.failure_rate, self.refund_rate, self.review_rate)
        return ["—" if rate is None else f"{rate:.1%}" for rate in rates]


def _durations(tasks: QuerySet[Task]) -> QuerySet[Task]:
    return tasks.filter(state=Task.State.SUCCEEDED, finished_at__isnull=False).annotate(
        duration=Seconds("finished_at", "created_at")
    )


def ranked_percentiles(
    rows: QuerySet, grouping: tuple[str, ...], value, counts: dict[tuple, int], fractions
) -> dict[tuple, tuple[float | None, ...]]:
    """percentile_cont of `value` per group, for databases without it (SQLite): one query
    numbers each group's rows in order of `value` and returns only the ranks the percentiles
    fall between (at most two per group and fraction), given each group's row count."""
    wanted: dict[tuple, list[tuple[float, int]]] = {}
    ranks: set[int] = set()
    for group, count in counts.items():
        if not count:
            continue
        for fraction in fractions:
            position = (count - 1) * fraction
            low = math.floor(position)
            wanted.setdefault(group, []).append((position - low, low + 1))
            ranks.update({low + 1, min(low + 2, count)})
    if not ranks:
        return {group: (None,) * len(fractions) for group in counts}
    numbered = (
        rows.annotate(
            value=value,
            rank=Window(
                RowNumber(), partition_by=[F(part) for part in grouping], order_by=F("value").asc()
            ),
        )
        .filter(rank__in=sorted(ranks))
        .values_list(*grouping, "rank", "value")
    )
    found = {(tuple(row[:-2]), row[-2]): row[-1] for row in numbered}
    figures = {}
    for group in counts:
        if group not in wanted:
            figures[group] = (None,) * len(fractions)
            continue
        results = []
        for weight, rank in wanted[group]:
            low = found[(group, rank)]
            high = found.get((group, rank + 1), low)
            results.append(low + (high - low) * weight)
        figures[group] = tuple(results)
    return figures


def _refunds_and_lags(period: Period, grouping: tuple[str, ...]) -> tuple[dict, dict]:
    """Refunded tasks and the average delay from the gateway's completion to ours, per group.

    Grouped queries over the ledger and the events joined to their tasks: a correlated
    subquery per task would be run for every task of the period (seconds at 100,000 tasks).
    """
    through_task = [f"task__{part}" for part in grouping]
    in_period = {"task__created_at__gte": period.start, "task__created_at__lt": period.end}
    refunded = {
        tuple(g[part] for part in through_task): g["tasks"]
        for g in LedgerEntry.objects.filter(kind=LedgerEntry.Kind.REFUND, **in_period)
        .values(*through_task)
        .annotate(tasks=Count("task", distinct=True))
        .order_by()
    }
    # The first time a succeeded task entered `fetching`: when we saw the gateway had done it.
    earlier = TaskEvent.objects.filter(
        task=OuterRef("task"), to_state=Task.State.FETCHING, created_at__lt=OuterRef("created_at")
    )
    lags = {
        tuple(g[part] for part in through_task): g["lag"]
        for g in TaskEvent.objects.filter(
            to_state=Task.State.FETCHING,
            task__state=Task.State.SUCCEEDED,
            task__finished_at__isnull=False,
            **in_period,
        )
        .exclude(Exists(earlier))
        .values(*through_task)
        .annotate(lag=Avg(Seconds("task__finished_at", "created_at")))
        .order_by()
    }
    return refunded, lags


def behaviour(period: Period) -> tuple[list[Behaviour], list[Behaviour]]:
    """(per gateway, per key) rows. Every gateway Omniweb speaks has a row, with or without
    tasks; keys appear when they had tasks."""
    postgres = connection.vendor == "postgresql"
    succeeded = Q(state=Task.State.SUCCEEDED, finished_at__isnull=False)
    figures = {
        "tasks": Count("pk"),
        "succeeded": Count("pk", filter=Q(state=Task.State.SUCCEEDED)),
        "failed": Count("pk", filter=Q(state=Task.State.FAILED)),
        "canceled": Count("pk", filter=Q(state=Task.State.CANCELED)),
        "needs_review": Count("pk", filter=Q(state=Task.State.NEEDS_REVIEW)),
        "timed": Count("pk", filter=succeeded),
        "polls": Avg("polls", output_field=FloatField()),
        "http_429s": Coalesce(Sum("gateway_429s"), 0),
        "http_5xxs": Coalesce(Sum("gateway_5xxs"), 0),
    }
    if postgres:
        duration = Seconds("finished_at", "created_at")
        figures["p50"] = Percentile(duration, 0.5, filter=succeeded)
        figures["p95"] = Percentile(duration, 0.95, filter=succeeded)
    base = tasks_in(period)
    names = {cls.id: cls.name for cls in providers.REGISTRY.values()}
    gateways = {pid: Behaviour(pid, name) for pid, name in names.items()}
    keys = []
    for grouping, rows in (
        (("provider",), gateways),
        (("provider", "key_label"), None),
    ):
        groups = list(base.values(*grouping).annotate(**figures).order_by(*grouping))
        refunded, lags = _refunds_and_lags(period, grouping)
        if not postgres:
            percentiles = ranked_percentiles(
                _durations(base),
                grouping,
                F("duration"),
                {tuple(g[part] for part in grouping): g["timed"] for g in groups},
                (0.5, 0.95),
            )
        for group in groups:
            row = Behaviour(
                provider=group["provider"],
                name=names.get(group["provider"], group["provider"]),
                key_label=group.get("key_label", ""),
            )
            for name in (
                "tasks",
                "succeeded",
                "failed",
                "canceled",
                "needs_review",
                "polls",
                "http_429s",
                "http_5xxs",
            ):
                setattr(row, name, group[name])
            group_key = tuple(group[part] for part in grouping)
            row.refunded = refunded.get(group_key, 0)
            row.lag = lags.get(group_key)
            if postgres:
                row.p50, row.p95 = group["p50"], group["p95"]
            else:
                row.p50, row.p95 = percentiles[group_key]
            if rows is None:
                keys.append(row)
            else:
                rows[row.provider] = row
    return list(gateways.values()), keys


@dataclass
class SpendRow:
    label: str
    debited: int = 0
    refunded: int = 0

    @property
    def net(self) -> int:
        return self.debited - self.refunded


def _ledger_in(period: Period) -> QuerySet[LedgerEntry]:
    return LedgerEntry.objects.filter(
        created_at__gte=period.start,
        created_at__lt=period.end,
        task__isnull=False,
        kind__in=[LedgerEntry.Kind.DEBIT, LedgerEntry.Kind.REFUND],
    )


def _spend(period: Period, *grouping) -> list[dict]:
    return list(
        _ledger_in(period)
        .values(*grouping)
        .annotate(
            debited=Coalesce(Sum(-F("amount"), filter=Q(kind=LedgerEntry.Kind.DEBIT)), 0),
            refunded=Coalesce(Sum("amount", filter=Q(kind=LedgerEntry.Kind.REFUND)), 0),
        )
        .order_by(*grouping)
    )


@dataclass
class Spend:
    members: list[SpendRow]
    gateways: list[SpendRow]
    models: list[SpendRow]
    days: list[tuple[date, SpendRow]]


def spend(period: Period) -> Spend:
    """Credits debited and refunded, from the ledger entries made in the period."""
    names = {cls.id: cls.name for cls in providers.REGISTRY.values()}
    members = [
        SpendRow(g["user__display_name"] or g["user__username"], g["debited"], g["refunded"])
        for g in _spend(period, "user__username", "user__display_name")
    ]
    gateways = [
        SpendRow(names.get(g["task__provider"], g["task__provider"]), g["debited"], g["refunded"])
        for g in _spend(period, "task__provider")
    ]
    models = [
        SpendRow(
            f"{names.get(g['task__provider'], g['task__provider'])} · {g['task__model']}",
            g["debited"],
            g["refunded"],
        )
        for g in _spend(period, "task__provider", "task__model")
    ]
    by_day = {
        g["day"]: SpendRow(g["day"].isoformat(), g["debited"], g["refunded"])
        for g in _ledger_in(period)
        .annotate(day=TruncDate("created_at", tzinfo=timezone.get_current_timezone()))
        .values("day")
        .annotate(
            debited=Coalesce(Sum(-F("amount"), filter=Q(kind=LedgerEntry.Kind.DEBIT)), 0),
            refunded=Coalesce(Sum("amount", filter=Q(kind=LedgerEntry.Kind.REFUND)), 0),
        )
        .order_by("day")
    }
    days = []
    day = period.first_day
    while day <= period.last_day:
        days.append((day, by_day.get(day, SpendRow(day.isoformat()))))
        day += timedelta(days=1)
    return Spend(members, gateways, models, days)


@dataclass
class ModelCost:
    """What one model's tasks created in the period cost us and the members."""

    provider: str
    model: str
    name: str
    tasks: int = 0
    charged: int = 0  # credits_charged of every task
    refunded: int = 0
    gateway_cost: Decimal | None = None
    with_cost: int = 0
    video_seconds: int = 0  # billed seconds (price_units) of succeeded per-second tasks

    @property
    def net(self) -> int:
        return self.charged - self.refunded

    @property
    def per_second(self) -> float | None:
        """Credits kept (charged net of refunds) per second of succeeded video."""
        if not self.video_seconds:
            return None
        return self.net / self.video_seconds


def model_costs(period: Period) -> list[ModelCost]:
    names = {cls.id: cls.name for cls in providers.REGISTRY.values()}
    groups = (
        tasks_in(period)
        .values("provider", "model")
        .annotate(
            tasks=Count("pk"),
            charged=Coalesce(Sum("credits_charged"), 0),
            cost_total=Sum("gateway_cost"),
            with_cost=Count("pk", filter=Q(gateway_cost__isnull=False)),
            video_seconds=Coalesce(
                Sum(
                    "price_units",
                    filter=Q(state=Task.State.SUCCEEDED, price_unit="second"),
                ),
                0,
            ),
        )
        .order_by("provider", "model")
    )
    # A second grouped query: summing refunds through a join would count a task's charge once
    # per ledger row.
    refunds = {
        (g["task__provider"], g["task__model"]): g["total"]
        for g in LedgerEntry.objects.filter(
            kind=LedgerEntry.Kind.REFUND,
            task__created_at__gte=period.start,
            task__created_at__lt=period.end,
        )
        .values("task__provider", "task__model")
        .annotate(total=Sum("amount"))
        .order_by()
    }
    return [
        ModelCost(
            provider=g["provider"],
            model=g["model"],
            name=names.get(g["provider"], g["provider"]),
            tasks=g["tasks"],
            charged=g["charged"],
            refunded=refunds.get((g["provider"], g["model"]), 0),
            gateway_cost=g["cost_total"],
            with_cost=g["with_cost"],
            video_seconds=g["video_seconds"],
        )
        for g in groups
    ]


def gateway_costs(models: list[ModelCost]) -> list[ModelCost]:
    """The per-model figures summed per gateway (a handful of rows, not tasks)."""
    totals: dict[str, ModelCost] = {}
    for row in models:
        total = totals.setdefault(row.provider, ModelCost(row.provider, "", row.name))
        total.tasks += row.tasks
        total.charged += row.charged
        total.refunded += row.refunded
        total.with_cost += row.with_cost
        total.video_seconds += row.video_seconds
        if row.gateway_cost is not None:
            total.gateway_cost = (total.gateway_cost or Decimal(0)) + row.gateway_cost
    return list(totals.values())


# Reconciliation ---------------------------------------------------------------------------

MISSING = "missing cost"
OFF_MEDIAN = "cost off the median"
REFUNDED_BUT_CHARGED = "refunded, gateway charged"


@dataclass
class Flagged:
    task: Task
    reasons: list[str]
    unit_cost: float | None
    median: float | None


@dataclass
class Reconciliation:
    rows: list[Flagged]
    total: int
    summary: list[dict]  # per provider, key and month: flagged counts by reason
    medians: dict[tuple[str, str], float] = field(default_factory=dict)

    @property
    def more(self) -> int:
        return self.total - len(self.rows)


def _unit_cost():
    return Cast("gateway_cost", FloatField()) / Cast("price_units", FloatField())


def cost_medians(period: Period) -> dict[tuple[str, str], float]:
    """The median gateway cost per unit (second, image or task) of each model's succeeded
    tasks in the period that report one."""
    priced = tasks_in(period).filter(
        provider__in=REPORTS_COST,
        state=Task.State.SUCCEEDED,
        gateway_cost__isnull=False,
        price_units__gt=0,
    )
    if connection.vendor == "postgresql":
        groups = (
            priced.values("provider", "model")
            .annotate(median=Percentile(_unit_cost(), 0.5))
            .order_by()
        )
        return {(g["provider"], g["model"]): g["median"] for g in groups}
    counts = {
        (g["provider"], g["model"]): g["n"]
        for g in priced.values("provider", "model").annotate(n=Count("pk")).order_by()
    }
    found = ranked_percentiles(priced, ("provider", "model"), _unit_cost(), counts, (0.5,))
    return {group: figures[0] for group, figures in found.items()}


def reconciliation(period: Period) -> Reconciliation:
    """Tasks of gateways that report a cost whose cost disagrees with what we expect:
    - succeeded without a reported cost;
    - a cost per unit more than COST_TOLERANCE away from the model's median in the period;
    - refunded to the member although the gateway reported a charge (cost > 0).
    """
    medians = cost_medians(period)
    off = Q(pk__in=[])
    for (provider, model), median in medians.items():
        off |= Q(provider=provider, model=model) & (
            Q(unit_cost__gt=median * (1 + COST_TOLERANCE))
            | Q(unit_cost__lt=median * (1 - COST_TOLERANCE))
        )
    missing = Q(state=Task.State.SUCCEEDED, gateway_cost__isnull=True)
    refunded = Q(has_refund=True, gateway_cost__gt=0)
    flagged = (
        tasks_in(period)
        .filter(provider__in=REPORTS_COST)
        .annotate(has_refund=_refund_exists(), unit_cost=_unit_cost())
        .filter(missing | refunded | (off & Q(gateway_cost__isnull=False, price_units__gt=0)))
    )
    summary = list(
        flagged.annotate(month=TruncMonth("created_at"))
        .values("provider", "key_label", "month")
        .annotate(
            tasks=Count("pk"),
            missing=Count("pk", filter=missing),
            refunded=Count("pk", filter=refunded),
            off_median=Count("pk", filter=off),
        )
        .order_by("-month", "provider", "key_label")
    )
    total = sum(group["tasks"] for group in summary)
    rows = []
    for task in flagged.select_related("user").order_by("-created_at", "-pk")[:RECONCILIATION_ROWS]:
        median = medians.get((task.provider, task.model))
        reasons = []
        if task.state == Task.State.SUCCEEDED and task.gateway_cost is None:
            reasons.append(MISSING)
        if (
            median is not None
            and task.unit_cost is not None
            and abs(task.unit_cost - median) > median * COST_TOLERANCE
        ):
            reasons.append(OFF_MEDIAN)
        if task.has_refund and task.gateway_cost and task.gateway_cost > 0:
            reasons.append(REFUNDED_BUT_CHARGED)
        rows.append(Flagged(task, reasons, task.unit_cost, median))
    return Reconciliation(rows, total, summary, medians)
