"""List active tasks past their deadline; with --fail, fail and refund them, then audit the ledger.

For monitors and for people after an incident. Exit codes: 0 when no task is stuck, 1 when some
are (listed on stdout), 2 when the ledger audit after --fail finds a problem. A task is stuck
when it is still active past its `deadline_at`, or, without one, more than
TASK_DEADLINE_MINUTES after it was created; `--older-than-minutes` replaces that rule with a
plain age.

--fail goes through `fail_task`, the same compare-and-swap plus refund every other path uses,
so a task that a worker or an admin ends at the same moment is refunded once, by whoever got
there first; running the command twice refunds nothing the second time.
"""

import argparse
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from accounts.ledger import audit
from generations.models import Task
from generations.services import fail_task
from omniweb.health import past_deadline

ACTOR = "command:stuck_tasks"
MESSAGE_WIDTH = 60


def positive_minutes(value: str) -> int:
    try:
        minutes = int(value)
    except ValueError:
        minutes = 0
    if minutes < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: give a whole number of minutes, 1 or more.")
    return minutes


def age_text(delta: timedelta) -> str:
    """A short age for people: 45s, 12m, 3h 05m, 2d 4h."""
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


def one_line(text: str, width: int = MESSAGE_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


class Command(BaseCommand):
    help = (
        "List active tasks past their deadline, oldest first; exit 1 when there are any. With "
        "--fail, fail and refund each one, then audit the ledger (exit 2 on a problem)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--fail",
            action="store_true",
            help="Fail and refund every stuck task (once each), then run the ledger audit.",
        )
        parser.add_argument(
            "--older-than-minutes",
            type=positive_minutes,
            metavar="N",
            help="Count every active task created more than N minutes ago as stuck, instead of "
            "going by each task's deadline.",
        )

    def handle(self, *args, fail: bool, older_than_minutes: int | None, **options) -> None:
        now = timezone.now()
        older_than = timedelta(minutes=older_than_minutes) if older_than_minutes else None
        stuck = list(
            Task.objects.active()
            .filter(past_deadline(now, older_than))
            .select_related("user")
            .order_by("created_at", "pk")
        )
        rule = (
            f"created more than {older_than_minutes} minutes ago"
            if older_than
            else "past their deadline"
        )
        if not stuck:
            self.stdout.write(f"No active tasks {rule}.")
        else:
            self.stdout.write(f"{len(stuck)} active tasks {rule}, oldest first:")
            rows = [["task", "member", "gateway/model", "state", "age", "last message"]]
            for task in stuck:
                rows.append(
                    [
                        str(task.code),
                        task.user.username,
                        f"{task.provider}/{task.model}",
                        task.state,
                        age_text(now - task.created_at),
                        one_line(task.message) or "-",
                    ]
                )
            for line in table(rows):
                self.stdout.write(line)

        if not fail:
            if stuck:
                raise CommandError(f"{len(stuck)} tasks are stuck.", returncode=1)
            return
        self.fail_all(stuck, now)

    def fail_all(self, stuck: list[Task], now) -> None:
        failed = ended = 0
        for task in stuck:
            reason = (
                f"No result after {age_text(now - task.created_at)}: failed and refunded"
                f" {task.credits_charged} credits by an administrator."
            )
            if fail_task(task, actor=ACTOR, reason=reason):
                failed += 1
                self.stdout.write(
                    f"failed and refunded task {task.code} ({task.user.username}, "
                    f"{task.credits_charged} credits)"
                )
            else:
                # Another path (a worker, an admin, a second run) ended it since it was listed.
                ended += 1
                self.stdout.write(f"skipped task {task.code}: it has ended already")
        self.stdout.write(f"Failed and refunded: {failed}; already ended, skipped: {ended}.")

        problems = audit()
        if problems:
            for problem in problems:
                self.stderr.write(problem)
            raise CommandError(f"Ledger audit failed: {len(problems)} problems.", returncode=2)
        self.stdout.write(self.style.SUCCESS("ledger audit passed"))
