"""Member pages for tasks (list, detail, cancel, retry, result files) and the gateway webhook.

Every lookup starts from the tasks the member may see (their own and teammates' team-visible
ones), so another member's private task answers 404. Result files are never served from a
public media path: from local storage Django streams them with `nosniff`; from S3-compatible
storage it redirects to a link signed for a few minutes, after the same check.
"""

from __future__ import annotations

import hmac
import json
import logging
from urllib.parse import urlencode
from uuid import UUID, uuid4

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import content_disposition_header
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from generations import providers
from generations.cards import keep_ended_cards, run_task_counts, with_timing
from generations.engine import callback_token_hash, note_callback
from generations.gallery import SEARCH_MAX_LENGTH, SearchField, matches_newest_first
from generations.models import Result, Task
from generations.services import (
    CANCELABLE_STATES,
    SubmitRefused,
    cancel_by_member,
    delete_task,
    retry_order,
    submit_order,
)
from omniweb import ratelimit
from omniweb.clientip import client_address

logger = logging.getLogger("omniweb.engine")


def own_task(request: HttpRequest, code: UUID) -> Task:
    """A task the member may change: their own, not deleted. Anything else is a 404."""
    return get_object_or_404(Task.objects.owned_by(request.user).select_related("key"), code=code)


TASK_FILTERS = {
    "state": dict(Task.State.choices),
    "provider": dict(providers.choices()),
    "kind": {"video": "Video", "image": "Image"},
}


def task_list(request: HttpRequest) -> HttpResponse:
    """My tasks: every task of the member as a card, filtered, searched (as in the gallery),
    newest first."""
    # A card never shows the gateway's raw answers (up to 20,000 characters of JSON each).
    tasks = run_task_counts(
        Task.objects.owned_by(request.user)
        .defer("last_response", "gateway_results")
        .prefetch_related("results")
    )
    chosen, problems = {}, []
    for name, allowed in TASK_FILTERS.items():
        value = request.GET.get(name, "")
        if not value:
            continue
        if value in allowed:
            chosen[name] = value
        else:
            problems.append(f"There is no {name} {value!r}; that filter was ignored.")
    tasks = tasks.filter(**chosen)
    search = request.GET.get("q", "")
    try:
        words = SearchField().clean(search)
    except ValidationError as error:
        words = []
        problems.extend(error.messages)
    if words:
        tasks = tasks.search(words)
    # One card per run: the member's starred task of each run, else its first, with a link
    # to the rest on the run's page.
    by_run = request.GET.get("by") == "run"
    if by_run:
        tasks = tasks.one_per_run()
    if words:
        tasks = matches_newest_first(tasks, "created_at")
    page = Paginator(tasks, 24).get_page(request.GET.get("page"))
    cards = with_timing(page.object_list)
    keep_ended_cards(cards)
    # Page links keep the filters and the search that applied.
    kept = {**chosen, "q": search} if words else dict(chosen)
    if by_run:
        kept["by"] = "run"
    query = urlencode(kept)
    return render(
        request,
        "generations/task_list.html",
        {
            "page": page,
            "cards": cards,
            "filters": TASK_FILTERS,
            "chosen": chosen,
            "search": search,
            "searched": bool(words),
            "search_max_length": SEARCH_MAX_LENGTH,
            "problems": problems,
            "query": query,
            "watching": any(t.is_active for t in cards),
            "by_run": by_run,
        },
    )


@require_GET
def task_cards(request: HttpRequest) -> HttpResponse:
    """The poller's one request: fresh cards for the active tasks on the page. A task page
    also sends its task as `summary` and gets its whole status block back, result included."""
    codes: dict[str, list[UUID]] = {"watch": [], "summary": []}
    for name, found in codes.items():
        for value in request.GET.getlist(name)[:100]:
            try:
                found.append(UUID(value))
            except ValueError:
                continue  # a tampered value: skip it, answer for the rest
    tasks = with_timing(
        run_task_counts(Task.objects.visible_to(request.user))
        .filter(code__in=codes["watch"])
        .prefetch_related("results")
    )
    return render(
        request,
        "generations/_card_updates.html",
        {
            "tasks": tasks,
            "summaries": set(codes["summary"]),
            "watching": any(t.is_active for t in tasks),
        },
    )


