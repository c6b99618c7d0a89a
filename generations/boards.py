"""Boards: the pages that list, show and edit them, and the control that puts results on them.

Every lookup starts from Board.objects.visible_to(member): a member's own boards and the team's.
Another member's private board is not in that set, so each URL that names it answers 404. The
boards a member may see are also those they may edit (BoardQuerySet.editable_by), with one
exception kept here: only a board's owner changes who can see it, since a teammate making a team
board private would hand the whole board to its owner alone without the owner asking.

A board's page shows the entries whose task the viewer may see (Task.visible_to) and that
succeeded, newest added first, in the gallery's grid with the gallery's filters. It pages with a
cursor on BoardItem's id, and reads a page through the index `board_item_newest` (board, -id):
the page's keys come from one statement that stops after a page of entries, the tiles from the
gallery's own (gallery.tiles, gallery.render_tiles), so a page costs the same few statements
whether the board holds ten results or twenty thousand.

The "Boards" control on a result opens a small panel listing the boards the member may edit,
each with a button that adds or removes the result (the form says which, so a repeated click
never undoes the first), and a short form that makes a new board with the result on it. With
htmx the panel loads into the page and each button swaps it; without JavaScript the panel is a
page of its own and each button a plain POST that comes back to it.
"""

from __future__ import annotations

from uuid import UUID

from django import forms
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from generations.cards import link_maker
from generations.gallery import (
    PAGE_SIZE,
    GalleryFilters,
    apply_filters,
    filter_fields,
    member_choices,
    render_tiles,
    tiles,
)
from generations.models import Favourite, Result, Task, Visibility
from generations.models.boards import (
    MAX_BOARDS_PER_MEMBER,
    MAX_ITEMS_PER_BOARD,
    Board,
    BoardItem,
)

# The edit form offers the newest entries as covers: a select of twenty thousand would be
# unusable and costly to render.
COVER_CHOICES = 60
# The panel lists the boards used most recently first, at most this many.
PANEL_BOARDS = 50
KEEP_COVER = "keep"
CURSOR_ERROR = (
    "That link to older results is broken or out of date; here are the newest results instead."
)


# --- queries ---------------------------------------------------------------------------------


def visible_entries(user) -> QuerySet[BoardItem]:
    """Board entries whose result `user` may look at: succeeded, not deleted, and their own or
    shared with the team. One join to the task, so it can lead an index walk on the entries."""
    return BoardItem.objects.filter(
        Q(task__user=user) | Q(task__visibility=Visibility.TEAM),
        task__state=Task.State.SUCCEEDED,
        task__deleted_at__isnull=True,
    )


def addable_tasks(user) -> QuerySet[Task]:
    """The results a member may put on a board: finished ones they may see."""
    return Task.objects.visible_to(user).filter(state=Task.State.SUCCEEDED)


def with_covers(boards: QuerySet[Board], user, *, counted: bool = True) -> QuerySet[Board]:
    """`boards` with `cover_task_id`: the chosen cover when it is still on the board and `user`
    may see it, else the newest entry they may see (None for a board that shows them nothing);
    and, when `counted`, `shown_count`: how many of its entries they may see. Subqueries, not
    a join and GROUP BY, so each board costs a walk of its own entries at most."""
    entries = visible_entries(user).filter(board=OuterRef("pk"))
    chosen = entries.filter(task=OuterRef("cover_id")).values("task")[:1]
    newest = entries.order_by("-id").values("task")[:1]
    boards = boards.annotate(cover_task_id=Coalesce(Subquery(chosen), Subquery(newest)))
    if counted:
        count = entries.order_by().values("board").annotate(n=Count("pk")).values("n")
        boards = boards.annotate(shown_count=Coalesce(Subquery(count), 0))
    return boards


