"""The staff's CSV exports of tasks and ledger entries: rows, sums, filters, streaming, guards."""

import csv
import io
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from django.test.utils import CaptureQueriesContext

from accounts import ledger
from accounts.models import LedgerEntry, ProviderKey
from generations.insight import exports
from generations.models import Task
from generations.providers import GenerationRequest
from generations.services import fail_task, submit_task

pytestmark = pytest.mark.django_db

TASKS = "/insight/export/tasks.csv"
LEDGER = "/insight/export/ledger.csv"
PAGE = "/insight/exports/"
MARCH = {"from": "2026-03-01", "to": "2026-03-31"}


def cat(duration: int, resolution: str = "720p") -> GenerationRequest:
    return GenerationRequest(
        "apimart", "Omni-Flash-Ext", "a cat", duration=duration, resolution=resolution
    )


def rows_of(response) -> list[dict[str, str]]:
    assert isinstance(response, StreamingHttpResponse)
    text = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(text)))


def header_of(response) -> list[str]:
    text = b"".join(response.streaming_content).decode()
    return next(csv.reader(io.StringIO(text)))


def submitted(user, key, request, when: datetime) -> Task:
    task, _ = submit_task(user, request, key=key)
    Task.objects.filter(pk=task.pk).update(created_at=when)
    task.refresh_from_db()
    return task


@pytest.fixture
def as_carol(client, carol):
    client.force_login(carol)
    return client


@pytest.fixture
def keys(alice, bob):
    made = {}
    for user in (alice, bob):
        key = ProviderKey(provider="apimart", label=f"{user.username}'s key", owner=user)
        key.set_secret("sk-test-abcd1234")
        key.save()
        made[user.username] = key
    return made


@pytest.fixture
def march(alice, bob, carol, keys):
    """Alice: 4 s (32 credits), 8 s (64) and a failed, refunded 4 s at 1080p (48) in March, one
    8 s task in February. Bob: one 4 s task (32) in March. 8 credits a second, 1080p x 1.5."""
    ledger.grant(alice, 1000, by=carol, reason="welcome")
    ledger.grant(bob, 1000, by=carol, reason="welcome")
    made = {
        "a4": submitted(alice, keys["alice"], cat(4), datetime(2026, 3, 2, 9, tzinfo=UTC)),
        "a8": submitted(alice, keys["alice"], cat(8), datetime(2026, 3, 15, 12, tzinfo=UTC)),
        "a1080": submitted(
            alice, keys["alice"], cat(4, "1080p"), datetime(2026, 3, 31, 20, tzinfo=UTC)
        ),
        "feb": submitted(alice, keys["alice"], cat(8), datetime(2026, 2, 27, 8, tzinfo=UTC)),
        "b4": submitted(bob, keys["bob"], cat(4), datetime(2026, 3, 10, 8, tzinfo=UTC)),
    }
    fail_task(made["a1080"], actor="poll", reason="The gateway reported that the task failed.")
    Task.objects.filter(pk=made["a8"].pk).update(
        gateway_cost=Decimal("0.4200"), provider_task_id="task-8s"
    )
    return made


# --- permissions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [TASKS, LEDGER, PAGE])
def test_members_get_404_and_anonymous_visitors_are_sent_to_log_in(client, alice, url):
    # As everywhere on the site (tests/test_accounts.py), signing in comes first.
    response = client.get(url)
    assert (response.status_code, response["Location"]) == (302, f"/accounts/login/?next={url}")
    client.force_login(alice)
    assert client.get(url).status_code == 404
    assert client.post(url).status_code == 404  # not even "method not allowed"


# --- tasks ----------------------------------------------------------------------------------------


def test_the_tasks_file_sums_to_what_was_charged_and_refunded(as_carol, march):
    response = as_carol.get(TASKS, {**MARCH, "member": "alice"})
    rows = rows_of(response)
    assert [row["task id"] for row in rows] == [
        str(march["a4"].code),
        str(march["a8"].code),
        str(march["a1080"].code),
    ]
    charged = sum(int(row["credits charged"]) for row in rows)
    refunded = sum(int(row["credits refunded"]) for row in rows)
    # By hand: 32 + 64 + 48 charged, the failed 48 refunded; February's 64 is not in March.
    assert (charged, refunded, charged - refunded) == (144, 48, 96)


def test_a_task_row_has_the_columns_an_accountant_expects(as_carol, march):
    rows = {row["task id"]: row for row in rows_of(as_carol.get(TASKS, MARCH))}
    row = rows[str(march["a8"].code)]
    assert row == {
        "task id": str(march["a8"].code),
        "created": "2026-03-15T12:00:00+00:00",
        "finished": "",
        "member": "alice",
        "gateway": "apimart",
        "model": "Omni-Flash-Ext",
        "key label": "alice's key (APIMart …1234)",
        "state": "queued",
        "units": "8",
        "unit": "second",
        "credits per unit": "8",
        "price multiplier": "1.000",
        "credits charged": "64",
        "credits refunded": "0",
        "gateway cost": "0.4200",
        "gateway task id": "task-8s",
        "run id": str(march["a8"].run.code),
    }
    failed = rows[str(march["a1080"].code)]
    assert (failed["state"], failed["credits refunded"], failed["price multiplier"]) == (
        "failed",
        "48",
        "1.500",
    )
    assert failed["finished"].startswith("20")


