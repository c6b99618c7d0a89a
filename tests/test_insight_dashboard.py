"""The insight dashboard: every figure against a month of tasks whose answers were worked out by
hand, an empty period, gateways without tasks, the reconciliation rows, who may see the page,
the period chooser, and a query count that does not grow with the tasks."""

import itertools
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import LedgerEntry
from generations.insight import charts, dashboard
from generations.models import Task, TaskEvent

pytestmark = pytest.mark.django_db

MARCH = {"period": "custom", "from": "2026-03-01", "to": "2026-03-31"}
_serial = itertools.count(1)


def at(day: int, hour: int = 10, seconds: int = 0, month: int = 3) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC) + timedelta(seconds=seconds)


def make_task(
    user,
    *,
    provider="apimart",
    model="Omni-Flash-Ext",
    key_label="A1",
    state=Task.State.SUCCEEDED,
    created=None,
    took=None,
    fetched_after=None,
    polls=0,
    http_429s=0,
    http_5xxs=0,
    cost=None,
    unit="second",
    units=4,
    charged=40,
    refund=False,
) -> Task:
    """A task with its debit (and refund) in the ledger at its creation time; `took` seconds to
    finish, having entered `fetching` `fetched_after` seconds after it was created."""
    task = Task.objects.create(
        user=user,
        provider=provider,
        model=model,
        kind="video",
        prompt="a fox",
        key_label=key_label,
        state=state,
        created_at=created,
        finished_at=created + timedelta(seconds=took) if took is not None else None,
        polls=polls,
        gateway_429s=http_429s,
        gateway_5xxs=http_5xxs,
        gateway_cost=cost,
        price_unit=unit,
        price_credits_per_unit=charged // units,
        price_units=units,
        price_multiplier=Decimal(1),
        credits_charged=charged,
    )
    if fetched_after is not None:
        TaskEvent.objects.create(
            task=task,
            from_state="running",
            to_state="fetching",
            actor="poll",
            created_at=created + timedelta(seconds=fetched_after),
        )
    entries = [(LedgerEntry.Kind.DEBIT, -charged)]
    if refund:
        entries.append((LedgerEntry.Kind.REFUND, charged))
    for kind, amount in entries:
        LedgerEntry.objects.create(
            user=user,
            kind=kind,
            amount=amount,
            balance_after=0,
            task=task,
            idempotency_key=f"test-{next(_serial)}",
            created_at=created,
        )
    return task


@pytest.fixture
def march(alice, bob):
    """APIMart: five tasks on two keys; Omni Video: two; OmniaKey and Omixa: none. One task
    in February, outside the period, and a grant that is not spend."""
    tasks = {
        "t1": make_task(alice, created=at(2), took=60, fetched_after=50, polls=4, http_429s=1,
                        cost=Decimal("0.40")),
        "t2": make_task(alice, created=at(2, 11), took=120, fetched_after=100, polls=6,
                        http_5xxs=2, cost=Decimal("0.40")),
        "t3": make_task(alice, created=at(3), took=180, polls=8, cost=Decimal("1.00")),
        "t4": make_task(alice, key_label="A2", state=Task.State.FAILED, created=at(3, 11),
                        took=30, polls=2, http_429s=3, cost=Decimal("0.40"), refund=True),
        "t5": make_task(alice, key_label="A2", created=at(3, 12), took=240, polls=5),
        "v1": make_task(bob, provider="omnivideo", model="seedance-2", key_label="V1",
                        state=Task.State.NEEDS_REVIEW, created=at(5), polls=10, unit="task",
                        units=1, charged=30),
        "v2": make_task(bob, provider="omnivideo", model="seedance-2", key_label="V1",
                        state=Task.State.CANCELED, created=at(5, 11), took=5, unit="task",
                        units=1, charged=30, refund=True),
    }  # fmt: skip
    # A second download attempt enters `fetching` again; the delay counts from the first.
    TaskEvent.objects.create(
        task=tasks["t1"], from_state="fetching", to_state="fetching", actor="poll",
        created_at=at(2, seconds=58),
    )  # fmt: skip
    make_task(alice, created=at(20, month=2), took=999, polls=100, charged=400, units=4)
    LedgerEntry.objects.create(
        user=alice, kind="grant", amount=1000, balance_after=0, idempotency_key="grant-1",
        created_at=at(2),
    )  # fmt: skip
    return tasks


