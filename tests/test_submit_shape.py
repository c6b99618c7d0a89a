"""The shape of one submit through the Create form: the statements it runs, its one lock of the
member's row, no savepoint, and its job enqueued through the process's one broker.

The tests are transactional, so the submit's own transaction is the outermost one, as it is
behind a real server (a test wrapped in a transaction would turn it into a savepoint).
Each submit has exactly one BEGIN and one COMMIT besides; they are left out of the counts.
"""

import re
import uuid
from unittest import mock

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django_q import tasks as q_tasks
from django_q.signing import SignedPackage

from accounts import ledger
from accounts.models import ProviderKey, Quota, TeamQuota
from generations import services
from generations.models import Task
from generations.providers import GenerationRequest
from omniweb import broker

pytestmark = pytest.mark.django_db(transaction=True)

CREATE = "/create/"

# What one successful submit of the Create form runs, in order:
#  1. the session                          (SessionMiddleware)
#  2. the member                           (AuthenticationMiddleware)
#  3. the keys the form offers             (the form's key choices; the only read of the key)
#  4. the member's row locked, with their own and the team's quotas in the same statement
#  5. the member's tasks counted once: the last minute's (the rate), the form token's (a
#     repeat) and, under an active-task limit, the active ones
#  6. the prices of the order's models
#  7. INSERT the run
#  8. INSERT the task, every field (visibility, price snapshot, deadlines) in it
#  9. INSERT the debit
# 10. UPDATE the cached balance
# 11. INSERT the task's first event
# Before, the same submit ran 14: the key was read again under the lock, a whole task row was
# read for the token, the rate counted apart, the team's and the member's quotas read apart
# (16 under all the limits: the active tasks counted apart again, then the spending).
# The run the task belongs to is one INSERT more (11): every order makes one.
SUBMIT_STATEMENTS = 11
# An htmx submit answers with a fresh form and the new task's card, from what the submit has
# read already (the member's balance, the keys, the prices, the task itself): only the card's
# results are asked for. Before, it ran 20: the member's row a third time for the balance, the
# keys and the price again, the new task and its results, its reference images counted.
HTMX_SUBMIT_STATEMENTS = SUBMIT_STATEMENTS + 1
# Under day and month spending limits the month's debits and refunds are summed once more.
SUBMIT_STATEMENTS_UNDER_SPENDING_LIMITS = SUBMIT_STATEMENTS + 1


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.PUBLIC_URL = ""


@pytest.fixture
def key(alice, carol):
    ledger.grant(alice, 1000, by=carol, reason="welcome")
    key = ProviderKey(provider="apimart", label="Mine", owner=alice)
    key.set_secret("sk-apimart-test-0001")
    key.save()
    return key


@pytest.fixture
def enqueued():
    """The jobs enqueued, as (function, args), without touching a broker."""
    calls = []
    with mock.patch.object(broker, "enqueue", lambda func, *args, **kw: calls.append((func, args))):
        yield calls


def form_data(key) -> dict:
    return {
        "model": "apimart/Omni-Flash-Ext",
        "prompt": "A red fox in the snow",
        "duration": "6",
        "resolution": "720p",
        "aspect_ratio": "16:9",
        "reference_urls": "",
        "key": str(key.code),
        "visibility": "private",
        "form_token": str(uuid.uuid4()),
    }


def submit(client, key, **headers) -> list[str]:
    """Submit the Create form once; the SQL it ran."""
    with CaptureQueriesContext(connection) as statements:
        response = client.post(CREATE, form_data(key), **headers)
    assert response.status_code in (200, 302), response.content.decode()[:500]
    assert Task.objects.filter(user__username="alice").count() >= 1
    sql = [query["sql"] for query in statements.captured_queries]
    return [s for s in sql if not s.startswith(("BEGIN", "COMMIT"))]


def mentioning(statements: list[str], table: str) -> list[str]:
    return [sql for sql in statements if f'"{table}"' in sql]


def reading_members(statements: list[str]) -> list[str]:
    return [sql for sql in statements if re.match(r'SELECT "accounts_user"\.', sql)]


def test_a_submit_runs_only_the_statements_it_must(client, alice, key, enqueued):
    client.force_login(alice)
    statements = submit(client, key)
    assert len(statements) <= SUBMIT_STATEMENTS, "\n".join(statements)
    assert not [sql for sql in statements if "SAVEPOINT" in sql]
    # The key, the token and the price are each looked at once; the quotas only by the
    # statement that locks the member.
    assert len(mentioning(statements, "accounts_providerkey")) == 1
    tokens = [sql for sql in statements if sql.startswith("SELECT") and "submit_token" in sql]
    assert len(tokens) == 1
    assert len(mentioning(statements, "generations_modelprice")) == 1
    (lock,) = reading_members(statements)[1:]
    assert mentioning(statements, "accounts_quota") == [lock]
    assert mentioning(statements, "accounts_teamquota") == [lock]
    # Visibility and the other fields go in with the INSERT: the task is never updated.
    assert not [sql for sql in statements if sql.startswith('UPDATE "generations_task"')]
    task = Task.objects.get(user=alice)
    assert task.visibility == "private"
    assert enqueued == [("generations.jobs.submit", (task.pk,))]