def test_the_whole_team_is_exported_without_a_member(as_carol, march):
    rows = rows_of(as_carol.get(TASKS, MARCH))
    assert sorted(row["member"] for row in rows) == ["alice", "alice", "alice", "bob"]
    assert sum(int(row["credits charged"]) for row in rows) == 176


def test_the_period_is_whole_days_in_the_sites_time_zone(as_carol, march, settings):
    settings.TIME_ZONE = "Europe/Paris"
    # 31 March 20:00 UTC is 22:00 in Paris: still March there. 2 March 09:00 UTC is 11:00.
    rows = rows_of(as_carol.get(TASKS, {"from": "2026-03-31", "to": "2026-03-31"}))
    assert [row["task id"] for row in rows] == [str(march["a1080"].code)]
    assert rows[0]["created"] == "2026-03-31T22:00:00+02:00"
    settings.TIME_ZONE = "Asia/Tokyo"
    # In Tokyo the same moment is already 1 April.
    assert rows_of(as_carol.get(TASKS, {"from": "2026-03-31", "to": "2026-03-31"})) == []
    april = rows_of(as_carol.get(TASKS, {"from": "2026-04-01", "to": "2026-04-01"}))
    assert [row["task id"] for row in april] == [str(march["a1080"].code)]


def test_an_empty_period_gives_the_header_only(as_carol, march):
    response = as_carol.get(TASKS, {"from": "2025-01-01", "to": "2025-01-31"})
    assert header_of(response) == list(exports.TASK_COLUMNS)
    assert rows_of(as_carol.get(TASKS, {"from": "2025-01-01", "to": "2025-01-31"})) == []


def test_the_file_is_an_attachment_named_after_its_period(as_carol, march):
    response = as_carol.get(TASKS, {**MARCH, "member": "bob"})
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == (
        'attachment; filename="tasks-bob-2026-03-01_2026-03-31.csv"'
    )
    response = as_carol.get(LEDGER, MARCH)
    assert response["Content-Disposition"] == (
        'attachment; filename="ledger-2026-03-01_2026-03-31.csv"'
    )


def test_without_dates_it_exports_this_month(as_carol, march, keys, alice):
    now_task, _ = submit_task(alice, cat(4), key=keys["alice"])
    response = as_carol.get(TASKS)
    first, last = exports.this_month()
    assert first.day == 1 and first.month == last.month
    assert f"{first.isoformat()}_{last.isoformat()}.csv" in response["Content-Disposition"]
    assert [row["task id"] for row in rows_of(response)] == [str(now_task.code)]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"from": "yesterday"}, "'from' must be a date such as 2026-01-31."),
        ({"from": "2026-03-01", "to": "2026-02-30"}, "'to' must be a date such as 2026-01-31."),
        ({"from": "2026-03-02", "to": "2026-03-01"}, "'from' must not be after 'to'."),
        (
            {"from": "2025-01-01", "to": "2026-01-02"},
            "A period is at most 366 days; choose a shorter one.",
        ),
        ({"member": "nobody"}, "There is no member 'nobody'."),
    ],
)
@pytest.mark.parametrize("url", [TASKS, LEDGER])
def test_bad_parameters_are_answered_in_plain_words(as_carol, url, query, message):
    response = as_carol.get(url, query)
    assert response.status_code == 400
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response.content.decode() == message


def test_a_leap_year_fits_in_one_export(as_carol):
    response = as_carol.get(TASKS, {"from": "2024-01-01", "to": "2024-12-31"})
    assert response.status_code == 200


# --- ledger ---------------------------------------------------------------------------------------


def test_the_ledger_file_lists_every_change_of_a_balance(as_carol, march, alice, carol):
    # The debits and the refund of the fixture were written now; this month holds them.
    rows = rows_of(as_carol.get(LEDGER, {"member": "alice"}))
    kinds = [(row["kind"], int(row["amount"])) for row in rows]
    assert kinds == [
        ("grant", 1000),
        ("debit", -32),
        ("debit", -64),
        ("debit", -48),
        ("debit", -64),
        ("refund", 48),
    ]
    # By hand: 1000 - 32 - 64 - 48 - 64 + 48 = 840, and each balance follows the amounts.
    assert sum(amount for _, amount in kinds) == 840
    assert rows[-1]["balance after"] == "840"
    assert rows[0]["created by"] == "carol" and rows[0]["reason"] == "welcome"
    assert rows[1]["task id"] == str(march["a4"].code)
    assert rows[0]["task id"] == "" and rows[1]["created by"] == ""
    entry = LedgerEntry.objects.get(task=march["a1080"], kind="refund")
    assert rows[-1]["entry id"] == str(entry.pk)


