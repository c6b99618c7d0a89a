"""The run pages: the tasks of one order together, and what can be done with all of them.

A run's page shows its cards, kept live by the studio's one card poller (_poller.html), and a
panel of how far the run has got and what it cost, which the page asks for again whenever a
card changes state (static/js/runs.js). Compare lays the results side by side, one column per
model. The owner can cancel everything that has not finished and try the failed and canceled
tasks again as one order; anyone who may see the run can download its results as one ZIP,
streamed as it is written (generations/zipstream.py).

Lookups start from what the member may see: Run.objects.visible_to for the run, then
Task.objects.visible_to for its tasks, so a teammate sees only the tasks shared with the team,
nobody sees deleted ones, and another member's private run answers 404. The actions start
from Run.objects.owned_by, so they answer 404 to anyone but the owner. Every page costs the
same few statements however many tasks the run has.
"""

from __future__ import annotations

import hashlib
import mimetypes
import re
import uuid
from dataclasses import dataclass, replace
from functools import partial
from uuid import UUID

from django.contrib import messages
from django.db.models import Count, Exists, OuterRef, Q, QuerySet, Sum
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.http import content_disposition_header
from django.utils.text import slugify
from django.views.decorators.http import require_GET, require_POST

from accounts.models import LedgerEntry
from generations.cards import REFUNDED_STATES, keep_ended_cards, link_maker, with_timing
from generations.engine import WAITING_FOR_SLOT
from generations.models import Favourite, Result, Run, Task
from generations.services import (
    CANCELABLE_STATES,
    Order,
    StoredReference,
    SubmitRefused,
    cancel_by_member,
    retry_order,
    submit_order,
)
from generations.zipstream import ZipEntry, zip_chunks

State = Task.State
# At the gateway, or its result being saved.
RUNNING_STATES = (State.SUBMITTED, State.RUNNING, State.FETCHING)
# What engine.take_slot writes on a queued task whose key has no free slot.
# A card never shows the gateway's raw answers (up to 20,000 characters of JSON each).
UNSHOWN_FIELDS = ("last_response", "gateway_results")


def _visible_run(request: HttpRequest, code: UUID) -> Run:
    return get_object_or_404(Run.objects.visible_to(request.user).select_related("user"), code=code)


def _own_run(request: HttpRequest, code: UUID) -> Run:
    """A run the member may act on: their own. Anyone else's, shared or not, is a 404."""
    return get_object_or_404(Run.objects.owned_by(request.user), code=code)


def run_tasks(run: Run, user) -> QuerySet[Task]:
    """The tasks of `run` that `user` may see, in the order they were made (Try again's new
    tasks last)."""
    return Task.objects.visible_to(user).filter(run=run).order_by("created_at", "pk")


# --- what the run has done and cost ----------------------------------------------------------


def retry_note(codes: list[UUID]) -> str:
    """The first event's note of the tasks a retry makes, for people reading the history."""
    if len(codes) == 1:
        return f"retry of task {codes[0]}"
    return "retry of tasks " + ", ".join(str(code) for code in codes)


def not_retried() -> Q:
    """Tasks no other task tries again yet (Task.retry_of), so "try again the failed" never
    pays twice for the same failure, whether it was tried again here or on its page."""
    return ~Q(Exists(Task.objects.filter(retry_of=OuterRef("pk"))))


@dataclass(frozen=True)
class Progress:
    """A run's tasks counted by where they are, what they cost, and what its owner can still
    do with them. Counts cover the tasks the viewer may see."""

    total: int
    done: int
    running: int
    waiting: int  # queued: not sent to the gateway yet
    waiting_for_slot: int  # of those, waiting for a free slot on their key
    review: int  # Omniweb could not confirm the outcome yet
    ended: int  # failed or canceled, and refunded
    charged: int
    refunded: int
    files: int
    size: int
    cancelable: int  # the viewer's own tasks that can still be canceled
    retriable: int  # the viewer's own failed or canceled tasks not tried again yet

    @property
    def net(self) -> int:
        return self.charged - self.refunded

    @property
    def finished(self) -> int:
        return self.done + self.ended

    @property
    def active(self) -> int:
        return self.running + self.waiting + self.review


