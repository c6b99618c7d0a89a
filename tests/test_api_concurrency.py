"""The API's money paths under real concurrency on PostgreSQL: scripts that send the same
request at once (a retrying client, a double-fired job) are charged once, and parallel
requests never spend a balance twice."""

import json

import pytest
from django.db import connection
from django.test import Client

from accounts import ledger
from accounts.models import ApiToken, LedgerEntry, ProviderKey
from generations.models import Task, quote
from generations.providers import GenerationRequest
from tests.test_ledger_concurrency import run_together

pytestmark = [
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="needs PostgreSQL: run with DATABASE_URL=postgres://...",
    ),
    pytest.mark.django_db(transaction=True),
]

FOX = {"model": "apimart/Omni-Flash-Ext", "prompt": "a fox", "duration": 4}
THREADS = 8


@pytest.fixture
def secret(alice, carol, settings):
    settings.SUBMIT_RATE_PER_MINUTE = 1_000_000
    settings.API_RATE_PER_MINUTE = 1_000_000
    key = ProviderKey(provider="apimart", label="Mine", owner=alice)
    key.set_secret("sk-test-abcd1234")
    key.save()
    return ApiToken.issue(alice, name="parallel", scope="write", days=1)[1]


def poster(secret, body, idempotency_key=None):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    if idempotency_key:
        headers["HTTP_IDEMPOTENCY_KEY"] = idempotency_key

    def work(barrier):
        client = Client()
        barrier.wait()
        response = client.post(
            "/api/v1/tasks", json.dumps(body), content_type="application/json", **headers
        )
        return response.status_code, response.json()

    return work


def test_one_idempotency_key_sent_at_once_makes_one_task_and_one_debit(alice, carol, secret):
    ledger.grant(alice, 10_000, by=carol, reason="tests")
    outcomes = run_together([poster(secret, FOX, "scene-12") for _ in range(THREADS)])
    statuses = sorted(status for status, _body in outcomes)
    assert statuses == [200] * (THREADS - 1) + [201]
    assert len({body["id"] for _status, body in outcomes}) == 1
    assert Task.objects.count() == 1
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.DEBIT).count() == 1
    assert ledger.audit() == []


def test_parallel_requests_never_spend_the_balance_twice(alice, carol, secret):
    each = quote(GenerationRequest("apimart", "Omni-Flash-Ext", "a fox", duration=4)).total
    ledger.grant(alice, each * 3, by=carol, reason="three tasks' worth")
    outcomes = run_together([poster(secret, FOX) for _ in range(THREADS)])
    statuses = sorted(status for status, _body in outcomes)
    assert statuses == [201] * 3 + [402] * (THREADS - 3)
    alice.refresh_from_db()
    assert alice.credit_balance == 0 and Task.objects.count() == 3
    assert ledger.audit() == []