def test_the_ledger_file_keeps_to_its_period(as_carol, alice, bob, carol):
    def entry(user, when, amount, key):
        LedgerEntry.objects.create(
            user=user,
            kind="grant",
            amount=amount,
            balance_after=amount,
            idempotency_key=key,
            reason="opening",
            created_by=carol,
            created_at=when,
        )

    entry(alice, datetime(2026, 2, 28, 23, 59, tzinfo=UTC), 5, "a-feb")
    entry(alice, datetime(2026, 3, 1, 0, 0, tzinfo=UTC), 7, "a-mar")
    entry(bob, datetime(2026, 3, 31, 23, 59, 59, tzinfo=UTC), 11, "b-mar")
    entry(bob, datetime(2026, 4, 1, 0, 0, tzinfo=UTC), 13, "b-apr")
    rows = rows_of(as_carol.get(LEDGER, MARCH))
    assert [(row["member"], row["amount"]) for row in rows] == [("alice", "7"), ("bob", "11")]
    assert rows[0]["time"] == "2026-03-01T00:00:00+00:00"
    assert rows_of(as_carol.get(LEDGER, {"from": "2025-01-01", "to": "2025-01-01"})) == []


# --- streaming, queries and guards ----------------------------------------------------------------


def test_the_file_is_streamed_row_by_row(as_carol, march):
    response = as_carol.get(TASKS, MARCH)
    assert isinstance(response, StreamingHttpResponse)
    pieces = list(response.streaming_content)
    assert len(pieces) == 1 + 4  # the header, then one piece per task: never the whole file


def test_the_query_count_does_not_grow_with_rows(as_carol, alice, carol, keys, monkeypatch):
    # Chunks of two rows: more rows mean more fetches from one cursor, never more queries.
    monkeypatch.setattr(exports, "CHUNK_SIZE", 2)
    ledger.grant(alice, 10_000, by=carol, reason="welcome")

    def export_queries(path) -> tuple[int, int]:
        response = as_carol.get(path)
        with CaptureQueriesContext(connection) as queries:
            rows = list(response.streaming_content)
        return len(rows) - 1, len(queries)

    submit_task(alice, cat(4), key=keys["alice"])
    few_tasks, few_ledger = export_queries(TASKS), export_queries(LEDGER)
    for _ in range(6):
        fail_task(submit_task(alice, cat(4), key=keys["alice"])[0], actor="poll", reason="x")
    many_tasks, many_ledger = export_queries(TASKS), export_queries(LEDGER)
    assert (few_tasks[0], many_tasks[0]) == (1, 7)
    assert (few_ledger[0], many_ledger[0]) == (2, 14)
    assert few_tasks[1] == many_tasks[1] <= 1
    assert few_ledger[1] == many_ledger[1] <= 1


def test_rows_are_fetched_in_chunks(as_carol, march, monkeypatch):
    sizes = []
    original = QuerySet.iterator

    def recording(queryset, chunk_size=None):
        sizes.append(chunk_size)
        return original(queryset, chunk_size=chunk_size)

    monkeypatch.setattr(QuerySet, "iterator", recording)
    rows_of(as_carol.get(TASKS, MARCH))
    rows_of(as_carol.get(LEDGER, MARCH))
    assert sizes == [exports.CHUNK_SIZE, exports.CHUNK_SIZE]


def test_cells_that_look_like_formulas_are_defused(as_carol, alice, carol, keys):
    ledger.grant(alice, 100, by=carol, reason='=HYPERLINK("http://evil","x")')
    ledger.grant(alice, 100, by=carol, reason="+1+1")
    ledger.grant(alice, 100, by=carol, reason="@SUM(A1)")
    ledger.deduct(alice, 50, by=carol, reason="-2+3")
    ProviderKey.objects.filter(pk=keys["alice"].pk).update(label="=cmd|' /C calc'!A0")
    task, _ = submit_task(alice, cat(4), key=ProviderKey.objects.get(pk=keys["alice"].pk))
    rows = rows_of(as_carol.get(LEDGER, {"member": "alice"}))
    assert [row["reason"] for row in rows[:4]] == [
        '\'=HYPERLINK("http://evil","x")',
        "'+1+1",
        "'@SUM(A1)",
        "'-2+3",
    ]
    # Numbers stay numbers: a debit is negative without an apostrophe.
    assert rows[3]["amount"] == "-50"
    (row,) = rows_of(as_carol.get(TASKS, {"member": "alice"}))
    assert row["key label"] == "'=cmd|' /C calc'!A0 (APIMart …1234)"


# --- the page -------------------------------------------------------------------------------------


def test_the_page_offers_both_files_for_a_period_and_member(as_carol, alice):
    page = as_carol.get(PAGE).content.decode()
    first, last = exports.this_month()
    assert f'name="from" value="{first.isoformat()}"' in page
    assert f'name="to" value="{last.isoformat()}"' in page
    assert '<option value="alice">alice</option>' in page
    assert f'formaction="{TASKS}"' in page and f'formaction="{LEDGER}"' in page