def task_detail(request: HttpRequest, code: UUID) -> HttpResponse:
    task = get_object_or_404(
        run_task_counts(Task.objects.visible_to(request.user))
        .select_related("key", "user")
        .prefetch_related("results"),
        code=code,
    )
    mine = task.user_id == request.user.pk
    (card,) = with_timing([task])
    return render(
        request,
        "generations/task_detail.html",
        {
            "task": card,
            "mine": mine,
            "results": task.results.all(),
            "references": task.references.order_by("id"),
            "events": task.events.all(),
            "entries": task.ledger_entries.order_by("created_at", "pk") if mine else [],
            "can_cancel": mine and task.state in CANCELABLE_STATES,
            "can_retry": mine and task.state in (Task.State.FAILED, Task.State.CANCELED),
            # A fresh token each time the page is shown: one click, one new task.
            "retry_token": uuid4(),
            "can_delete": mine and not task.is_active,
            "visibilities": Task.Visibility.choices,
            "watching": task.is_active,
        },
    )


@require_POST
def task_cancel(request: HttpRequest, code: UUID) -> HttpResponse:
    """Cancel and refund. A card's htmx form gets the card back, showing the outcome; a plain
    form gets the task page with a message."""
    task = own_task(request, code)
    canceled = cancel_by_member(task)
    refused = ""
    if not canceled:
        task.refresh_from_db(fields=["state"])
        state = task.get_state_display().lower()
        refused = f"This task is {state}; it cannot be canceled any more."
    if request.htmx:
        (card,) = with_timing([Task.objects.prefetch_related("results").get(pk=task.pk)])
        return render(request, "generations/_task_card.html", {"task": card, "notice": refused})
    if canceled:
        messages.success(request, task.message)
    else:
        messages.error(request, refused)
    return redirect("generations-task", code=task.code)


@require_POST
def task_retry(request: HttpRequest, code: UUID) -> HttpResponse:
    """Try again: an order built from the old task, through the one submit path. The button's
    token makes a double click charge once."""
    task = own_task(request, code)
    try:
        token = UUID(request.POST.get("form_token", ""))
    except ValueError:
        messages.error(request, "This button was incomplete; reload the page and try again.")
        return redirect("generations-task", code=task.code)
    try:
        outcome = submit_order(request.user, retry_order(task, token=token))
    except SubmitRefused as exc:
        messages.error(request, str(exc))
        return redirect("generations-task", code=task.code)
    new = outcome.tasks[0]
    if outcome.created:
        messages.success(
            request, f"Submitted again as a new task; {new.credits_charged} credits charged."
        )
    else:
        messages.info(request, "This was already submitted again; nothing more was charged.")
    return redirect("generations-task", code=new.code)


@require_POST
def task_visibility(request: HttpRequest, code: UUID) -> HttpResponse:
    task = own_task(request, code)
    value = request.POST.get("visibility", "")
    if value not in Task.Visibility.values:
        messages.error(request, "Choose team or private.")
    else:
        Task.objects.filter(pk=task.pk).update(visibility=value)
        label = Task.Visibility(value).label
        messages.success(request, f"Visibility changed to {label[0].lower()}{label[1:]}.")
    return redirect("generations-task", code=task.code)


@require_POST
def task_delete(request: HttpRequest, code: UUID) -> HttpResponse:
    task = own_task(request, code)
    if not delete_task(task):
        messages.error(request, "An active task cannot be deleted; cancel it first.")
        return redirect("generations-task", code=task.code)
    messages.success(request, "The task and its files were deleted. Your credits history keeps it.")
    return redirect("generations-tasks")


def _result(request: HttpRequest, code: UUID, position: int) -> Result:
    return get_object_or_404(
        Result.objects.filter(task__in=Task.objects.visible_to(request.user)),
        task__code=code,
        position=position,
    )


def _open(stored) -> object:
    """A stored file, or 404 when storage lost it (a failed disk, a manual clean-up)."""
    try:
        return stored.open("rb")
    except FileNotFoundError:
        logger.warning("event=stored_file_missing name=%s", stored.name)
        raise Http404("This file is no longer stored.") from None


