"""Generation tasks, their history, and the prices members pay for them."""

import math
import re
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import NamedTuple

from django.conf import settings
from django.contrib.postgres.search import SearchQuery, SearchVector, SearchVectorExact
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import connections, models
from django.db.models import Exists, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from generations import providers
from generations.providers import GenerationRequest, Kind, catalog


def validate_multipliers(value) -> None:
    """A JSON object of resolution -> positive number that a task's price snapshot can hold."""
    if not isinstance(value, dict):
        raise ValidationError('Write the multipliers as an object, e.g. {"1080p": 1.5}.')
    for resolution, multiplier in value.items():
        if isinstance(multiplier, bool) or not isinstance(multiplier, int | float):
            raise ValidationError(f"The multiplier for {resolution!r} must be a number.")
        number = Decimal(str(multiplier))
        if not 0 < number < 1000 or number.as_tuple().exponent < -3:
            raise ValidationError(
                f"The multiplier for {resolution!r} must be above 0 and below 1000, "
                "with at most three decimals."
            )


class ModelPrice(models.Model):
    """What one model costs in credits. Edited by admins; the single source of every price."""

    class Unit(models.TextChoices):
        SECOND = "second", "per second of video"
        IMAGE = "image", "per image"
        TASK = "task", "per task"

    provider = models.CharField(max_length=20, choices=providers.choices())
    model = models.CharField(max_length=64)
    unit = models.CharField(max_length=10, choices=Unit.choices)
    credits_per_unit = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    resolution_multipliers = models.JSONField(
        default=dict,
        blank=True,
        validators=[validate_multipliers],
        help_text='Multiplier per resolution, e.g. {"1080p": 1.5, "4k": 3}. Missing: 1.',
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["provider", "model"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "model"], name="one_price_per_model"),
            models.CheckConstraint(
                condition=models.Q(credits_per_unit__gte=1), name="price_at_least_one_credit"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider}/{self.model}: {self.credits_per_unit} {self.get_unit_display()}"


@dataclass(frozen=True)
class Quote:
    """A price: what the form shows and exactly what the debit takes."""

    unit: str
    credits_per_unit: int
    units: int
    multiplier: Decimal
    total: int


class PriceMissing(Exception):
    """No price is set for the model, or a per-second price has no duration to multiply."""


def price_list(requests: Sequence[GenerationRequest]) -> dict[tuple[str, str], ModelPrice]:
    """The prices of every model `requests` name, by (provider, model), in one query: an order
    reads its prices once, however many tasks it makes."""
    wanted = {(request.provider, request.model) for request in requests}
    if not wanted:
        return {}
    match = models.Q()
    for provider, model in wanted:
        match |= models.Q(provider=provider, model=model)
    found = ModelPrice.objects.filter(match).order_by()
    return {(price.provider, price.model): price for price in found}


def quote(
    request: GenerationRequest, prices: dict[tuple[str, str], ModelPrice] | None = None
) -> Quote:
    """The price of a request, for the duration and resolution actually sent to the gateway.
    `prices` is a price_list() already read for it; without one, the price is read here."""
    if prices is None:
        prices = price_list([request])
    price = prices.get((request.provider, request.model))
    if price is None:
        raise PriceMissing(f"No price is set for {request.provider}/{request.model}.")
    units = request.duration if price.unit == ModelPrice.Unit.SECOND else 1
    if not units or units < 1:
        raise PriceMissing(f"{request.model} is priced per second but no duration was given.")
    raw = price.resolution_multipliers.get(request.resolution or "", 1)
    multiplier = Decimal(str(raw))
    total = math.ceil(Decimal(price.credits_per_unit) * units * multiplier)
    return Quote(price.unit, price.credits_per_unit, units, multiplier, max(total, 1))


class Lease(NamedTuple):
    """A task a dispatcher leased, with what its fairness limits count."""

    pk: int
    key_id: int | None
    user_id: int