def march_period():
    period, problem = dashboard.choose_period(MARCH)
    assert problem == ""
    return period


def test_behaviour_per_gateway_matches_the_hand_counted_figures(march):
    gateways, _keys = dashboard.behaviour(march_period())
    by_id = {row.provider: row for row in gateways}

    assert [row.provider for row in gateways] == ["omniakey", "omnivideo", "apimart", "omixa"]
    apimart = by_id["apimart"]
    assert (apimart.tasks, apimart.succeeded, apimart.failed, apimart.refunded) == (5, 4, 1, 1)
    assert (apimart.success_rate, apimart.failure_rate) == (0.8, 0.2)
    assert (apimart.refund_rate, apimart.review_rate) == (0.2, 0.0)
    # Succeeded in 60, 120, 180 and 240 s: the median interpolates 120 and 180; the 95th
    # percentile sits 0.85 of the way from 180 to 240.
    assert apimart.p50 == pytest.approx(150)
    assert apimart.p95 == pytest.approx(231)
    # Seen finished 50 s in and done at 60; 100 s in and done at 120.
    assert apimart.lag == pytest.approx(15)
    assert apimart.polls == pytest.approx(5.0)  # (4 + 6 + 8 + 2 + 5) / 5
    assert (apimart.http_429s, apimart.http_5xxs) == (4, 2)
    assert apimart.shown_rates == ["80.0%", "20.0%", "20.0%", "0.0%"]

    omnivideo = by_id["omnivideo"]
    assert (omnivideo.tasks, omnivideo.succeeded, omnivideo.canceled) == (2, 0, 1)
    assert (omnivideo.needs_review, omnivideo.refunded) == (1, 1)
    assert omnivideo.shown_rates == ["0.0%", "0.0%", "50.0%", "50.0%"]
    assert (omnivideo.p50, omnivideo.p95, omnivideo.lag) == (None, None, None)
    assert omnivideo.polls == pytest.approx(5.0)

    for idle in (by_id["omniakey"], by_id["omixa"]):
        assert (idle.tasks, idle.http_429s, idle.http_5xxs) == (0, 0, 0)
        assert (idle.p50, idle.p95, idle.lag, idle.polls) == (None, None, None, None)
        assert idle.shown_rates == ["—", "—", "—", "—"]


def test_behaviour_per_key_matches_the_hand_counted_figures(march):
    _gateways, keys = dashboard.behaviour(march_period())
    by_key = {(row.provider, row.key_label): row for row in keys}

    assert list(by_key) == [("apimart", "A1"), ("apimart", "A2"), ("omnivideo", "V1")]
    first = by_key[("apimart", "A1")]
    assert (first.tasks, first.succeeded, first.failed) == (3, 3, 0)
    assert (first.p50, first.p95) == (pytest.approx(120), pytest.approx(174))
    assert (first.lag, first.polls, first.http_429s, first.http_5xxs) == (
        pytest.approx(15),
        pytest.approx(6),
        1,
        2,
    )
    second = by_key[("apimart", "A2")]
    assert (second.tasks, second.succeeded, second.failed, second.refunded) == (2, 1, 1, 1)
    assert (second.p50, second.p95, second.lag) == (pytest.approx(240), pytest.approx(240), None)
    assert (second.polls, second.http_429s) == (pytest.approx(3.5), 3)


