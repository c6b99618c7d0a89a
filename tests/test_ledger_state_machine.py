"""Random sequences of everything that moves money keep every ledger invariant (RELIABILITY 10).

A hypothesis state machine plays two members and an admin through grants, submits (valid,
invalid, unaffordable, repeated form tokens), worker progress, succeed, fail, cancel, duplicate
polls and webhooks, worker crashes and admin deductions, and keeps its own expectation of every
balance and task state. After every step the database must agree with it: the cached balance
equals the sum of entries and the expected balance, nothing is negative, audit() finds nothing,
every task has one debit and a refund exactly when it failed or was canceled, and a task that
ended never changes again. Each example runs inside a savepoint that is rolled back afterwards,
so examples start from the same empty ledger.
"""

import uuid
from dataclasses import dataclass

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count, Q, Sum
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from accounts import ledger
from accounts.models import LedgerEntry, ProviderKey
from generations.models import Task, quote
from generations.providers import GenerationRequest, catalog
from generations.services import (
    SubmitRefused,
    cancel_task,
    fail_task,
    submit_task,
    transition,
)

MEMBERS = ("alice", "bob")
ENDED = (Task.State.SUCCEEDED, Task.State.FAILED, Task.State.CANCELED)
REFUNDED = (Task.State.FAILED, Task.State.CANCELED)
# The path a worker moves a task along before it ends.
NEXT = {
    Task.State.QUEUED: Task.State.SUBMITTED,
    Task.State.SUBMITTED: Task.State.RUNNING,
    Task.State.RUNNING: Task.State.FETCHING,
}

prompts = st.sampled_from(["a cat", "waves on a pier", "a red fox in snow", "ünïcödé ✓"])
valid_requests = st.one_of(
    st.builds(
        GenerationRequest,
        provider=st.just("apimart"),
        model=st.just("Omni-Flash-Ext"),
        prompt=prompts,
        duration=st.sampled_from([None, 4, 6, 8, 10]),
        resolution=st.sampled_from([None, "720p", "1080p", "4k"]),
        aspect_ratio=st.sampled_from([None, "16:9", "9:16"]),
    ),
    st.builds(
        GenerationRequest,
        provider=st.just("omnivideo"),
        model=st.sampled_from(["gpt-image-2", "nano-banana-2", "seedance-2"]),
        prompt=prompts,
        aspect_ratio=st.sampled_from([None, "16:9", "1:1"]),
    ),
)
invalid_requests = st.sampled_from(
    [
        GenerationRequest("apimart", "Omni-Flash-Ext", "a cat", duration=5),
        GenerationRequest("apimart", "Omni-Flash-Ext", "a cat", resolution="8k"),
        GenerationRequest("apimart", "Omni-Flash-Ext", "   ", duration=4),
        GenerationRequest("apimart", "Omni-Flash-Ext", "x" * (catalog.PROMPT_MAX_CHARS + 1)),
        GenerationRequest("apimart", "Omni-Flash-Ext", "a cat", reference_images=("a", "b")),
        GenerationRequest("apimart", "Omni-Flash-Nope", "a cat"),
        GenerationRequest("omnivideo", "gpt-image-2", "a cat", duration=4),
    ]
)
failing_actors = st.sampled_from(["poll", "webhook", "deadline"])


class WorkerCrashed(Exception):
    """Stands in for a worker process dying in the middle of a job."""


