"""The money rules under real concurrency (RELIABILITY 5, 6 and 7), on real PostgreSQL.

Threads are released together by a barrier, each on its own database connection, so the row
locks in accounts.ledger and generations.services are what keeps the ledger right. SQLite
serializes every writer and ignores SELECT ... FOR UPDATE, so these tests prove nothing there and
skip; CI runs them on PostgreSQL.
"""

import threading
import uuid
from collections import Counter

import pytest
from django.db import connection

from accounts import ledger
from accounts.models import LedgerEntry, ProviderKey, Quota
from generations.models import Task, quote
from generations.providers import GenerationRequest
from generations.services import SubmitRefused, cancel_task, fail_task, submit_task

pytestmark = [
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="needs PostgreSQL: run with DATABASE_URL=postgres://...",
    ),
    # Real commits, so threads see each other's work (seeded prices come back through the
    # seeded_prices fixture in conftest after each flush).
    pytest.mark.django_db(transaction=True),
]

REQUEST = GenerationRequest("apimart", "Omni-Flash-Ext", "a cat", duration=4, resolution="720p")
JOIN_SECONDS = 120


@pytest.fixture(autouse=True)
def no_rate_limit(settings):
    """These tests are about money; the per-minute submit limit has a test of its own below."""
    settings.SUBMIT_RATE_PER_MINUTE = 1_000_000


@pytest.fixture
def price() -> int:
    return quote(REQUEST).total


@pytest.fixture
def alice_key(alice) -> ProviderKey:
    key = ProviderKey(provider="apimart", label="Mine", owner=alice)
    key.set_secret("sk-test-abcd1234")
    key.save()
    return key