def test_an_htmx_submit_answers_from_what_the_submit_read(client, alice, key, enqueued):
    client.force_login(alice)
    # The first answer may fill the cache of the cards' typical durations (kept a minute).
    submit(client, key, HTTP_HX_REQUEST="true")
    statements = submit(client, key, HTTP_HX_REQUEST="true")
    # Without Redis the cache is a table: reading it is not the submit's work.
    statements = [sql for sql in statements if '"omniweb_cache"' not in sql]
    assert len(statements) <= HTMX_SUBMIT_STATEMENTS, "\n".join(statements)
    assert len(mentioning(statements, "accounts_providerkey")) == 1
    assert len(mentioning(statements, "generations_modelprice")) == 1


def test_the_member_row_is_read_under_the_lock_once(client, alice, key, enqueued):
    client.force_login(alice)
    for headers in ({}, {"HTTP_HX_REQUEST": "true"}):
        statements = submit(client, key, **headers)
        members = reading_members(statements)
        # The request's own user, then the one locked read the submit uses for the balance,
        # the quotas and the debit; an htmx answer shows the balance from that read.
        assert len(members) == 2, "\n".join(members)
        locks = [sql for sql in statements if "FOR UPDATE" in sql]
        if connection.vendor == "postgresql":
            assert len(locks) == 1 and locks[0] == members[1]
            assert locks[0].endswith('FOR UPDATE OF "accounts_user"')
    alice.refresh_from_db()
    assert alice.credit_balance == 1000 - 2 * 48


def test_quotas_are_read_with_the_lock_and_spending_once(client, alice, key, enqueued):
    TeamQuota.objects.create(max_active_tasks=5, max_credits_per_month=5000)
    Quota.objects.create(user=alice, max_credits_per_day=100)
    client.force_login(alice)
    statements = submit(client, key)
    assert len(statements) <= SUBMIT_STATEMENTS_UNDER_SPENDING_LIMITS, "\n".join(statements)
    sums = [sql for sql in mentioning(statements, "accounts_ledgerentry") if "SELECT" in sql]
    assert len(sums) == 1
    # The day limit is the member's own, the month's and the active limit the team's.
    statements = submit(client, key)
    assert len(statements) <= SUBMIT_STATEMENTS_UNDER_SPENDING_LIMITS
    response = client.post(CREATE, form_data(key))
    assert "you have spent 96 of your 100 for today" in response.content.decode()
    assert Task.objects.filter(user=alice).count() == 2


def test_a_submit_is_never_a_savepoint_inside_another_transaction(alice, key):
    request = GenerationRequest("apimart", "Omni-Flash-Ext", "A fox")
    with pytest.raises(RuntimeError, match="durable"), transaction.atomic():
        services.submit_task(alice, request, key=key)
    assert not Task.objects.exists()


def test_each_task_is_enqueued_through_the_one_broker_of_the_process(client, alice, key):
    made, sent = [], []
    real_get_broker = q_tasks.get_broker

    def counting_get_broker(*args, **kwargs):
        kept = real_get_broker(*args, **kwargs)
        made.append(kept)
        real_enqueue = kept.enqueue
        kept.enqueue = lambda pack: sent.append(SignedPackage.loads(pack)) or real_enqueue(pack)
        return kept

    broker.forget()
    client.force_login(alice)
    with (
        mock.patch.object(q_tasks, "get_broker", counting_get_broker),
        mock.patch.object(broker, "get_broker", counting_get_broker),
    ):
        try:
            submit(client, key)
            submit(client, key)
        finally:
            if made:
                made[0].purge_queue()
            broker.forget()
    pks = sorted(Task.objects.filter(user=alice).values_list("pk", flat=True))
    assert len(made) == 1
    assert sorted(job["args"][0] for job in sent) == pks
    assert {job["func"] for job in sent} == {"generations.jobs.submit"}


def test_a_run_of_many_tasks_runs_as_many_statements_as_a_run_of_one(alice, key, enqueued):
    """A run is one transaction with one INSERT per table, whatever its size: a hundred
    variations cost the database what one task does, and enqueue a few jobs, not a hundred."""
    request = GenerationRequest(
        provider="apimart", model="Omni-Flash-Ext", prompt="A red fox", duration=6
    )

    def order_of(count: int) -> list[str]:
        order = services.Order(items=tuple(services.OrderItem(request, key) for _ in range(count)))
        with CaptureQueriesContext(connection) as statements:
            outcome = services.submit_order(alice, order)
        assert len(outcome.tasks) == count
        return [q["sql"] for q in statements.captured_queries]

    ledger.grant(alice, 10_000, by=alice, reason="a large run")
    one = order_of(1)
    enqueued.clear()
    hundred = order_of(100)
    if connection.vendor == "postgresql":
        assert len(hundred) == len(one)
    else:
        # SQLite takes at most 999 parameters a statement, so Django splits the task rows
        # (45 columns each) into a few INSERTs: still nothing per task.
        assert len(hundred) <= len(one) + 8
    assert len(enqueued) == services.ORDER_JOBS
    assert len(mentioning(hundred, "accounts_ledgerentry")) == 1
    alice.refresh_from_db()
    assert ledger.audit() == []