def run_progress(run: Run, user) -> Progress:
    """The run's Progress for `user`, in three statements (four for the owner) whatever the
    number of tasks: the tasks counted by state, their ledger entries summed, their stored
    files counted (and, for the owner, the tasks tried again already)."""
    tasks = run_tasks(run, user).order_by()
    own_refunded = Q(user=user, state__in=REFUNDED_STATES) & not_retried()
    counts = tasks.aggregate(
        total=Count("pk"),
        done=Count("pk", filter=Q(state=State.SUCCEEDED)),
        running=Count("pk", filter=Q(state__in=RUNNING_STATES)),
        waiting=Count("pk", filter=Q(state=State.QUEUED)),
        waiting_for_slot=Count(
            "pk", filter=Q(state=State.QUEUED, message__startswith=WAITING_FOR_SLOT)
        ),
        review=Count("pk", filter=Q(state=State.NEEDS_REVIEW)),
        ended=Count("pk", filter=Q(state__in=REFUNDED_STATES)),
        cancelable=Count("pk", filter=Q(user=user, state__in=CANCELABLE_STATES)),
        retriable=Count("pk", filter=own_refunded),
    )
    # The ledger, not the tasks' prices: it is what was actually taken and given back.
    money = LedgerEntry.objects.filter(task__in=tasks.values("pk")).aggregate(
        debits=Sum("amount", filter=Q(kind=LedgerEntry.Kind.DEBIT)),
        refunds=Sum("amount", filter=Q(kind=LedgerEntry.Kind.REFUND)),
    )
    files = Result.objects.filter(
        task__in=tasks.filter(state=State.SUCCEEDED).values("pk")
    ).aggregate(files=Count("pk"), size=Sum("size"))
    return Progress(
        **counts,
        charged=-(money["debits"] or 0),
        refunded=money["refunds"] or 0,
        files=files["files"],
        size=files["size"] or 0,
    )


def _progress_context(run: Run, user) -> dict:
    return {
        "run": run,
        "mine": run.user_id == user.pk,
        "progress": run_progress(run, user),
        # A fresh token each time the actions are shown: one click, one order.
        "retry_token": uuid.uuid4(),
    }


# --- the pages -------------------------------------------------------------------------------


@require_GET
def run_detail(request: HttpRequest, code: UUID) -> HttpResponse:
    """The run: who made it and when, its progress and spend, and its live cards."""
    run = _visible_run(request, code)
    cards = with_timing(
        run_tasks(run, request.user).defer(*UNSHOWN_FIELDS).prefetch_related("results")
    )
    keep_ended_cards(cards)
    context = _progress_context(run, request.user)
    context.update(cards=cards, watching=any(task.is_active for task in cards))
    return render(request, "generations/run_detail.html", context)


@require_GET
def run_progress_part(request: HttpRequest, code: UUID) -> HttpResponse:
    """The run page's progress panel, asked for again when a card on the page changes."""
    run = _visible_run(request, code)
    if not request.htmx:
        return redirect("generations-run", code=run.code)
    return render(request, "generations/_run_progress.html", _progress_context(run, request.user))


@dataclass
class Column:
    """Compare's column of one model: its tasks in the run's order."""

    key: str
    label: str
    provider_name: str
    tasks: list[Task]


def compare_columns(tasks: list[Task]) -> list[Column]:
    """The tasks grouped by model (gateway and model), the columns in the order their models
    first appear in the run."""
    columns: dict[str, Column] = {}
    for task in tasks:
        key = f"{task.provider}/{task.model}"
        if key not in columns:
            label = task.spec.label if task.spec else task.model
            columns[key] = Column(key, label, task.provider_name, [])
        columns[key].tasks.append(task)
    return list(columns.values())


@require_GET
def run_compare(request: HttpRequest, code: UUID) -> HttpResponse:
    """The run's results side by side: a column per model, each task with its gateway, its
    cost, its time to result and its player, and the viewer's star on the keepers."""
    run = _visible_run(request, code)
    tasks = with_timing(
        run_tasks(run, request.user)
        .defer(*UNSHOWN_FIELDS)
        .annotate(
            is_favourite=Exists(Favourite.objects.filter(user=request.user, task=OuterRef("pk")))
        )
        .prefetch_related("results")
    )
    file_url = link_maker("generations-file", UUID, int)
    poster_url = link_maker("generations-poster", UUID, int)
    for task in tasks:
        task.seconds_to_result = (
            int((task.finished_at - task.created_at).total_seconds())
            if task.state == State.SUCCEEDED and task.finished_at
            else None
        )
        task.shown_results = [
            (
                result,
                file_url(task.code, result.position),
                poster_url(task.code, result.position) if result.poster else "",
            )
            for result in task.results.all()
        ]
    return render(
        request,
        "generations/run_compare.html",
        {
            "run": run,
            "columns": compare_columns(tasks),
            "active": sum(task.is_active for task in tasks),
        },
    )