# The dispatcher's lease on PostgreSQL, one statement. `candidates` takes the earliest due
# unleased rows through the due_order index and locks them (SKIP LOCKED: rows another
# dispatcher is leasing right now are passed over, not waited for). FOR UPDATE cannot sit in a
# query with window functions, so the fairness limits are applied to the locked candidates
# afterwards, in due order: rows of a key or member with no room left go first; then each key
# keeps its earliest rows up to its room, and of those each member keeps its earliest rows up
# to theirs. That never gives a key or a member more than its room. It can give less than a
# one-by-one pick when a team key is shared: a row dropped for its member's limit still used
# a place of its key. Such a key's other rows are leased by a later call, and a member at
# their limit takes no places at all, so nobody waits on it for long. Candidates not chosen are
# unlocked when the statement ends.
LEASE_SQL = """
WITH candidates AS (
    SELECT id, key_id, user_id, next_check_at
    FROM generations_task
    WHERE state IN ('queued', 'submitted', 'running', 'fetching', 'needs_review')
      AND next_check_at <= %(now)s
      AND (lease_until IS NULL OR lease_until < %(now)s)
    ORDER BY next_check_at, id
    LIMIT %(candidates)s
    FOR UPDATE SKIP LOCKED
),
busy_keys AS (
    SELECT * FROM unnest(%(busy_key_ids)s::bigint[], %(busy_key_counts)s::int[]) AS b(id, n)
),
busy_members AS (
    SELECT * FROM unnest(%(busy_user_ids)s::bigint[], %(busy_user_counts)s::int[]) AS b(id, n)
),
roomy AS (
    SELECT c.*,
        %(per_key)s - CASE WHEN c.key_id IS NULL THEN %(busy_keyless)s ELSE COALESCE(
            (SELECT n FROM busy_keys WHERE busy_keys.id = c.key_id), 0) END AS key_room,
        %(per_member)s - COALESCE(
            (SELECT n FROM busy_members WHERE busy_members.id = c.user_id), 0) AS member_room
    FROM candidates c
),
by_key AS (
    SELECT roomy.*,
        row_number() OVER (PARTITION BY key_id ORDER BY next_check_at, id) AS key_place
    FROM roomy
    WHERE key_room > 0 AND member_room > 0
),
by_member AS (
    SELECT by_key.*,
        row_number() OVER (PARTITION BY user_id ORDER BY next_check_at, id) AS member_place
    FROM by_key
    WHERE key_place <= key_room
),
chosen AS (
    SELECT id FROM by_member
    WHERE member_place <= member_room
    ORDER BY next_check_at, id
    LIMIT %(limit)s
)
UPDATE generations_task AS task
SET lease_owner = %(owner)s, lease_until = %(until)s
FROM chosen
WHERE task.id = chosen.id
RETURNING task.id, task.key_id, task.user_id, task.next_check_at
"""


class Visibility(models.TextChoices):
    TEAM = "team", "Team: in the shared gallery"
    PRIVATE = "private", "Private: only you"


class RunQuerySet(models.QuerySet):
    def owned_by(self, user) -> "RunQuerySet":
        """A member's own runs: what they may act on (cancel, retry, rename)."""
        return self.filter(user=user)

    def visible_to(self, user) -> "RunQuerySet":
        """What a member may look at: their own runs and teammates' team-visible ones. A run
        a teammate may see still shows them only the tasks they may see (Task.visible_to)."""
        return self.filter(models.Q(user=user) | models.Q(visibility=Visibility.TEAM))


# A run's default name: the start of its first prompt.
RUN_NAME_CHARS = 80


