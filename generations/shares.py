"""Share links: making them (from a board or a task page), a member's list with revoke, and the
shared page a link opens for anyone, with its media.

Making and revoking need a signed-in member, and start from what that member may see. The
shared page and its media need no login: the token in the address is the only credential. So
every shared view starts from the token (bounded in length before the database hears of it),
checks the link is live and that its board is still one its creator may see, and shows only
tasks the creator may see *now*. Anything else (an unknown, revoked or expired token, a board
or result that is gone, a task the link does not share) gets the same 404 page, which gives no
hint which it was.

The shared page is for people outside the team: it sets no cookie (it is a standalone document
without the site's CSRF token or session), asks search engines not to index it, and sends no
referrer, so the token does not leak to wherever a visitor goes next.
"""

from __future__ import annotations

import functools
import re
from datetime import timedelta
from uuid import UUID

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_not_required
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Exists, F, OuterRef, QuerySet
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import (
    require_GET,
    require_http_methods,
    require_POST,
    require_safe,
)

from generations import views
from generations.models import Result, Task
from generations.models.boards import Board, BoardItem
from generations.models.shares import (
    MAX_LIVE_LINKS_PER_MEMBER,
    SHARE_DAYS_DEFAULT,
    SHARE_DAYS_MAX,
    ShareLink,
)

# Bounds (RELIABILITY): results on one shared page, and links on one page of a member's list.
SHARED_PAGE_SIZE = 24
LINKS_PAGE_SIZE = 50
# Tokens are what secrets.token_urlsafe makes, no longer than the column; anything else is
# refused before a lookup.
TOKEN_CHARS = ShareLink._meta.get_field("token").max_length
TOKEN_SHAPE = re.compile(rf"[A-Za-z0-9_-]{{1,{TOKEN_CHARS}}}")
# The shared page's media may stay in a visitor's browser a little while (a grid of posters is
# fetched once), but not so long that a revoked link's files linger there for hours.
SHARED_MEDIA_CACHE = "private, max-age=600"


# --- Making links (members) ---------------------------------------------------------------------


class ShareForm(forms.Form):
    include_prompts = forms.BooleanField(
        required=False, label="Include prompts", help_text="Show each result's prompt."
    )
    days = forms.IntegerField(
        min_value=1,
        max_value=SHARE_DAYS_MAX,
        initial=SHARE_DAYS_DEFAULT,
        label="Expires after (days)",
        error_messages={
            "min_value": "A link lasts at least 1 day.",
            "max_value": f"A link lasts at most {SHARE_DAYS_MAX} days.",
            "required": "Enter how many days the link lasts.",
            "invalid": "Enter a whole number of days, like 7.",
        },
    )


class TooManyLinks(Exception):
    """A member already holds MAX_LIVE_LINKS_PER_MEMBER live links; the message says so."""


def make_link(
    user, *, board: Board | None = None, task: Task | None = None, **options
) -> ShareLink:
    """A new live link of `user`'s, unless they already hold MAX_LIVE_LINKS_PER_MEMBER.

    The member's row is locked while counting, so two quick submits cannot both pass the bound.
    """
    with transaction.atomic():
        get_user_model().objects.select_for_update().filter(pk=user.pk).first()
        if ShareLink.objects.filter(created_by=user).live().count() >= MAX_LIVE_LINKS_PER_MEMBER:
            raise TooManyLinks(
                f"You already have {MAX_LIVE_LINKS_PER_MEMBER} live share links; revoke some "
                "you no longer need first."
            )
        return ShareLink.objects.create(
            created_by=user,
            board=board,
            task=task,
            include_prompts=options["include_prompts"],
            expires_at=timezone.now() + timedelta(days=options["days"]),
        )


def _share(request: HttpRequest, context: dict, **target) -> HttpResponse:
    """The share form for `target` (a board or a task): shown on GET, a new link on POST."""
    form = ShareForm(request.POST if request.method == "POST" else None)
    if form.is_valid():
        try:
            link = make_link(request.user, **target, **form.cleaned_data)
        except TooManyLinks as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, "Your share link is ready: copy its address below.")
            return redirect(f"{reverse('generations-shares')}?new={link.pk}")
    return render(request, "shares/share_new.html", {**context, **target, "share_form": form})


@require_http_methods(["GET", "POST"])
def share_board(request: HttpRequest, code: UUID) -> HttpResponse:
    board = get_object_or_404(Board.objects.visible_to(request.user), code=code)
    return _share(request, {"shared_name": board.name}, board=board)


def _shareable_tasks(user) -> QuerySet[Task]:
    """Tasks a member may share on their own: finished ones they may see, with a stored file."""
    return Task.objects.visible_to(user).filter(
        Exists(Result.objects.filter(task=OuterRef("pk"))), state=Task.State.SUCCEEDED
    )


@require_http_methods(["GET", "POST"])
def share_task(request: HttpRequest, code: UUID) -> HttpResponse:
    task = get_object_or_404(_shareable_tasks(request.user), code=code)
    label = task.spec.label if task.spec else task.model
    return _share(request, {"shared_name": f"{label} result"}, task=task)


# --- A member's links ---------------------------------------------------------------------------