def attach_covers(boards: list[Board]) -> None:
    """Set `cover` links on each board from its `cover_task_id` (see with_covers): its first
    result's poster or image, loaded with one query for all of them."""
    wanted = [board.cover_task_id for board in boards if board.cover_task_id]
    results = {
        result.task_id: result
        for result in Result.objects.filter(task__in=wanted, position=0)
        .select_related("task")
        .only("task__code", "task__prompt", "position", "poster", "content_type")
        .order_by()
    }
    file_url = link_maker("generations-file", UUID, int)
    poster_url = link_maker("generations-poster", UUID, int)
    for board in boards:
        result = results.get(board.cover_task_id)
        board.cover_image = ""
        board.cover_alt = ""
        if result is None:
            continue
        if result.poster:
            board.cover_image = poster_url(result.task.code, result.position)
        elif not result.is_video:
            board.cover_image = file_url(result.task.code, result.position)
        board.cover_alt = result.task.prompt[:100]


def board_tasks(board: Board, user) -> QuerySet[Task]:
    """The board's results `user` may see, newest added first, with what the gallery's filters
    work on (`shown_at`, `is_favourite`) and the entry's id as `item_id`."""
    return (
        addable_tasks(user)
        # One filter() call, so that the annotation below reads the same joined entry.
        .filter(board_items__board=board)
        .annotate(
            item_id=F("board_items__id"),
            shown_at=Coalesce("finished_at", "created_at"),
            is_favourite=Exists(Favourite.objects.filter(user=user, task=OuterRef("pk"))),
        )
        .order_by("-item_id")
    )


def board_page(board: Board, user, filters: dict, after: int | None) -> QuerySet[Task]:
    """The keys of a page's tasks, one more than a page: filtered, then ordered by entry again
    (a search orders by date on PostgreSQL for the gallery's sake; a board lists by entry),
    from the entry `after` on."""
    tasks = apply_filters(board_tasks(board, user), filters).order_by("-item_id")
    if after is not None:
        tasks = tasks.filter(item_id__lt=after)
    return tasks.values("pk")[: PAGE_SIZE + 1]


def page_tiles(board: Board, user, keys: QuerySet[Task]) -> list[Task]:
    """The tasks of `keys` as gallery.tiles loads them, newest added first, each with its
    entry's id as `item_id`: one statement, the keys picked inside it."""
    entry = BoardItem.objects.filter(board=board, task=OuterRef("pk")).values("id")[:1]
    return list(tiles(keys, user).annotate(item_id=Subquery(entry)).order_by("-item_id"))


def decode_cursor(value: str) -> int | None:
    """The entry id a board's cursor names, or None when it is not one we could have made."""
    if not value.isascii() or not value.isdigit() or len(value) > 19:
        return None
    number = int(value)
    return number if 0 < number < 2**63 else None


def panel_boards(user, task: Task) -> list[Board]:
    """The boards `user` may edit, those holding `task` first, then the most recently changed,
    each with `has_it`."""
    holding = BoardItem.objects.filter(board=OuterRef("pk"), task=task)
    return list(
        Board.objects.editable_by(user)
        .annotate(has_it=Exists(holding))
        .order_by("-has_it", "-updated_at", "-id")[:PANEL_BOARDS]
    )


# --- actions ---------------------------------------------------------------------------------


class BoundReached(Exception):
    """A bound on boards or entries would be passed; the message says which."""


def create_board(user, *, name: str, description: str = "", visibility: str) -> Board:
    """A new board of `user`'s. Their row is locked while counting, so that two forms sent at
    once cannot both pass MAX_BOARDS_PER_MEMBER."""
    with transaction.atomic():
        get_user_model().objects.select_for_update().filter(pk=user.pk).first()
        if Board.objects.filter(owner=user).count() >= MAX_BOARDS_PER_MEMBER:
            raise BoundReached(
                f"You have {MAX_BOARDS_PER_MEMBER} boards, the most one member may have; "
                "delete one you no longer need first."
            )
        return Board.objects.create(
            owner=user, name=name, description=description, visibility=visibility
        )