def test_spend_per_member_gateway_model_and_day(march):
    spend = dashboard.spend(march_period())

    members = {row.label: (row.debited, row.refunded, row.net) for row in spend.members}
    assert members == {"Alice A.": (200, 40, 160), "Bob B.": (60, 30, 30)}
    gateways = {row.label: (row.debited, row.refunded) for row in spend.gateways}
    assert gateways == {"APIMart": (200, 40), "Omni Video": (60, 30)}
    models = {row.label: (row.debited, row.refunded) for row in spend.models}
    assert models == {"APIMart · Omni-Flash-Ext": (200, 40), "Omni Video · seedance-2": (60, 30)}
    assert len(spend.days) == 31
    days = {day: (row.debited, row.refunded) for day, row in spend.days if row.debited}
    assert days == {
        date(2026, 3, 2): (80, 0),
        date(2026, 3, 3): (120, 40),
        date(2026, 3, 5): (60, 30),
    }
    assert dict(spend.days)[date(2026, 3, 1)].net == 0


def test_gateway_cost_beside_credits_and_the_price_per_second(march):
    models = {(row.provider, row.model): row for row in dashboard.model_costs(march_period())}

    flash = models[("apimart", "Omni-Flash-Ext")]
    assert (flash.tasks, flash.charged, flash.refunded, flash.net) == (5, 200, 40, 160)
    assert (flash.gateway_cost, flash.with_cost) == (Decimal("2.2"), 4)
    # Four succeeded tasks of 4 billed seconds each: 160 credits kept over 16 seconds.
    assert flash.video_seconds == 16
    assert flash.per_second == pytest.approx(10.0)
    seedance = models[("omnivideo", "seedance-2")]
    assert (seedance.charged, seedance.refunded, seedance.gateway_cost) == (60, 30, None)
    assert seedance.per_second is None
    totals = {row.provider: row for row in dashboard.gateway_costs(list(models.values()))}
    assert (totals["apimart"].charged, totals["apimart"].gateway_cost) == (200, Decimal("2.2"))


def test_reconciliation_flags_the_odd_cost_the_missing_cost_and_the_refund_charged(march):
    found = dashboard.reconciliation(march_period())

    assert found.medians == {("apimart", "Omni-Flash-Ext"): pytest.approx(0.1)}
    assert [(row.task, row.reasons) for row in found.rows] == [
        (march["t5"], [dashboard.MISSING]),
        (march["t4"], [dashboard.REFUNDED_BUT_CHARGED]),
        (march["t3"], [dashboard.OFF_MEDIAN]),
    ]
    assert (found.total, found.more) == (3, 0)
    summary = [
        (g["provider"], g["key_label"], g["month"].date(), g["tasks"], g["missing"],
         g["off_median"], g["refunded"])
        for g in found.summary
    ]  # fmt: skip
    assert summary == [
        ("apimart", "A1", date(2026, 3, 1), 1, 0, 1, 0),
        ("apimart", "A2", date(2026, 3, 1), 2, 1, 0, 1),
    ]


def test_the_reconciliation_shows_its_newest_rows_and_says_how_many_more(march, alice, settings):
    for hour in range(3):
        make_task(alice, created=at(6, hour), took=10)  # succeeded without a cost
    dashboard_rows = dashboard.RECONCILIATION_ROWS
    dashboard.RECONCILIATION_ROWS = 4
    try:
        found = dashboard.reconciliation(march_period())
    finally:
        dashboard.RECONCILIATION_ROWS = dashboard_rows
    assert (len(found.rows), found.total, found.more) == (4, 6, 2)
    assert [row.task.created_at for row in found.rows] == [at(6, 2), at(6, 1), at(6, 0), at(3, 12)]