def share_address(request: HttpRequest, link: ShareLink) -> str:
    """The full address of a link on this site, as the member reached it."""
    return request.build_absolute_uri(reverse("generations-shared", args=[link.token]))


@require_GET
def share_list(request: HttpRequest) -> HttpResponse:
    links = ShareLink.objects.filter(created_by=request.user).select_related("board", "task")
    page = Paginator(links, LINKS_PAGE_SIZE).get_page(request.GET.get("page"))
    rows = list(page.object_list)
    for link in rows:
        link.address = share_address(request, link) if link.status == "active" else ""
    new = request.GET.get("new", "")
    return render(
        request,
        "shares/share_list.html",
        {"page": page, "links": rows, "new": int(new) if new.isdigit() else None},
    )


@require_POST
def share_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    link = get_object_or_404(ShareLink.objects.filter(created_by=request.user), pk=pk)
    if link.revoke():
        messages.success(request, "The link is revoked: it now answers “not found”.")
    else:
        messages.info(request, "That link was already revoked.")
    return redirect("generations-shares")


# --- The shared page and its media (no login) ---------------------------------------------------


def _shared_view(view):
    """No login, GET or HEAD only, the same 404 page for every refusal, and headers that keep
    the page out of search engines, referrers and shared caches."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponseBase:
        try:
            response = view(request, *args, **kwargs)
        except Http404:
            response = render(request, "shares/gone.html", status=404)
        response["X-Robots-Tag"] = "noindex, nofollow"
        response["Referrer-Policy"] = "no-referrer"
        if not response.has_header("Cache-Control"):
            response["Cache-Control"] = "private, no-store"
        return response

    return login_not_required(require_safe(wrapper))


def live_link(token: str) -> ShareLink:
    """The live link with exactly this token whose board its creator may still see, or 404."""
    if not TOKEN_SHAPE.fullmatch(token):
        raise Http404("No such link.")
    link = (
        ShareLink.objects.live()
        .select_related("board", "task", "created_by")
        .filter(token=token)
        .first()
    )
    if link is None:
        raise Http404("No such link.")
    if (
        link.board_id
        and not Board.objects.visible_to(link.created_by).filter(pk=link.board_id).exists()
    ):
        raise Http404("No such link.")
    return link


def shared_tasks(link: ShareLink) -> QuerySet[Task]:
    """What the link shares, as its creator may see it now: finished, not deleted."""
    tasks = Task.objects.visible_to(link.created_by).filter(state=Task.State.SUCCEEDED)
    if link.board_id:
        return tasks.filter(board_items__board_id=link.board_id)
    return tasks.filter(pk=link.task_id)


def _count_view(link: ShareLink) -> None:
    # One UPDATE per page, never a read-modify-write: concurrent visitors all count.
    ShareLink.objects.filter(pk=link.pk).update(views=F("views") + 1, last_viewed_at=timezone.now())


def _before(value: str) -> int | None:
    """The cursor of a shared board's page: the last entry id shown, or None when it is not
    one we could have made."""
    if value.isdigit() and len(value) <= 19 and 0 < int(value) < 2**63:
        return int(value)
    return None


@_shared_view
def shared(request: HttpRequest, token: str) -> HttpResponse:
    link = live_link(token)
    context = {"link": link, "token": token}
    if link.task_id:
        task = shared_tasks(link).prefetch_related("results").first()
        if task is None or not task.results.all():
            raise Http404("No such link.")
        context["entries"] = [task]
    else:
        items = (
            BoardItem.objects.filter(board_id=link.board_id, task__in=shared_tasks(link))
            .filter(Exists(Result.objects.filter(task=OuterRef("task"))))
            .select_related("task")
            .prefetch_related("task__results")
            .order_by("-id")
        )
        before = _before(request.GET.get("before", ""))
        if before:
            items = items.filter(id__lt=before)
        page = list(items[: SHARED_PAGE_SIZE + 1])
        more = len(page) > SHARED_PAGE_SIZE
        page = page[:SHARED_PAGE_SIZE]
        context.update(
            entries=[item.task for item in page],
            board=link.board,
            older=page[-1].id if more else None,
            paged=bool(before),
        )
    _count_view(link)
    return render(request, "shares/shared.html", context)


def _shared_result(token: str, code: UUID, position: int) -> Result:
    link = live_link(token)
    return get_object_or_404(
        Result.objects.filter(task__in=shared_tasks(link)), task__code=code, position=position
    )


@_shared_view
def shared_file(request: HttpRequest, token: str, code: UUID, position: int) -> HttpResponseBase:
    result = _shared_result(token, code, position)
    if settings.S3_BUCKET:
        return views.signed_redirect(result.file, content_type=result.content_type)
    response = FileResponse(views._open(result.file), content_type=result.content_type)
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = SHARED_MEDIA_CACHE
    return response


@_shared_view
def shared_poster(request: HttpRequest, token: str, code: UUID, position: int) -> HttpResponseBase:
    result = _shared_result(token, code, position)
    if not result.poster:
        raise Http404("This result has no poster.")
    if settings.S3_BUCKET:
        return views.signed_redirect(result.poster, content_type="image/jpeg")
    response = FileResponse(views._open(result.poster), content_type="image/jpeg")
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = SHARED_MEDIA_CACHE
    return response