def signed_redirect(
    stored, *, content_type: str, attachment: str | None = None
) -> HttpResponseRedirect:
    """With object storage: a redirect to a link to `stored` signed for S3_URL_SECONDS.

    The bucket stays private; whoever was allowed here gets a link that stops working within
    minutes. The link makes the store answer with our sniffed `content_type` and, for a
    download, an attachment named `attachment`. The redirect itself is never cached, as the
    link in it expires.
    """
    parameters = {"ResponseContentType": content_type}
    if attachment:
        parameters["ResponseContentDisposition"] = content_disposition_header(True, attachment)
    url = stored.storage.url(stored.name, parameters=parameters, expire=settings.S3_URL_SECONDS)
    response = HttpResponseRedirect(url)
    response["Cache-Control"] = "private, no-store"
    return response


def result_file(request: HttpRequest, code: UUID, position: int) -> HttpResponseBase:
    result = _result(request, code, position)
    extension = result.file.name.rsplit(".", 1)[-1]
    filename = f"omniweb-{code}-{position}.{extension}"
    download = "download" in request.GET
    if settings.S3_BUCKET:
        return signed_redirect(
            result.file, content_type=result.content_type, attachment=filename if download else None
        )
    response = FileResponse(
        _open(result.file),
        content_type=result.content_type,
        as_attachment=download,
        filename=filename,
    )
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, max-age=3600"
    return response


def result_poster(request: HttpRequest, code: UUID, position: int) -> HttpResponseBase:
    result = _result(request, code, position)
    if not result.poster:
        raise Http404("This result has no poster.")
    if settings.S3_BUCKET:
        return signed_redirect(result.poster, content_type="image/jpeg")
    response = FileResponse(_open(result.poster), content_type="image/jpeg")
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, max-age=3600"
    return response


def task_reference(request: HttpRequest, code: UUID, position: int) -> HttpResponseBase:
    """The `position`th image a task was sent, for members who may see the task: its page's
    thumbnails and the Create form's carried images. Unlike the gateways' public link, it
    works after the task has ended."""
    task = get_object_or_404(Task.objects.visible_to(request.user), code=code)
    image = task.references.order_by("id")[position : position + 1].first()
    if image is None:
        raise Http404("This task has no such reference image.")
    if settings.S3_BUCKET:
        return signed_redirect(image.file, content_type=image.content_type)
    response = FileResponse(_open(image.file), content_type=image.content_type)
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, max-age=3600"
    return response


def _rate_limited(request: HttpRequest) -> bool:
    """RELIABILITY 32, 33: WEBHOOK_RATE_PER_MINUTE calls per client address (as our trusted
    proxies report it) in each clock minute, shared by every process via the cache. The window
    is fixed: a caller who keeps calling is admitted again when the next minute starts."""
    client = client_address(request)
    calls = ratelimit.hit(f"webhook:{client}", ratelimit.MINUTE)
    if calls == settings.WEBHOOK_RATE_PER_MINUTE + 1:  # the first refusal of the window only
        logger.warning("event=webhook_rate_limited client=%s", client)
    return calls > settings.WEBHOOK_RATE_PER_MINUTE


# A callback is a task's status answer: a few kilobytes. Anything larger is not read.
CALLBACK_MAX_BYTES = 64 * 1024


def _callback_body(request: HttpRequest):
    try:
        if int(request.META.get("CONTENT_LENGTH") or 0) > CALLBACK_MAX_BYTES:
            return None
        return json.loads(request.body[:CALLBACK_MAX_BYTES])
    except ValueError:
        return None


@csrf_exempt  # gateways cannot send our CSRF token; the per-task token is the credential
@login_not_required
@require_POST
def webhook(request: HttpRequest, token: str) -> HttpResponse:
    """A gateway says a task changed. We trust the gateway's status endpoint, not this body:
    the call only makes the next poll immediate, or, for a task whose submit answer was lost,
    offers the task id the body names for the engine to confirm with a status query. Unknown,
    finished or forged tokens answer 404."""
    if _rate_limited(request):
        return HttpResponse("Too many requests.", status=429, content_type="text/plain")
    digest = callback_token_hash(token)
    task = Task.objects.active().filter(callback_token_hash=digest).first()
    if task is None or not hmac.compare_digest(task.callback_token_hash, digest):
        raise Http404("No such task.")
    note_callback(task, _callback_body(request))
    logger.info(
        "event=webhook task=%s gateway=%s client=%s",
        task.pk,
        task.provider,
        client_address(request),
    )
    return HttpResponse(status=204)