# --- the actions -----------------------------------------------------------------------------


@require_POST
def run_cancel(request: HttpRequest, code: UUID) -> HttpResponse:
    """Cancel every task of the run that has not finished, refunding each exactly once: a
    task another path ended meanwhile (or a second click) is left as it is."""
    run = _own_run(request, code)
    unfinished = (
        Task.objects.owned_by(request.user)
        .filter(run=run, state__in=CANCELABLE_STATES)
        .defer(*UNSHOWN_FIELDS)
        .order_by("created_at", "pk")
    )
    canceled = [task for task in unfinished if cancel_by_member(task)]
    if canceled:
        refunded = sum(task.credits_charged for task in canceled)
        count = len(canceled)
        messages.success(
            request,
            f"Canceled {count} task{'s' if count != 1 else ''} and refunded {refunded} "
            f"credit{'s' if refunded != 1 else ''}. Gateways have no cancel call, so they may "
            "still finish them; Omniweb will not fetch them.",
        )
    else:
        messages.info(request, "Nothing in this run is left to cancel.")
    return redirect("generations-run", code=run.code)


def _image_signature(order: Order) -> tuple:
    """What tells one retry's reference images from another's: the bytes of each stored copy
    (every task keeps its own copies, so two tasks sent the same image have different files
    with equal bytes). A copy that cannot be read stays apart; submit_order says why."""
    signature = []
    for image in order.images:
        if not isinstance(image, StoredReference):
            signature.append(("other", id(image)))
            continue
        digest = hashlib.blake2b(digest_size=16)
        try:
            with image.reference.file.open("rb") as handle:
                while piece := handle.read(256 * 1024):
                    digest.update(piece)
        except (FileNotFoundError, OSError, ValueError):
            signature.append(("unreadable", image.reference.pk))
            continue
        signature.append(digest.hexdigest())
    return tuple(signature)


def order_token(token: UUID, index: int) -> UUID:
    """The token of the `index`th order of one click: the click's own for the first."""
    return token if index == 0 else uuid.uuid5(token, f"run-retry-order-{index}")


def retry_orders(tasks: list[Task], token: UUID) -> tuple[list[Order], list[str]]:
    """The orders that try `tasks` again, and why any task cannot be.

    One order for all of them, joining their run, as long as they share their visibility
    and their reference images (an order sends one set of images with each of its tasks).
    Tasks with other images, or another visibility, make one more order per set, each with
    its own token derived from the click's, so a double click still charges once."""
    groups: dict[tuple, list[tuple[Task, Order]]] = {}
    problems = []
    for task in tasks:
        try:
            single = retry_order(task, token=None)
        except SubmitRefused as refusal:
            label = task.spec.label if task.spec else task.model
            problems.append(f"{label} ({task.prompt[:40]}): {refusal.message}")
            continue
        key = (single.visibility, _image_signature(single))
        groups.setdefault(key, []).append((task, single))
    orders = []
    for index, group in enumerate(groups.values()):
        first = group[0][1]
        orders.append(
            replace(
                first,
                items=tuple(single.items[0] for _task, single in group),
                token=order_token(token, index),
                note=retry_note([task.code for task, _single in group]),
            )
        )
    return orders, problems


def _refusal_text(refusal: SubmitRefused) -> str:
    details = [text for texts in refusal.errors.values() for text in texts]
    return " ".join([refusal.message, *(text for text in details if text not in refusal.message)])


