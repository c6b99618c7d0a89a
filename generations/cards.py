"""What a task card shows beyond the task's own fields: elapsed time, progress and ETA, and
whether it can still be canceled or was refunded.

A gateway's own percentage is shown as it is. Where a gateway gives none, the card estimates
from the gateway's `estimated_time`, or else from how long recent tasks of the same model and
duration took, and says that it is an estimate. Those typical durations are read from the
newest successes only and kept for a minute in each process's memory: every page of active
cards and every poll of them would otherwise ask the database the same question.

A page of cards or tiles links each one to a few pages of its task. The links are built from
one reverse() per kind of link and page, not one per link: see link_maker. An ended task's card
no longer changes unless the task does, so My tasks renders it once and keeps it (CARD_CACHE).

A task of a run of several tasks links to its run's page ("Run: <name> (N tasks)"). The run
and its size come in the caller's own statement (run_task_counts); a caller that does not ask
for them shows no run link, and costs nothing more.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from statistics import median
from uuid import UUID

from django.core.cache.backends.locmem import LocMemCache
from django.db.models import Count, OuterRef, QuerySet, Subquery
from django.template.loader import get_template
from django.urls import get_script_prefix, reverse
from django.utils import timezone
from django.utils.safestring import mark_safe

from generations.models import Task
from generations.services import CANCELABLE_STATES

RECENT_SAMPLE = 200
# A minute-old median is as good an estimate as a fresh one. Kept in each process rather than
# the shared cache: a process works it out once a minute from a short index read, and a page or
# a poll then needs no round trip at all (with the cache in the database, keeping it there
# would cost more statements than it saves).
TYPICAL_CACHE = LocMemCache("omniweb-typical-seconds", {"TIMEOUT": 60})
TYPICAL_CACHE_KEY = "typical-seconds"
# Stand-ins for the arguments of a URL, reversed once and then replaced: no route's fixed
# part contains them.
SAMPLE_CODE = UUID("00000000-0000-4000-8000-00000000c0de")
SAMPLE_NUMBER = 987_654_321
# Rendered cards of ended tasks, in each process's memory: the key names the task as of its
# last change (every state change sets updated_at), so a change makes a new key and nothing
# needs invalidating across processes; a deploy, which may change the template, starts empty.
CARD_CACHE = LocMemCache(
    "omniweb-task-cards", {"TIMEOUT": 24 * 3600, "OPTIONS": {"MAX_ENTRIES": 5000}}
)


def link_maker(name: str, *kinds: type) -> Callable[..., str]:
    """A function giving `reverse(name, args=args)` for any args of the given kinds (UUID or
    int), at the cost of one reverse(): the URL of stand-in arguments becomes a format string.
    A page of 24 tiles with three links each would otherwise resolve the route 72 times. UUIDs
    and numbers need no quoting in a path, so the links are exactly what reverse() makes."""
    samples = [SAMPLE_CODE if kind is UUID else SAMPLE_NUMBER for kind in kinds]
    pattern = reverse(name, args=samples).replace("{", "{{").replace("}", "}}")
    for index, sample in enumerate(samples):
        if pattern.count(str(sample)) != 1:
            # A route this trick cannot read: still right, only slower.
            return lambda *args: reverse(name, args=args)
        pattern = pattern.replace(str(sample), f"{{{index}}}")
    return pattern.format


@dataclass(frozen=True)
class Timing:
    elapsed: int  # seconds since submit (or until it finished)
    percent: int | None  # None: nothing known yet
    estimated: bool  # True when `percent` is our estimate, not the gateway's figure
    remaining: int | None  # seconds left, when there is a basis for it


def typical_seconds() -> dict[tuple[str, str, int | None], float]:
    """Median run time of the RECENT_SAMPLE newest successes per (gateway, model, duration),
    as this process worked it out within the last minute."""
    typical = TYPICAL_CACHE.get(TYPICAL_CACHE_KEY)
    if typical is None:
        typical = recent_typical_seconds()
        TYPICAL_CACHE.set(TYPICAL_CACHE_KEY, typical)
    return typical


def recent_successes() -> QuerySet:
    """The RECENT_SAMPLE newest successes, as (gateway, model, params, created, finished):
    written as the partial index of successes by finish time reads them."""
    return (
        Task.objects.filter(state=Task.State.SUCCEEDED, finished_at__isnull=False)
        .order_by("-finished_at")
        .values_list("provider", "model", "params", "created_at", "finished_at")[:RECENT_SAMPLE]
    )


def recent_typical_seconds() -> dict[tuple[str, str, int | None], float]:
    """typical_seconds, worked out now: one query, which reads only the newest successes
    through the index of successes by finish time, not every success there ever was."""
    samples: dict[tuple, list[float]] = defaultdict(list)
    for provider, model, params, created, finished in recent_successes():
        key = (provider, model, (params or {}).get("duration"))
        samples[key].append((finished - created).total_seconds())
    return {key: median(values) for key, values in samples.items()}


def timing(task: Task, typical: dict | None = None) -> Timing:
    end = task.finished_at or timezone.now()
    elapsed = max(0, int((end - task.created_at).total_seconds()))
    if not task.is_active:
        return Timing(elapsed, 100 if task.state == Task.State.SUCCEEDED else None, False, None)
    expected = task.estimated_seconds or (typical or {}).get(
        (task.provider, task.model, task.params.get("duration"))
    )
    if task.progress is not None:
        remaining = None
        if 0 < task.progress < 100:
            remaining = int(elapsed * (100 - task.progress) / task.progress)
        return Timing(elapsed, task.progress, False, remaining)
    if expected:
        # Never claim done before the gateway says so.
        percent = min(95, int(100 * elapsed / expected))
        return Timing(elapsed, percent, True, max(0, int(expected - elapsed)))
    return Timing(elapsed, None, False, None)


# Every way a task fails or is canceled refunds it in the same transaction
# (services._end_with_refund), so a card in one of these states may say "refunded".
REFUNDED_STATES = (Task.State.FAILED, Task.State.CANCELED)


def run_task_counts(tasks: QuerySet[Task]) -> QuerySet[Task]:
    """`tasks` with what their cards need to link to their runs, read by the same statement:
    each task's run (select_related) and `run_task_count`, how many undeleted tasks the run
    has."""
    size = (
        Task.objects.filter(run=OuterRef("run"), deleted_at__isnull=True)
        .order_by()
        .values("run")
        .annotate(count=Count("pk"))
        .values("count")
    )
    return tasks.select_related("run").annotate(run_task_count=Subquery(size))


def shows_run_link(task: Task) -> bool:
    """Whether the card links to its run: the caller read the run with its size
    (run_task_counts), the run has more than this task, and whoever may see the card may see
    the run (a card is the same for every viewer, see keep_ended_cards, so this cannot ask who
    looks): the run is shared with the team, or the task is private, so only its owner ever
    sees it."""
    return (
        (getattr(task, "run_task_count", None) or 0) > 1
        and Task.run.is_cached(task)
        and (
            task.run.visibility == Task.Visibility.TEAM
            or task.visibility == Task.Visibility.PRIVATE
        )
    )


def with_timing(tasks) -> list[Task]:
    """The tasks, each with what its card shows beyond its fields: `.timing`, `.cancelable`,
    `.refunded`, `.first_result` (None before there is one) and `.links` (its page, its
    Cancel form's action, its first result's poster and its run, where it has them). The
    results come from the tasks' prefetched results where the caller prefetched them; the run
    link needs the run and its size from run_task_counts."""
    tasks = list(tasks)
    typical = typical_seconds() if any(t.is_active for t in tasks) else {}
    page_url = link_maker("generations-task", UUID)
    cancel_url = link_maker("generations-task-cancel", UUID)
    poster_url = link_maker("generations-poster", UUID, int)
    run_url = link_maker("generations-run", UUID) if any(map(shows_run_link, tasks)) else None
    for task in tasks:
        task.timing = timing(task, typical)
        task.cancelable = task.state in CANCELABLE_STATES
        task.refunded = task.state in REFUNDED_STATES
        task.first_result = next(iter(task.results.all()), None)
        task.links = {"page": page_url(task.code)}
        if task.cancelable:
            task.links["cancel"] = cancel_url(task.code)
        if task.first_result is not None:
            task.links["poster"] = poster_url(task.code, task.first_result.position)
        if run_url is not None and shows_run_link(task):
            task.links["run"] = run_url(task.run.code)
    return tasks


def _run_part(task: Task) -> str:
    """What a card's run link shows, for its key in CARD_CACHE: a run grows when a task of it
    is tried again, which changes none of the older tasks' own fields."""
    if "run" not in getattr(task, "links", {}):
        return ""
    name = hashlib.blake2b(task.run.name.encode(), digest_size=8).hexdigest()
    return f"run{task.run_task_count}-{name}"


def keep_ended_cards(tasks: list[Task]) -> None:
    """Set `.kept_card` on each ended task of `tasks` (from with_timing): its card's HTML, as
    rendered the first time this process showed the task in this state. An ended card is the
    same for whoever sees it: the only parts that depend on the viewer or the request (Cancel
    and its form token) are on active cards alone."""
    prefix = get_script_prefix()
    ended = {
        # The state and the first result are named too, though a change to either also
        # changes updated_at where the product makes it: a hand-made change then shows at once.
        ":".join(
            (
                "card",
                str(task.code),
                task.updated_at.isoformat(),
                task.state,
                str(getattr(task.first_result, "pk", "")),
                prefix,
                _run_part(task),
            )
        ): task
        for task in tasks
        if task.state in Task.TERMINAL_STATES
    }
    kept = CARD_CACHE.get_many(ended) if ended else {}
    fresh = {}
    for key, task in ended.items():
        if key not in kept:
            fresh[key] = get_template("generations/_task_card.html").render({"task": task})
    if fresh:
        CARD_CACHE.set_many(fresh)
        kept.update(fresh)
    for key, task in ended.items():
        # Template output, escaped where it had to be.
        task.kept_card = mark_safe(kept[key])