def test_the_page_shows_the_figures_and_links_each_flagged_task(client, carol, march):
    client.force_login(carol)
    response = client.get("/insight/", MARCH)

    assert response.status_code == 200
    body = response.content.decode()
    for task in (march["t3"], march["t4"], march["t5"]):
        assert f'href="/admin/generations/task/{task.pk}/change/"' in body
    assert f"/admin/generations/task/{march['t1'].pk}/change/" not in body
    assert body.count('class="reconciliation-row"') == 3
    assert "150.0" in body and "231.0" in body  # APIMart's p50 and p95
    assert "10.00" in body  # credits per second of video
    assert 'href="/static/css/insight.css"' in body
    # Two charts, each named and described, with no inline style.
    assert body.count('<svg class="chart" role="img" aria-labelledby=') == 2
    assert "<title id=" in body and "<desc id=" in body
    assert "style=" not in body


def test_an_empty_period_shows_every_gateway_with_zeros(client, carol, march):
    client.force_login(carol)
    response = client.get(
        "/insight/", {"period": "custom", "from": "2026-01-01", "to": "2026-01-31"}
    )

    body = response.content.decode()
    gateways, keys = dashboard.behaviour(
        dashboard.choose_period({"period": "custom", "from": "2026-01-01", "to": "2026-01-31"})[0]
    )
    assert [row.tasks for row in gateways] == [0, 0, 0, 0]
    assert keys == []
    for name in ("APIMart", "Omni Video", "OmniaKey", "Omixa"):
        assert f'<th scope="row">{name}</th>' in body
    assert "No credits moved in this period." in body
    assert "Nothing to reconcile in this period." in body


@pytest.mark.parametrize("query", [{}, {"period": "day"}, MARCH])
def test_members_are_told_there_is_nothing_here(client, alice, query):
    client.force_login(alice)
    assert client.get("/insight/", query).status_code == 404


def test_signed_out_visitors_are_sent_to_log_in(client):
    response = client.get("/insight/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_staff_without_superuser_rights_see_the_dashboard(client, django_user_model):
    staff = django_user_model.objects.create_user("dora", password="x", is_staff=True)
    client.force_login(staff)
    assert client.get("/insight/").status_code == 200


def test_an_inactive_staff_member_is_no_longer_let_in(client, django_user_model):
    staff = django_user_model.objects.create_user("eve", password="x", is_staff=True)
    client.force_login(staff)
    django_user_model.objects.filter(pk=staff.pk).update(is_active=False)
    response = client.get("/insight/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


WEDNESDAY = date(2026, 3, 11)


@pytest.mark.parametrize(
    ("params", "first", "last"),
    [
        ({"period": "day"}, date(2026, 3, 11), date(2026, 3, 11)),
        ({"period": "week"}, date(2026, 3, 9), date(2026, 3, 15)),
        ({"period": "month"}, date(2026, 3, 1), date(2026, 3, 31)),
        ({}, date(2026, 3, 1), date(2026, 3, 31)),
        ({"period": "custom", "from": "2025-12-30", "to": "2026-01-02"}, date(2025, 12, 30),
         date(2026, 1, 2)),
        ({"period": "custom", "from": "2025-03-11", "to": "2026-03-11"}, date(2025, 3, 11),
         date(2026, 3, 11)),
    ],
)  # fmt: skip
def test_the_period_chooser(params, first, last):
    period, problem = dashboard.choose_period(params, today=WEDNESDAY)
    assert (period.first_day, period.last_day, problem) == (first, last, "")
    assert period.end - period.start == timedelta(days=(last - first).days + 1)


def test_february_ends_on_its_last_day():
    period, _ = dashboard.choose_period({"period": "month"}, today=date(2028, 2, 10))
    assert (period.first_day, period.last_day) == (date(2028, 2, 1), date(2028, 2, 29))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"period": "custom", "from": "yesterday", "to": "2026-03-02"}, "must look like"),
        ({"period": "custom", "from": "2026-03-05", "to": "2026-03-02"}, "before the start"),
        ({"period": "custom", "from": "2025-03-10", "to": "2026-03-11"}, "at most 366 days"),
        ({"period": "custom"}, "must look like"),
        ({"period": "decade"}, "Unknown period"),
    ],
)
def test_bad_periods_fall_back_to_this_month_with_a_message(params, message):
    period, problem = dashboard.choose_period(params, today=WEDNESDAY)
    assert message in problem
    assert (period.kind, period.first_day, period.last_day) == (
        "month",
        date(2026, 3, 1),
        date(2026, 3, 31),
    )