def add_to_board(board: Board, task: Task, user) -> bool:
    """Put `task` on `board`; False when it was there already. The board's row is locked while
    counting, so concurrent additions cannot pass MAX_ITEMS_PER_BOARD."""
    with transaction.atomic():
        Board.objects.select_for_update().filter(pk=board.pk).first()
        if BoardItem.objects.filter(board=board, task=task).exists():
            return False
        if BoardItem.objects.filter(board=board).count() >= MAX_ITEMS_PER_BOARD:
            raise BoundReached(
                f"“{board.name}” holds {MAX_ITEMS_PER_BOARD:,} results, the most a board may "
                "hold; take some off or start another board."
            )
        BoardItem.objects.create(board=board, task=task, added_by=user)
        # Recently used boards come first in the panel.
        Board.objects.filter(pk=board.pk).update(updated_at=timezone.now())
    return True


def remove_from_board(board: Board, task: Task) -> bool:
    """Take `task` off `board` (never deleting it); False when it was not there. A board whose
    chosen cover goes falls back to its newest entry."""
    with transaction.atomic():
        removed, _ = BoardItem.objects.filter(board=board, task=task).delete()
        Board.objects.filter(pk=board.pk, cover=task).update(cover=None)
    return bool(removed)


# --- forms -----------------------------------------------------------------------------------


class NewBoardForm(forms.ModelForm):
    class Meta:
        model = Board
        fields = ["name", "description", "visibility"]
        widgets = {"description": forms.Textarea(attrs={"rows": 2})}
        labels = {"visibility": "Who can see it"}
        help_texts = {"visibility": "Team boards are seen and edited by every member."}


class QuickBoardForm(forms.ModelForm):
    """The panel's "New board…": a name and who can see it."""

    class Meta:
        model = Board
        fields = ["name", "visibility"]
        labels = {"name": "New board", "visibility": "Who can see it"}


class BoardEditForm(forms.ModelForm):
    """Name, description and cover for whoever may edit the board; who can see it for its
    owner only. The cover is chosen among the newest entries the editor may see; a cover they
    cannot see (a teammate's private result) is kept unless they choose another."""

    cover_choice = forms.ChoiceField(label="Cover", required=False)

    class Meta:
        model = Board
        fields = ["name", "description", "visibility"]
        widgets = {"description": forms.Textarea(attrs={"rows": 4})}
        labels = {"visibility": "Who can see it"}

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        board = self.instance
        if board.owner_id != user.pk:
            del self.fields["visibility"]
        newest = list(
            board_tasks(board, user)
            .select_related(None)
            .only("code", "model", "prompt")[:COVER_CHOICES]
        )
        self.covers = {str(task.code): task for task in newest}
        if board.cover_id and board.cover_id not in {task.pk for task in newest}:
            current = board_tasks(board, user).filter(pk=board.cover_id).first()
            if current is not None:
                self.covers[str(current.code)] = current
        choices = [("", "The newest result (automatic)")]
        cover_code = next(
            (code for code, task in self.covers.items() if task.pk == board.cover_id), ""
        )
        if board.cover_id and not cover_code:
            choices.append((KEEP_COVER, "Keep the current cover"))
            cover_code = KEEP_COVER
        for code, task in self.covers.items():
            label = task.spec.label if task.spec else task.model
            prompt = " ".join(task.prompt.split())
            choices.append((code, f"{label}: {prompt[:60]}{'…' if len(prompt) > 60 else ''}"))
        field = self.fields["cover_choice"]
        field.choices = choices
        field.initial = cover_code
        field.help_text = (
            f"Choose among the {COVER_CHOICES} results added last, or let the board show its "
            "newest."
        )

    def save(self, commit: bool = True) -> Board:
        choice = self.cleaned_data.get("cover_choice", "")
        if choice != KEEP_COVER:
            self.instance.cover = self.covers[choice] if choice else None
        return super().save(commit)


# --- helpers for the views -------------------------------------------------------------------


def _visible_board(request: HttpRequest, code: UUID) -> Board:
    return get_object_or_404(
        Board.objects.visible_to(request.user).select_related("owner"), code=code
    )


def _editable_board(request: HttpRequest, code: UUID) -> Board:
    return get_object_or_404(
        Board.objects.editable_by(request.user).select_related("owner"), code=code
    )


