"""What a task card shows beyond the task's own fields: elapsed time, progress and ETA, and
whether it can still be canceled or was refunded.

A gateway's own percentage is shown as it is. Where a gateway gives none, the card estimates
from the gateway's `estimated_time`, or else from how long recent tasks of the same model and
duration took, and says that it is an estimate.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from statistics import median

from django.utils import timezone

from generations.models import Task
from generations.services import CANCELABLE_STATES

RECENT_SAMPLE = 200


@dataclass(frozen=True)
class Timing:
    elapsed: int  # seconds since submit (or until it finished)
    percent: int | None  # None: nothing known yet
    estimated: bool  # True when `percent` is our estimate, not the gateway's figure
    remaining: int | None  # seconds left, when there is a basis for it


def typical_seconds() -> dict[tuple[str, str, int | None], float]:
    """Median run time of recent successful tasks per (gateway, model, duration): one query."""
    samples: dict[tuple, list[float]] = defaultdict(list)
    rows = (
        Task.objects.filter(state=Task.State.SUCCEEDED, finished_at__isnull=False)
        .order_by("-finished_at")
        .values_list("provider", "model", "params", "created_at", "finished_at")[:RECENT_SAMPLE]
    )
    for provider, model, params, created, finished in rows:
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


def with_timing(tasks) -> list[Task]:
    """The tasks, each with `.timing`, `.cancelable` and `.refunded` set for its card."""
    tasks = list(tasks)
    typical = typical_seconds() if any(t.is_active for t in tasks) else {}
    for task in tasks:
        task.timing = timing(task, typical)
        task.cancelable = task.state in CANCELABLE_STATES
        task.refunded = task.state in REFUNDED_STATES
    return tasks