def test_the_page_says_why_it_ignored_bad_dates(client, carol):
    client.force_login(carol)
    body = client.get("/insight/", {"period": "custom", "from": "2026-13-01", "to": "x"})
    assert body.status_code == 200
    assert re.search(
        r'role="alert">The dates must look like 2026-01-31; showing this month.<',
        body.content.decode(),
    )


def test_the_day_period_follows_the_site_time_zone(settings):
    settings.TIME_ZONE = "Pacific/Auckland"
    period, _ = dashboard.choose_period({"period": "day"}, today=date(2026, 3, 11))
    # Midnight in Auckland (UTC+13 in March) is 11:00 UTC the day before.
    assert period.start == datetime(2026, 3, 10, 11, tzinfo=UTC)


def spread(user, count: int, start: int) -> None:
    """`count` tasks on the fixture's keys and models, in every state, across March."""
    for n in range(start, start + count):
        make_task(
            user,
            provider=("apimart", "omnivideo")[n % 2],
            model=("Omni-Flash-Ext", "seedance-2")[n % 2],
            key_label=("A1", "V1")[n % 2],
            state=(Task.State.SUCCEEDED, Task.State.FAILED, Task.State.SUCCEEDED)[n % 3],
            created=at(1 + n % 28, seconds=n),
            took=30 + n,
            fetched_after=20 + n if n % 4 == 0 else None,
            cost=Decimal(n % 5) / 10 if n % 3 else None,
            refund=n % 3 == 1,
        )


def test_the_number_of_queries_does_not_grow_with_the_tasks(client, carol, alice):
    client.force_login(carol)
    spread(alice, 6, 0)
    with CaptureQueriesContext(connection) as few:
        assert client.get("/insight/", MARCH).status_code == 200
    spread(alice, 54, 6)
    with CaptureQueriesContext(connection) as many:
        assert client.get("/insight/", MARCH).status_code == 200
    assert Task.objects.count() == 60
    assert len(few) == len(many)


def test_a_chart_draws_bars_to_scale_and_escapes_its_labels():
    svg = str(
        charts.bar_chart(
            "Tasks <by> gateway",
            "Succeeded and failed.",
            ["A&B", "C"],
            [
                charts.Series("succeeded", "chart-succeeded", [30, 15]),
                charts.Series("failed", "chart-failed", [10, 0]),
            ],
            stacked=True,
        )
    )
    heights = [
        float(h)
        for h in re.findall(
            r'<rect class="chart-\w+" x="[\d.]+" y="[\d.]+" width="[\d.]+" height="([\d.]+)">', svg
        )
    ]
    # The tallest stack (40) fills the bar area; the others are drawn in proportion.
    assert heights == [135.0, 45.0, 67.5, 0.0]
    assert "<title id=" in svg and ">Tasks &lt;by&gt; gateway</title>" in svg
    assert ">A&amp;B</text>" in svg and "<title>A&amp;B: 30 succeeded</title>" in svg
    assert ">40</text>" in svg  # the scale's label


def test_the_period_form_keeps_the_chosen_dates(client, carol):
    client.force_login(carol)
    body = client.get("/insight/", MARCH).content.decode()
    assert 'name="from" value="2026-03-01"' in body and 'name="to" value="2026-03-31"' in body
    assert 'value="custom" checked' in body
    body = client.get("/insight/", {"period": "week"}).content.decode()
    assert 'value="week" checked' in body