def _safe_next(request: HttpRequest, value: str) -> str:
    """`value` when it is a page of this site, else ""."""
    if value and url_has_allowed_host_and_scheme(
        value, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return value
    return ""


def _panel_url(task: Task, next_url: str) -> str:
    url = reverse("generations-board-panel", kwargs={"task": task.code})
    return f"{url}?{urlencode({'next': next_url})}" if next_url else url


def _render_panel(
    request: HttpRequest,
    task: Task,
    *,
    next_url: str,
    quick_form=None,
    note: str = "",
) -> HttpResponse:
    context = {
        "task": task,
        "note": note,
        "boards": panel_boards(request.user, task),
        "quick_form": quick_form or QuickBoardForm(),
        "next": next_url,
        "panel_url": _panel_url(task, next_url),
    }
    if not request.htmx:
        return render(request, "boards/board_panel.html", context)
    response = render(request, "boards/_board_panel.html", context)
    # The control opens the panel through a boosted link, which would otherwise put the
    # panel's address in the browser's history in place of the page it opened on.
    response["HX-Push-Url"] = "false"
    return response


def _page_url(request: HttpRequest, board: Board, after: int | None) -> str:
    query = request.GET.copy()
    query.pop("cursor", None)
    if after is not None:
        query["cursor"] = str(after)
    encoded = query.urlencode()
    return _board_url(board) + (f"?{encoded}" if encoded else "")


def _board_url(board: Board) -> str:
    return reverse("generations-board", kwargs={"code": board.code})


# --- the pages -------------------------------------------------------------------------------


@require_GET
def board_list(request: HttpRequest) -> HttpResponse:
    """The member's boards and the team's, and the form to make one."""
    return _render_list(request, NewBoardForm())


def _render_list(request: HttpRequest, form: NewBoardForm) -> HttpResponse:
    boards = list(
        with_covers(Board.objects.visible_to(request.user), request.user)
        .select_related("owner")
        .order_by("name", "id")
    )
    attach_covers(boards)
    own_count = sum(board.owner_id == request.user.pk for board in boards)
    return render(
        request,
        "boards/board_list.html",
        {
            "mine": [b for b in boards if b.owner_id == request.user.pk],
            "team": [b for b in boards if b.owner_id != request.user.pk],
            "form": form,
            "can_make": own_count < MAX_BOARDS_PER_MEMBER,
            "max_boards": MAX_BOARDS_PER_MEMBER,
        },
    )


@require_POST
def board_new(request: HttpRequest) -> HttpResponse:
    form = NewBoardForm(request.POST)
    if not form.is_valid():
        return _render_list(request, form)
    try:
        board = create_board(request.user, **form.cleaned_data)
    except BoundReached as bound:
        form.add_error(None, str(bound))
        return _render_list(request, form)
    messages.success(request, f"Made the board “{board.name}”.")
    return redirect("generations-board", code=board.code)


@require_GET
def board_detail(request: HttpRequest, code: UUID) -> HttpResponse:
    """A board's results in the gallery's grid, newest added first, with its filters."""
    board = get_object_or_404(
        with_covers(
            Board.objects.visible_to(request.user), request.user, counted=False
        ).select_related("owner"),
        code=code,
    )
    form = GalleryFilters(request.GET, members=member_choices(request.GET.get("member", "")))
    form.is_valid()  # invalid fields are reported on the form and left out of cleaned_data

    cursor_error = ""
    after = None
    if request.GET.get("cursor"):
        after = decode_cursor(request.GET["cursor"])
        if after is None:
            cursor_error = CURSOR_ERROR

    # As in the gallery, the page's keys are picked from narrow rows inside the statement
    # that loads the tiles.
    items = page_tiles(
        board, request.user, board_page(board, request.user, form.cleaned_data, after)
    )
    next_url = ""
    if len(items) > PAGE_SIZE:
        items = items[:PAGE_SIZE]
        next_url = _page_url(request, board, items[-1].item_id)
    context = {
        "tiles": render_tiles(items, runs=bool(form.cleaned_data.get("runs"))),
        "next_url": next_url,
    }
    # Infinite scroll asks for the next items only; a boosted filter form wants the whole page.
    if request.htmx and not request.htmx.boosted:
        return render(request, "generations/_gallery_items.html", context)
    attach_covers([board])
    context.update(
        board=board,
        is_owner=board.owner_id == request.user.pk,
        form=form,
        filter_fields=filter_fields(form),
        cursor=after,
        cursor_error=cursor_error,
        newest_url=_page_url(request, board, None),
        filtered=any(form.data.get(name) for name in form.fields),
        filters_set=sum(bool(form.data.get(name)) for name in form.fields),
    )
    return render(request, "boards/board_detail.html", context)


@require_http_methods(["GET", "POST"])
def board_edit(request: HttpRequest, code: UUID) -> HttpResponse:
    board = _editable_board(request, code)
    if request.method == "POST":
        form = BoardEditForm(request.POST, instance=board, user=request.user)
        if form.is_valid():
            form.save()
            messages.success(request, "Saved the board.")
            return redirect("generations-board", code=board.code)
    else:
        form = BoardEditForm(instance=board, user=request.user)
    return render(request, "boards/board_edit.html", {"board": board, "form": form})


@require_http_methods(["GET", "POST"])
def board_delete(request: HttpRequest, code: UUID) -> HttpResponse:
    """Delete a board after a confirmation page; its results stay where they were."""
    board = _editable_board(request, code)
    if request.method == "POST":
        name = board.name
        board.delete()
        messages.success(request, f"Deleted the board “{name}”. Its results are still there.")
        return redirect("generations-boards")
    shown = visible_entries(request.user).filter(board=board).count()
    return render(request, "boards/board_delete.html", {"board": board, "shown": shown})


# --- the control on a result -----------------------------------------------------------------


@require_GET
def board_panel(request: HttpRequest, task: UUID) -> HttpResponse:
    """The boards the member may edit, each with a button that adds or removes this result."""
    result = get_object_or_404(addable_tasks(request.user), code=task)
    return _render_panel(request, result, next_url=_safe_next(request, request.GET.get("next", "")))


def _after_change(request: HttpRequest, task: Task, note: str, error: bool = False) -> HttpResponse:
    """htmx gets the panel again; a plain form goes back to the panel page, which leads on to
    where the member came from."""
    next_url = _safe_next(request, request.POST.get("next", ""))
    if request.htmx:
        return _render_panel(request, task, next_url=next_url, note=note)
    (messages.error if error else messages.success)(request, note)
    return redirect(_panel_url(task, next_url))


@require_POST
def board_toggle(request: HttpRequest, code: UUID, task: UUID) -> HttpResponse:
    """Put the result on the board (`on=1`) or take it off (`on=0`). The form says which, so
    a second click sent before the first answer arrives does not undo it."""
    board = _editable_board(request, code)
    result = get_object_or_404(addable_tasks(request.user), code=task)
    if request.POST.get("on") == "1":
        try:
            add_to_board(board, result, request.user)
        except BoundReached as bound:
            return _after_change(request, result, str(bound), error=True)
        return _after_change(request, result, f"Added to “{board.name}”.")
    remove_from_board(board, result)
    return _after_change(request, result, f"Taken off “{board.name}”.")


@require_POST
def board_panel_new(request: HttpRequest, task: UUID) -> HttpResponse:
    """The panel's "New board…": make a board with this result on it."""
    result = get_object_or_404(addable_tasks(request.user), code=task)
    form = QuickBoardForm(request.POST)
    next_url = _safe_next(request, request.POST.get("next", ""))
    if form.is_valid():
        try:
            board = create_board(request.user, **form.cleaned_data)
            add_to_board(board, result, request.user)
        except BoundReached as bound:
            form.add_error(None, str(bound))
        else:
            note = f"Made the board “{board.name}” with this result on it."
            if request.htmx:
                return _render_panel(request, result, next_url=next_url, note=note)
            messages.success(request, note)
            return redirect(_panel_url(result, next_url))
    return _render_panel(request, result, next_url=next_url, quick_form=form)