@dataclass
class ExpectedTask:
    owner: str
    request: GenerationRequest
    token: uuid.UUID | None
    charged: int
    state: str = Task.State.QUEUED


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self, cast):
        super().__init__()
        # Everything an example writes is rolled back in teardown().
        self.savepoint = transaction.savepoint()
        self.users = {name: cast[name] for name in MEMBERS}
        self.admin = cast["carol"]
        self.keys = {
            (name, provider): self._key(self.users[name], provider)
            for name in MEMBERS
            for provider in ("apimart", "omnivideo")
        }
        self.balance = dict.fromkeys(MEMBERS, 0)
        self.tasks: dict[int, ExpectedTask] = {}
        # The first terminal state each task was seen in, read from the database.
        self.first_ending: dict[int, str] = {}

    def teardown(self):
        transaction.savepoint_rollback(self.savepoint)

    @staticmethod
    def _key(user, provider: str) -> ProviderKey:
        key = ProviderKey(provider=provider, label=f"{provider} key", owner=user)
        key.set_secret(f"sk-{provider}-{user.username}-0001")
        key.save()
        return key

    def _pick(self, data, states) -> int:
        return data.draw(st.sampled_from(self._pks(states)), label="task")

    def _pks(self, states) -> list[int]:
        return sorted(pk for pk, task in self.tasks.items() if task.state in states)

    def _ledger_size(self) -> tuple[int, int]:
        return LedgerEntry.objects.count(), Task.objects.count()

    # --- money in and out ---------------------------------------------------------------------

    @initialize(alice=st.integers(0, 2000), bob=st.integers(0, 2000))
    def opening_grants(self, alice, bob):
        # Start most examples with enough credit for several tasks, so the later rules have
        # tasks to work on; zero keeps the "nothing granted yet" start reachable.
        for name, amount in (("alice", alice), ("bob", bob)):
            if amount:
                self._grant(name, amount)

    @rule(who=st.sampled_from(MEMBERS), amount=st.integers(1, 1000))
    def grant(self, who, amount):
        self._grant(who, amount)

    def _grant(self, who: str, amount: int) -> None:
        ledger.grant(self.users[who], amount, by=self.admin, reason="top-up")
        self.balance[who] += amount

    @rule(who=st.sampled_from(MEMBERS), amount=st.integers(1, 300))
    def admin_deducts(self, who, amount):
        if amount <= self.balance[who]:
            ledger.deduct(self.users[who], amount, by=self.admin, reason="correction")
            self.balance[who] -= amount
        else:
            before = self._ledger_size()
            with pytest.raises(ledger.InsufficientCredits):
                ledger.deduct(self.users[who], amount, by=self.admin, reason="correction")
            assert self._ledger_size() == before

    # --- submits ------------------------------------------------------------------------------

    @rule(who=st.sampled_from(MEMBERS), request=valid_requests, with_token=st.booleans())
    def submit(self, who, request, with_token):
        price = quote(catalog.with_defaults(request)).total
        token = uuid.uuid4() if with_token else None
        key = self.keys[(who, request.provider)]
        if price > self.balance[who]:
            before = self._ledger_size()
            with pytest.raises(SubmitRefused, match="your balance is"):
                submit_task(self.users[who], request, key=key, token=token)
            assert self._ledger_size() == before
            return
        task, created = submit_task(self.users[who], request, key=key, token=token)
        assert created is True
        assert task.credits_charged == price
        self.balance[who] -= price
        self.tasks[task.pk] = ExpectedTask(who, request, token, price)

    @rule(who=st.sampled_from(MEMBERS), request=invalid_requests)
    def submit_invalid(self, who, request):
        before = self._ledger_size()
        with pytest.raises(SubmitRefused) as refused:
            submit_task(self.users[who], request, key=self.keys[(who, request.provider)])
        assert refused.value.errors
        assert self._ledger_size() == before

    @rule(request=valid_requests)
    def submit_with_anothers_key(self, request):
        before = self._ledger_size()
        with pytest.raises(SubmitRefused, match="cannot be used"):
            submit_task(self.users["bob"], request, key=self.keys[("alice", request.provider)])
        assert self._ledger_size() == before

    @precondition(lambda self: any(t.token for t in self.tasks.values()))
    @rule(data=st.data())
    def submit_again_with_the_same_token(self, data):
        pk = data.draw(st.sampled_from(sorted(p for p, t in self.tasks.items() if t.token)))
        expected = self.tasks[pk]
        before = self._ledger_size()
        task, created = submit_task(
            self.users[expected.owner],
            expected.request,
            key=self.keys[(expected.owner, expected.request.provider)],
            token=expected.token,
        )
        assert (task.pk, created) == (pk, False)
        assert self._ledger_size() == before

    # --- a worker moves tasks along -----------------------------------------------------------

    @precondition(lambda self: self._pks(NEXT))
    @rule(data=st.data())
    def worker_progresses(self, data):
        pk = self._pick(data, NEXT)
        current = self.tasks[pk].state
        with transaction.atomic():
            moved = transition(
                Task.objects.get(pk=pk), NEXT[current], from_states=[current], actor="poll"
            )
        assert moved is True, f"{current} -> {NEXT[current]} was refused"
        self.tasks[pk].state = NEXT[current]

    @precondition(lambda self: self._pks(Task.ACTIVE_STATES))
    @rule(data=st.data())
    def deadline_sends_to_review(self, data):
        pk = self._pick(data, Task.ACTIVE_STATES)
        with transaction.atomic():
            moved = transition(
                Task.objects.get(pk=pk),
                Task.State.NEEDS_REVIEW,
                from_states=NEXT.keys() | {Task.State.FETCHING},
                actor="deadline",
            )
        assert moved == (self.tasks[pk].state != Task.State.NEEDS_REVIEW)
        self.tasks[pk].state = Task.State.NEEDS_REVIEW

    @precondition(lambda self: self._pks(Task.ACTIVE_STATES))
    @rule(data=st.data(), ends_as=st.sampled_from(["succeeded", "failed"]))
    def worker_crashes(self, data, ends_as):
        """The worker moves the task on, then dies while ending it: the move stays, the ending
        and its money vanish with the rolled-back transaction, and the task is still active
        for whoever comes next."""
        pk = self._pick(data, Task.ACTIVE_STATES)
        expected = self.tasks[pk]
        task = Task.objects.get(pk=pk)
        if expected.state in NEXT:
            step = NEXT[expected.state]
            with transaction.atomic():
                assert transition(task, step, from_states=[expected.state], actor="poll")
            expected.state = step
        claimed = expected.state
        before = self._ledger_size()
        with pytest.raises(WorkerCrashed), transaction.atomic():
            if ends_as == "succeeded":
                transition(task, Task.State.SUCCEEDED, from_states=Task.ACTIVE_STATES, actor="poll")
            else:
                fail_task(task, actor="poll", reason="gateway said failed")
            raise WorkerCrashed
        assert self._ledger_size() == before
        assert Task.objects.get(pk=pk).state == claimed

    # --- endings, first and duplicate ---------------------------------------------------------

    @precondition(lambda self: self.tasks)
    @rule(data=st.data())
    def succeed(self, data):
        pk = self._pick(data, Task.State.values)
        expected = self.tasks[pk]
        with transaction.atomic():
            moved = transition(
                Task.objects.get(pk=pk),
                Task.State.SUCCEEDED,
                from_states=Task.ACTIVE_STATES,
                actor="poll",
                progress=100,
            )
        assert moved == (expected.state in Task.ACTIVE_STATES)
        if moved:
            expected.state = Task.State.SUCCEEDED

    @precondition(lambda self: self.tasks)
    @rule(data=st.data(), actor=failing_actors)
    def fail(self, data, actor):
        pk = self._pick(data, Task.State.values)
        self._end(pk, fail_task, Task.State.FAILED, actor)

    @precondition(lambda self: self.tasks)
    @rule(data=st.data())
    def admin_cancels(self, data):
        pk = self._pick(data, Task.State.values)
        self._end(pk, cancel_task, Task.State.CANCELED, "admin:carol")

    @precondition(lambda self: self._pks([Task.State.FAILED]))
    @rule(data=st.data())
    def duplicate_poll(self, data):
        pk = self._pick(data, [Task.State.FAILED])
        assert not self._end(pk, fail_task, Task.State.FAILED, "poll")

    @precondition(lambda self: self._pks(ENDED))
    @rule(data=st.data(), cancel=st.booleans())
    def duplicate_webhook(self, data, cancel):
        pk = self._pick(data, ENDED)
        if cancel:
            assert not self._end(pk, cancel_task, Task.State.CANCELED, "webhook")
        else:
            assert not self._end(pk, fail_task, Task.State.FAILED, "webhook")

    @precondition(lambda self: self._pks(ENDED))
    @rule(data=st.data(), to_state=st.sampled_from(Task.State.values))
    def ended_task_is_pushed_anywhere(self, data, to_state):
        pk = self._pick(data, ENDED)
        with transaction.atomic():
            moved = transition(
                Task.objects.get(pk=pk), to_state, from_states=Task.State.values, actor="admin"
            )
        assert not moved

    def _end(self, pk: int, end, to_state: str, actor: str) -> bool:
        expected = self.tasks[pk]
        was_active = expected.state in Task.ACTIVE_STATES
        ended = end(Task.objects.get(pk=pk), actor=actor, reason=f"ended by {actor}")
        assert ended == was_active
        if ended:
            expected.state = to_state
            self.balance[expected.owner] += expected.charged
        return ended

    # --- what must always hold ----------------------------------------------------------------

    @invariant()
    def balances_agree(self):
        sums = dict(LedgerEntry.objects.values_list("user__username").annotate(total=Sum("amount")))
        cached = dict(get_user_model().objects.values_list("username", "credit_balance"))
        for name in MEMBERS:
            assert cached[name] == sums.get(name, 0) == self.balance[name]
            assert cached[name] >= 0

    @invariant()
    def audit_finds_nothing(self):
        assert ledger.audit() == []

    @invariant()
    def every_task_is_as_expected(self):
        rows = Task.objects.annotate(
            debits=Count("ledger_entries", filter=Q(ledger_entries__kind="debit")),
            refunds=Count("ledger_entries", filter=Q(ledger_entries__kind="refund")),
        ).values_list("pk", "state", "debits", "refunds")
        actual = {pk: (state, debits, refunds) for pk, state, debits, refunds in rows}
        assert actual.keys() == self.tasks.keys()
        for pk, expected in self.tasks.items():
            state, debits, refunds = actual[pk]
            assert state == expected.state
            assert debits == 1
            assert refunds == (1 if state in REFUNDED else 0)

    @invariant()
    def ended_tasks_stay_ended(self):
        states = dict(Task.objects.values_list("pk", "state"))
        for pk, first in self.first_ending.items():
            assert states[pk] == first
        for pk, state in states.items():
            if state in ENDED:
                self.first_ending.setdefault(pk, state)
        finished = set(Task.objects.filter(finished_at__isnull=False).values_list("pk", flat=True))
        assert finished == set(self.first_ending)


@pytest.mark.django_db
def test_random_sequences_of_money_moves_keep_every_invariant(alice, bob, carol):
    run_state_machine_as_test(
        lambda: LedgerMachine({"alice": alice, "bob": bob, "carol": carol}),
        settings=settings(
            max_examples=40,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