class Run(models.Model):
    """The tasks of one order: a lone submit is a run of one; variations, a comparison across
    models or a batch make several. Try again adds its new task to the failed task's run."""

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="runs"
    )
    name = models.CharField(max_length=RUN_NAME_CHARS + 20)
    visibility = models.CharField(
        max_length=10, choices=Visibility.choices, default=Visibility.TEAM
    )
    created_at = models.DateTimeField(default=timezone.now)

    objects = RunQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def name_for(prompt: str) -> str:
        """The default name of a run: its first prompt on one line, shortened."""
        text = " ".join(prompt.split())
        if len(text) > RUN_NAME_CHARS:
            text = text[: RUN_NAME_CHARS - 1].rstrip() + "…"
        return text or "Untitled run"

    @classmethod
    def of_one(cls, task: "Task") -> "Run":
        """An unsaved run for a task made outside an order (an admin's or a script's)."""
        return cls(
            user_id=task.user_id,
            name=cls.name_for(task.prompt),
            visibility=task.visibility,
            created_at=task.created_at,
        )


class TaskQuerySet(models.QuerySet):
    def owned_by(self, user) -> "TaskQuerySet":
        """A member's own tasks, except those they deleted: what they may change."""
        return self.filter(user=user, deleted_at__isnull=True)

    def visible_to(self, user) -> "TaskQuerySet":
        """What a member may look at: their own tasks and teammates' team-visible ones."""
        return self.filter(
            models.Q(user=user) | models.Q(visibility=Task.Visibility.TEAM),
            deleted_at__isnull=True,
        )

    def in_gallery(self) -> "TaskQuerySet":
        """Finished results the team shares."""
        return self.filter(
            state=Task.State.SUCCEEDED, visibility=Task.Visibility.TEAM, deleted_at__isnull=True
        )

    # Scripts written without spaces between words (Thai, Lao, Myanmar, Khmer, Japanese kana,
    # Chinese characters): PostgreSQL's parser reads a whole sentence in them as one word.
    UNSPACED_SCRIPT = re.compile(
        "[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf"
        "\u4e00-\u9fff\uf900-\ufaff]"
    )

    def search(self, words: Sequence[str]) -> "TaskQuerySet":
        """Tasks whose prompt has every one of `words` (as gallery.search_words splits a
        search), in any order, whatever their case.

        On PostgreSQL a word matches the prompt's words that start with it once both are
        reduced to their English stem: "fox" finds "foxes" and "foxglove", "foxes" finds
        "fox", "running" finds "runs". Very common English words ("the", "of") are skipped,
        so a search made only of them finds nothing. The full-text index of migration 0009
        finds the matching prompts: its expression and the one here must stay the same, and
        pages order their matches with gallery.matches_newest_first so that the planner uses
        it. A word in a script written without spaces is looked for as a substring instead,
        outside the index.

        On SQLite a word matches anywhere in the prompt ("fox" finds "foxes" and "silverfox",
        "foxes" does not find "fox"), case ignored for A to Z only, and every prompt is read.
        """
        if not words:
            return self
        if connections[self.db].vendor != "postgresql":
            return self.filter(*(models.Q(prompt__icontains=word) for word in words))
        unspaced = [word for word in words if self.UNSPACED_SCRIPT.search(word)]
        tasks = self.filter(*(models.Q(prompt__icontains=word) for word in unspaced))
        spaced = [word for word in words if word not in unspaced]
        if spaced:
            # Each word quoted, so nothing in it is read as query syntax; ":*" makes it a prefix.
            query = " & ".join(
                "'" + word.replace("\\", "\\\\").replace("'", "''") + "':*" for word in spaced
            )
            tasks = tasks.filter(
                SearchVectorExact(
                    SearchVector("prompt", config="english"),
                    SearchQuery(query, search_type="raw", config="english"),
                )
            )
        return tasks

    def active(self) -> "TaskQuerySet":
        return self.filter(state__in=Task.ACTIVE_STATES)

    def one_per_run(self) -> "TaskQuerySet":
        """Of each run's tasks in this queryset, the one that stands for the run: the one its
        owner starred (the keeper), else the first. Filters applied before this choose among
        the tasks they let through."""
        same_run = self.filter(run=OuterRef("run")).order_by()
        starred = Favourite.objects.filter(user=OuterRef("user"), task=OuterRef("pk"))
        first = same_run.annotate(starred=Exists(starred)).order_by("-starred", "pk")
        return self.filter(pk=Subquery(first.values("pk")[:1]))

    def bulk_create(self, objs, *args, **kwargs):
        """As Django's, after giving each task that has no run a run of one (see Task.save)."""
        objs = list(objs)
        lone = [task for task in objs if task.run_id is None]
        runs = Run.objects.bulk_create(Run.of_one(task) for task in lone)
        for task, run in zip(lone, runs, strict=True):
            task.run = run
        return super().bulk_create(objs, *args, **kwargs)

    def unleased(self, now) -> "TaskQuerySet":
        return self.filter(models.Q(lease_until__isnull=True) | models.Q(lease_until__lt=now))

    def due(self, now) -> "TaskQuerySet":
        """Active tasks whose next check has come and that no live worker holds."""
        return self.active().filter(next_check_at__lte=now).unleased(now)

    def needing_review(self) -> "TaskQuerySet":
        return self.filter(state=Task.State.NEEDS_REVIEW)

    def lease_due(
        self,
        owner: str,
        *,
        limit: int,
        per_key: int,
        busy_keys=None,
        per_member: int | None = None,
        busy_members=None,
        seconds: float | None = None,
    ) -> list[Lease]:
        """Lease up to `limit` due tasks to `owner` for `seconds` (LEASE_SECONDS unless told);
        returns their Leases, earliest due first.

        `busy_keys` and `busy_members` count the tasks per key and per member this dispatcher
        already holds, so one key never gets more than `per_key` requests in flight from it,
        and one member's slow gateways never hold more than `per_member` of its slots while
        other members' tasks wait.

        On PostgreSQL the lease is one statement (see LEASE_SQL): the candidate rows are
        locked with SKIP LOCKED, so several dispatchers on several hosts each get different
        tasks without waiting for one another. SQLite has no row locks, but its write
        transactions run one at a time, so two processes leasing at once run one after the
        other and the second sees the first's lease.
        """
        now = timezone.now()
        until = now + timedelta(seconds=settings.LEASE_SECONDS if seconds is None else seconds)
        busy = {key: count for key, count in (busy_keys or {}).items() if count}
        members = {user: count for user, count in (busy_members or {}).items() if count}
        # Without a member limit a member may hold every slot asked for.
        member_limit = limit if per_member is None else per_member
        connection = connections[self.db]
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    LEASE_SQL,
                    {
                        "now": now,
                        # Enough candidates that tasks skipped for a full key or member do not
                        # leave the batch short.
                        "candidates": limit * 4,
                        "busy_key_ids": [key for key in busy if key is not None],
                        "busy_key_counts": [busy[key] for key in busy if key is not None],
                        "busy_keyless": busy.get(None, 0),
                        "busy_user_ids": list(members),
                        "busy_user_counts": list(members.values()),
                        "per_key": per_key,
                        "per_member": member_limit,
                        "limit": limit,
                        "owner": owner,
                        "until": until,
                    },
                )
                rows = cursor.fetchall()
            # RETURNING keeps no order; the caller starts them in due order.
            rows.sort(key=lambda row: (row[3], row[0]))
            return [Lease(pk, key_id, user_id) for pk, key_id, user_id, _ in rows]

        from django.db import transaction

        # A plain read first: an idle dispatcher then never takes SQLite's write lock.
        if not self.due(now).exists():
            return []
        with transaction.atomic():
            candidates = list(
                self.due(now)
                .order_by("next_check_at", "pk")
                .values_list("pk", "key_id", "user_id")[: limit * 4]
            )
            chosen = []
            for pk, key_id, user_id in candidates:
                if busy.get(key_id, 0) >= per_key or members.get(user_id, 0) >= member_limit:
                    continue
                busy[key_id] = busy.get(key_id, 0) + 1
                members[user_id] = members.get(user_id, 0) + 1
                chosen.append(Lease(pk, key_id, user_id))
                if len(chosen) == limit:
                    break
            if chosen:
                self.filter(pk__in=[lease.pk for lease in chosen]).update(
                    lease_owner=owner, lease_until=until
                )
        return chosen

    def claim(self, pk: int, owner: str, *, states, due_only: bool = False) -> bool:
        """Lease one task for `owner` if it is in `states` and free (and, with `due_only`, its
        next check has come): the conditional update that keeps a job delivered twice from
        working on the same task twice at once, or before its retry time."""
        now = timezone.now()
        until = now + timedelta(seconds=settings.LEASE_SECONDS)
        candidates = self.filter(pk=pk, state__in=states).unleased(now)
        if due_only:
            candidates = candidates.filter(next_check_at__lte=now)
        return bool(candidates.update(lease_owner=owner, lease_until=until))

    def release(self, pks: int | Collection[int], owner: str) -> None:
        """Let go of one task, or several, that `owner` holds: each is free for any worker at
        once, instead of after its lease runs out."""
        pks = [pks] if isinstance(pks, int) else list(pks)
        if pks:
            self.filter(pk__in=pks, lease_owner=owner).update(lease_owner="", lease_until=None)


