"""One slow gateway cannot stall work for others (RELIABILITY 29, the dispatcher's half).

A dispatcher gives one member's tasks at most PER_MEMBER_CONCURRENCY of its slots, and hands
over to its successor before it waits for its slowest calls.
"""

import time
from unittest import mock

import pytest
from django.core.cache import cache

from accounts import ledger
from accounts.models import ProviderKey
from generations import jobs
from generations.models import Task
from generations.providers import GenerationRequest
from generations.services import submit_task

REQUEST = GenerationRequest("apimart", "Omni-Flash-Ext", "many", duration=4)


def key_of(owner, label: str) -> ProviderKey:
    key = ProviderKey(provider="apimart", label=label, owner=owner)
    key.set_secret(f"sk-fair-{label}-000000001")
    key.save()
    return key


@pytest.fixture
def busy_and_quiet(alice, bob, carol, settings):
    settings.SUBMIT_RATE_PER_MINUTE = 100
    for member in (alice, bob):
        ledger.grant(member, 10_000, by=carol, reason="tests")
    keys = [key_of(alice, "one"), key_of(alice, "two")]
    busy = [submit_task(alice, REQUEST, key=keys[i % 2])[0] for i in range(8)]
    quiet = submit_task(bob, REQUEST, key=key_of(bob, "bob"))[0]
    return busy, quiet


def test_one_member_holds_only_part_of_the_pool(busy_and_quiet, alice, bob):
    """RELIABILITY 29: alice's eight due tasks on two keys leave room for bob's one."""
    busy, quiet = busy_and_quiet
    leased = Task.objects.lease_due("d", limit=8, per_key=4, per_member=4)
    by_member = {}
    for lease in leased:
        by_member[lease.user_id] = by_member.get(lease.user_id, 0) + 1
    assert by_member == {alice.pk: 4, bob.pk: 1}
    assert quiet.pk in {lease.pk for lease in leased}


def test_what_a_dispatcher_already_runs_counts_against_the_member(busy_and_quiet, alice, bob):
    leased = Task.objects.lease_due(
        "d", limit=8, per_key=4, per_member=4, busy_members={alice.pk: 4}
    )
    assert {lease.user_id for lease in leased} == {bob.pk}


@pytest.mark.django_db(transaction=True)
def test_a_dispatcher_hands_over_before_it_waits_for_slow_calls(alice, carol, settings):
    """RELIABILITY 29: the successor is queued while the last slow call is still running."""
    settings.SUBMIT_RATE_PER_MINUTE = 100
    ledger.grant(alice, 1000, by=carol, reason="tests")
    task = submit_task(alice, REQUEST, key=key_of(alice, "slow"))[0]
    cache.clear()
    order = []

    def slow_work(pk, owner):
        order.append("work started")
        time.sleep(1.5)
        order.append("work finished")
        Task.objects.release(pk, owner)

    def successor(*args, **kwargs):
        order.append("successor queued")

    with (
        mock.patch.object(jobs, "work_on", slow_work),
        mock.patch.object(jobs, "async_task", successor),
    ):
        jobs.dispatch("d0", seconds=0.6)
    assert order == ["work started", "successor queued", "work finished"]
    assert Task.objects.filter(pk=task.pk).exists()