def run_together(workers):
    """Run each callable in its own thread, all released at once; return what each returned or
    raised, in order. Every thread closes its own connection so the test database can be
    dropped afterwards."""
    barrier = threading.Barrier(len(workers))
    outcomes: list = [None] * len(workers)

    def run(index, work):
        try:
            outcomes[index] = work(barrier)
        except BaseException as exc:  # reported to the test, which fails on it
            outcomes[index] = exc
        finally:
            connection.close()

    threads = [
        threading.Thread(target=run, args=(i, work), daemon=True) for i, work in enumerate(workers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_SECONDS)
    assert not any(t.is_alive() for t in threads), "a thread hung: a deadlock or a lost wakeup"
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return outcomes


def submit_outcome(user, key, **kwargs):
    """("ok", task) or ("refused", message); any other exception propagates."""
    try:
        task, _created = submit_task(user, REQUEST, key=key, **kwargs)
    except SubmitRefused as refused:
        return ("refused", refused.message)
    return ("ok", task.code)


def assert_ledger_clean(user, expected_balance):
    user.refresh_from_db()
    total = sum(LedgerEntry.objects.filter(user=user).values_list("amount", flat=True))
    assert user.credit_balance == total == expected_balance
    assert ledger.audit() == []


def test_it_admits_exactly_as_many_submits_as_the_balance_covers(alice, carol, alice_key, price):
    threads, per_thread, affordable = 16, 50, 500
    ledger.grant(alice, affordable * price, by=carol, reason="exactly 500 tasks")

    def member(barrier):
        barrier.wait()
        return [submit_outcome(alice, alice_key) for _ in range(per_thread)]

    outcomes = [o for batch in run_together([member] * threads) for o in batch]

    kinds = Counter(kind for kind, _ in outcomes)
    assert kinds == {"ok": affordable, "refused": threads * per_thread - affordable}
    refusals = {message for kind, message in outcomes if kind == "refused"}
    assert refusals == {f"This costs {price} credits and your balance is 0."}
    assert Task.objects.filter(user=alice).count() == affordable
    assert LedgerEntry.objects.filter(user=alice, kind="debit").count() == affordable
    assert_ledger_clean(alice, 0)
    balances = LedgerEntry.objects.filter(user=alice).values_list("balance_after", flat=True)
    assert min(balances) == 0


def test_the_submit_rate_limit_holds_when_submits_arrive_together(
    alice, carol, alice_key, price, settings
):
    """RELIABILITY 26: the per-minute limit is checked under the member's lock, so 16 threads
    submitting together cannot slip past it."""
    settings.SUBMIT_RATE_PER_MINUTE = 20
    ledger.grant(alice, 100 * price, by=carol, reason="plenty")

    def member(barrier):
        barrier.wait()
        return [submit_outcome(alice, alice_key) for _ in range(3)]

    outcomes = [o for batch in run_together([member] * 16) for o in batch]

    assert Counter(kind for kind, _ in outcomes) == {"ok": 20, "refused": 28}
    assert Task.objects.filter(user=alice).count() == 20
    assert_ledger_clean(alice, 80 * price)


def test_the_active_task_limit_holds_when_submits_arrive_together(alice, carol, alice_key, price):
    Quota.objects.create(user=alice, max_active_tasks=5)
    ledger.grant(alice, 100 * price, by=carol, reason="plenty")

    def member(barrier):
        barrier.wait()
        return submit_outcome(alice, alice_key)

    outcomes = run_together([member] * 12)

    assert Counter(kind for kind, _ in outcomes) == {"ok": 5, "refused": 7}
    for kind, message in outcomes:
        if kind == "refused":
            assert message.startswith("You already have 5 active tasks, your limit")
    assert Task.objects.filter(user=alice).count() == 5
    assert_ledger_clean(alice, 95 * price)


def test_the_daily_credit_limit_holds_when_submits_arrive_together(alice, carol, alice_key, price):
    Quota.objects.create(user=alice, max_credits_per_day=5 * price + price - 1)
    ledger.grant(alice, 100 * price, by=carol, reason="plenty")

    def member(barrier):
        barrier.wait()
        return submit_outcome(alice, alice_key)

    outcomes = run_together([member] * 12)

    assert Counter(kind for kind, _ in outcomes) == {"ok": 5, "refused": 7}
    limit = 6 * price - 1
    for kind, message in outcomes:
        if kind == "refused":
            assert message == (
                f"This costs {price} credits; you have spent {5 * price} of your {limit} for today."
            )
    assert Task.objects.filter(user=alice).count() == 5
    assert ledger.spending(alice)["today"] == 5 * price
    assert_ledger_clean(alice, 95 * price)


def test_every_path_failing_a_task_at_once_refunds_it_exactly_once(alice, carol, alice_key, price):
    ledger.grant(alice, 30 * price, by=carol, reason="welcome")
    tasks = [submit_task(alice, REQUEST, key=alice_key)[0] for _ in range(24)]
    contested, untouched = tasks[:20], tasks[20:]
    ends = {
        "poll": fail_task,
        "webhook": fail_task,
        "deadline": fail_task,
        "admin:carol": cancel_task,
    }

    def path(actor, end):
        def work(barrier):
            won = []
            for task in contested:
                # A fresh copy per path, as a poll job or a webhook request would load it.
                mine = Task.objects.get(pk=task.pk)
                barrier.wait()
                won.append(end(mine, actor=actor, reason=f"ended by {actor}"))
            return won

        return work

    results = run_together([path(actor, end) for actor, end in ends.items()])
    actors = list(ends)

    for index, task in enumerate(contested):
        winners = [actors[p] for p in range(len(actors)) if results[p][index]]
        assert len(winners) == 1, f"{task.code} ended by {winners}"
        task.refresh_from_db()
        expected_state = Task.State.CANCELED if winners == ["admin:carol"] else Task.State.FAILED
        assert task.state == expected_state
        assert task.message == f"ended by {winners[0]}"
        refunds = LedgerEntry.objects.filter(task=task, kind="refund")
        assert [(e.amount, e.reason) for e in refunds] == [(price, f"ended by {winners[0]}")]
        assert task.events.filter(to_state=expected_state).count() == 1
    for task in untouched:
        task.refresh_from_db()
        assert task.state == Task.State.QUEUED
    assert LedgerEntry.objects.filter(user=alice, kind="refund").count() == len(contested)
    assert_ledger_clean(alice, 30 * price - len(untouched) * price)


def test_a_form_token_submitted_by_many_at_once_makes_one_task(alice, carol, alice_key, price):
    ledger.grant(alice, 10 * price, by=carol, reason="welcome")
    token = uuid.uuid4()

    def click(barrier):
        barrier.wait()
        task, created = submit_task(alice, REQUEST, key=alice_key, token=token)
        return task.code, created

    outcomes = run_together([click] * 8)

    assert len({code for code, _ in outcomes}) == 1
    assert sorted(created for _, created in outcomes) == [False] * 7 + [True]
    task = Task.objects.get(user=alice)
    assert task.submit_token == token
    assert task.code == outcomes[0][0]
    assert LedgerEntry.objects.filter(user=alice, kind="debit").count() == 1
    assert_ledger_clean(alice, 9 * price)