class Task(models.Model):
    """One generation a member paid for, from submit to stored result or refund."""

    Visibility = Visibility

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        SUBMITTED = "submitted", "Submitted"
        RUNNING = "running", "Running"
        FETCHING = "fetching", "Saving result"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELED = "canceled", "Canceled"
        NEEDS_REVIEW = "needs_review", "Needs review"

    ACTIVE_STATES = (
        State.QUEUED,
        State.SUBMITTED,
        State.RUNNING,
        State.FETCHING,
        State.NEEDS_REVIEW,
    )
    TERMINAL_STATES = (State.SUCCEEDED, State.FAILED, State.CANCELED)
    # What holds one of its key's slots at the gateway (ProviderKey.max_in_flight): a task the
    # gateway has and has not finished. A queued task whose request is on its way (submit_sent_at
    # set) holds one too; see engine.take_slot.
    IN_FLIGHT_STATES = (State.SUBMITTED, State.RUNNING)

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="tasks"
    )
    run = models.ForeignKey(Run, on_delete=models.PROTECT, related_name="tasks")
    # The failed or canceled task this one tries again (Try again, on its page or its run's).
    retry_of = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="retries"
    )
    provider = models.CharField(max_length=20, choices=providers.choices())
    model = models.CharField(max_length=64)
    kind = models.CharField(max_length=10, choices=[(k.value, k.value) for k in Kind])
    prompt = models.TextField()
    params = models.JSONField(default=dict, blank=True)
    key = models.ForeignKey(
        "accounts.ProviderKey",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="tasks",
    )
    key_label = models.CharField(max_length=200, help_text="Which key paid, as it was then.")
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    submit_token = models.UUIDField(null=True, blank=True, editable=False)
    visibility = models.CharField(
        max_length=10, choices=Visibility.choices, default=Visibility.TEAM
    )
    # Deleting keeps the row (the ledger points at it) but removes the files and hides it.
    deleted_at = models.DateTimeField(null=True, blank=True)
    # The price snapshot taken at submit, so later price edits never change what was paid.
    price_unit = models.CharField(max_length=10)
    price_credits_per_unit = models.PositiveIntegerField()
    price_units = models.PositiveIntegerField()
    price_multiplier = models.DecimalField(max_digits=6, decimal_places=3)
    credits_charged = models.PositiveIntegerField()
    gateway_cost = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True)
    provider_task_id = models.CharField(max_length=200, blank=True)
    progress = models.PositiveSmallIntegerField(null=True, blank=True)
    message = models.TextField(blank=True, help_text="What happened, for people.")
    details = models.TextField(
        blank=True, help_text="The gateway's own words about the last problem, bounded."
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    # The engine's bookkeeping (generations/engine.py).
    # Indexed for active tasks only (task_due_order): a finished task is never checked again.
    next_check_at = models.DateTimeField(
        null=True, blank=True, help_text="When a worker looks at it next."
    )
    lease_owner = models.CharField(max_length=100, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    # Set just before the submit request leaves; a queued task that has it lost its answer.
    submit_sent_at = models.DateTimeField(null=True, blank=True)
    submit_attempts = models.PositiveSmallIntegerField(default=0)
    polls = models.PositiveIntegerField(default=0)
    error_streak = models.PositiveSmallIntegerField(default=0)
    not_found_streak = models.PositiveSmallIntegerField(default=0)
    download_attempts = models.PositiveSmallIntegerField(default=0)
    # What the gateway answered along the way, for the insight pages: 429s (too many
    # requests) and 5xx answers, however the task ended.
    gateway_429s = models.PositiveSmallIntegerField(default=0)
    gateway_5xxs = models.PositiveSmallIntegerField(default=0)
    estimated_seconds = models.PositiveIntegerField(null=True, blank=True)
    deadline_at = models.DateTimeField(null=True, blank=True)
    give_up_at = models.DateTimeField(null=True, blank=True)
    callback_token_hash = models.CharField(max_length=64, blank=True, db_index=True)
    # A task id a gateway's callback named for a task whose submit answer was lost; the engine
    # adopts it only once a status query under our key confirms it.
    callback_task_id = models.CharField(max_length=200, blank=True)
    gateway_results = models.JSONField(
        default=list, blank=True, help_text="The gateway's result links, until stored."
    )
    last_response = models.JSONField(
        default=dict, blank=True, help_text="The gateway's last answer, for admins."
    )

    objects = TaskQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "submit_token"], name="one_task_per_submit_token"
            ),
        ]
        indexes = [
            # The gallery's order (newest result first) over its rows only.
            models.Index(
                Coalesce("finished_at", "created_at").desc(),
                models.F("id").desc(),
                name="gallery_newest_first",
                condition=models.Q(state="succeeded", visibility="team", deleted_at__isnull=True),
            ),
            # A member's own tasks, newest first: My tasks, Create's recent cards, the submit
            # rate limit.
            models.Index(fields=["user", "-created_at"], name="task_user_newest"),
            # /healthz and stuck_tasks read only the few active rows of a large table.
            models.Index(
                fields=["created_at"],
                name="active_tasks_by_age",
                condition=models.Q(
                    state__in=["queued", "submitted", "running", "fetching", "needs_review"]
                ),
            ),
            # The dispatcher's lease (LEASE_SQL): active tasks in due order, ties by id, so it
            # reads only the first few rows however many are due.
            models.Index(
                fields=["next_check_at", "id"],
                name="task_due_order",
                condition=models.Q(
                    state__in=["queued", "submitted", "running", "fetching", "needs_review"]
                ),
            ),
            # A key's tasks that hold or wait for one of its gateway slots (engine.take_slot).
            models.Index(
                fields=["key", "id"],
                name="task_key_slots",
                condition=models.Q(state__in=["queued", "submitted", "running"]),
            ),
            # Typical durations for the cards come from the newest succeeded tasks.
            models.Index(
                models.F("finished_at").desc(),
                name="succeeded_by_finish",
                condition=models.Q(state="succeeded"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model} task {self.code}"

    def save(self, *args, **kwargs) -> None:
        # Every task belongs to a run; orders make theirs (services.submit_order), and a task
        # made any other way (fixtures, the shell) becomes a run of one.
        if self.run_id is None:
            run = Run.of_one(self)
            run.save()
            self.run = run
        super().save(*args, **kwargs)

    @property
    def is_active(self) -> bool:
        return self.state in self.ACTIVE_STATES

    @property
    def review_note(self) -> str:
        """What happens next to a task in review, truthfully: only a task the gateway gave us
        an id for can be checked automatically."""
        if self.provider_task_id:
            return (
                "Omniweb could not confirm what happened; it checks again every few minutes. "
                "If the result is not delivered, your credits are refunded."
            )
        return (
            "Omniweb cannot check this task by itself because the gateway's answer was lost; "
            "an admin will look into it. If the result is not delivered, your credits are "
            "refunded."
        )

    @property
    def spec(self) -> catalog.ModelSpec | None:
        return catalog.get(self.provider, self.model)

    @property
    def provider_name(self) -> str:
        return providers.REGISTRY[self.provider].name

    def generation_request(self, callback_url: str | None = None) -> GenerationRequest:
        """The normalized request this task was charged for, to send (again)."""
        return GenerationRequest(
            provider=self.provider,
            model=self.model,
            prompt=self.prompt,
            duration=self.params.get("duration"),
            resolution=self.params.get("resolution"),
            aspect_ratio=self.params.get("aspect_ratio"),
            reference_images=tuple(self.params.get("reference_images") or ()),
            callback_url=callback_url,
        )


class Favourite(models.Model):
    """A member's star on a gallery result."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="favourites"
    )
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="favourites")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "task"], name="one_favourite_per_task")
        ]

    def __str__(self) -> str:
        return f"{self.user} ★ {self.task}"


class ReferenceImage(models.Model):
    """An image a member uploaded to guide a generation. Gateways fetch it from an unguessable
    public URL (or get it inline as a data URI where they accept one)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="reference_images"
    )
    # The task that was sent this image. Its public link works only while the task is active
    # (gateways fetch references around submit), and it is deleted with the task.
    task = models.ForeignKey(
        "Task", on_delete=models.CASCADE, null=True, blank=True, related_name="references"
    )
    token = models.CharField(max_length=64, unique=True)
    file = models.FileField(max_length=300)
    content_type = models.CharField(max_length=40)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    size = models.PositiveIntegerField()
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"reference image {self.token[:8]}…"


class TaskInReview(Task):
    """Tasks whose outcome Omniweb could not confirm: the admin's review list."""

    class Meta:
        proxy = True
        verbose_name = "task needing review"
        verbose_name_plural = "tasks needing review"


class Result(models.Model):
    """A result file copied from the gateway into our own storage, with what we read from it."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="results")
    position = models.PositiveSmallIntegerField(default=0)
    file = models.FileField(max_length=300)
    poster = models.FileField(max_length=300, blank=True)
    content_type = models.CharField(max_length=60)
    size = models.PositiveBigIntegerField()
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    duration = models.FloatField(null=True, blank=True, help_text="Seconds, for videos.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["task", "position"]
        constraints = [
            # Two workers storing the same result at once: one row wins, the other's file goes.
            models.UniqueConstraint(fields=["task", "position"], name="one_file_per_result"),
        ]

    def __str__(self) -> str:
        return f"{self.task} result {self.position}"

    @property
    def is_video(self) -> bool:
        return self.content_type.startswith("video/")


class TaskEvent(models.Model):
    """A state change of a task: who or what moved it, when and why. Append-only by habit."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="events")
    from_state = models.CharField(max_length=16, blank=True)
    to_state = models.CharField(max_length=16)
    actor = models.CharField(max_length=60, help_text="e.g. member, poll, webhook, admin:carol")
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.from_state or '∅'} → {self.to_state} ({self.actor})"


# Models of other concepts, each in its own module; imported here so Django finds them.
from generations.api.webhooks import WebhookDelivery, WebhookEndpoint  # noqa: E402,F401
from generations.models.boards import Board, BoardItem  # noqa: E402,F401
from generations.models.insight import AlertSent, AlertSettings  # noqa: E402,F401
from generations.models.presets import Preset  # noqa: E402,F401
from generations.models.shares import ShareLink  # noqa: E402,F401