@require_POST
def run_retry(request: HttpRequest, code: UUID) -> HttpResponse:
    """Try the run's failed and canceled tasks again (those not tried again already) as one
    order through the one submit path: new tasks in this run, new debits, all or nothing.
    The button's token makes a double click charge once."""
    run = _own_run(request, code)
    back = redirect("generations-run", code=run.code)
    try:
        token = UUID(request.POST.get("form_token", ""))
    except ValueError:
        messages.error(request, "This button was incomplete; reload the page and try again.")
        return back
    tasks = list(
        Task.objects.owned_by(request.user)
        .filter(not_retried(), run=run, state__in=REFUNDED_STATES)
        .select_related("key")
        .defer(*UNSHOWN_FIELDS)
        .order_by("created_at", "pk")
    )
    if not tasks:
        messages.info(
            request, "Nothing in this run is left to try again: every failed task was already."
        )
        return back
    for task in tasks:
        task.run = run  # the new tasks join it; saves a read per task
    orders, problems = retry_orders(tasks, token)
    made, charged, repeated = 0, 0, False
    for order in orders:
        try:
            outcome = submit_order(request.user, order)
        except SubmitRefused as refusal:
            problems.append(_refusal_text(refusal))
            continue
        if outcome.created:
            made += len(outcome.tasks)
            charged += sum(task.credits_charged for task in outcome.tasks)
        else:
            repeated = True
    if made:
        how = "as one order" if len(orders) == 1 else "(one order per set of reference images)"
        messages.success(
            request,
            f"Submitted {made} task{'s' if made != 1 else ''} again {how}; "
            f"{charged} credits charged. They are at the end of this run.",
        )
    elif repeated:
        messages.info(request, "These were already submitted again; nothing more was charged.")
    for problem in problems:
        messages.error(request, problem)
    return back


# --- the download ----------------------------------------------------------------------------

# The extension a stored name may lend an archive's file: short, letters and digits.
SAFE_EXTENSION = re.compile(r"^[a-z0-9]{1,5}$")


def _extension(result: Result) -> str:
    stored = result.file.name.rsplit("/", 1)[-1]
    if "." in stored:
        extension = stored.rsplit(".", 1)[-1].lower()
        if SAFE_EXTENSION.match(extension):
            return extension
    guessed = (mimetypes.guess_extension(result.content_type) or ".bin").lstrip(".")
    return guessed if SAFE_EXTENSION.match(guessed) else "bin"


def archive_names(results: list[Result]) -> list[str]:
    """A name for each result in the archive, "01-omni-flash-ext-1a2b3c4d.mp4": the task's
    place among the run's results, its model and the start of its code, and the result's
    number where a task has several. Only ASCII letters, digits and dashes, never a folder,
    never the same name twice."""
    numbers: dict[int, int] = {}
    for result in results:
        numbers.setdefault(result.task_id, len(numbers) + 1)
    width = max(2, len(str(len(numbers))))
    names, taken = [], set()
    for result in results:
        task = result.task
        stem = f"{numbers[task.pk]:0{width}d}-{slugify(task.model) or 'result'}-{task.code.hex[:8]}"
        if result.position:
            stem += f"-{result.position + 1}"
        name, extension = stem, _extension(result)
        again = 1
        while f"{name}.{extension}" in taken:
            again += 1
            name = f"{stem}-{again}"
        taken.add(f"{name}.{extension}")
        names.append(f"{name}.{extension}")
    return names


@require_GET
def run_download(request: HttpRequest, code: UUID) -> HttpResponseBase:
    """Every stored result of the run's tasks the member may see, as one ZIP, streamed: the
    archive is written while it is sent, one piece of one file at a time."""
    run = _visible_run(request, code)
    results = list(
        Result.objects.filter(
            task__in=run_tasks(run, request.user).filter(state=State.SUCCEEDED).values("pk")
        )
        .select_related("task")
        # The task's few fields a name and a time need; not its gateway's raw answers.
        .only(
            "position",
            "file",
            "content_type",
            "size",
            "task",
            "task__code",
            "task__model",
            "task__created_at",
            "task__finished_at",
        )
        .order_by("task__created_at", "task__pk", "position")
    )
    if not results:
        messages.info(request, "This run has no finished results to download yet.")
        return redirect("generations-run", code=run.code)
    entries = [
        ZipEntry(
            name=name,
            # Through the storage API, so the files may live on local disk or in a bucket.
            open=partial(result.file.storage.open, result.file.name, "rb"),
            size=result.size,
            modified=timezone.localtime(result.task.finished_at or result.task.created_at),
        )
        for result, name in zip(results, archive_names(results), strict=True)
    ]
    response = StreamingHttpResponse(zip_chunks(entries), content_type="application/zip")
    name = slugify(run.name)[:40].strip("-") or "run"
    response["Content-Disposition"] = content_disposition_header(
        True, f"omniweb-{name}-{run.code.hex[:8]}.zip"
    )
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, no-store"
    return response
