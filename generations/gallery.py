"""The team's shared gallery: a filtered grid of finished results, one result's page, favourites.

The grid pages with a cursor, not page numbers: a cursor names the last item shown (its finish
time and primary key), and the next page is whatever comes strictly after it in the same order,
so results finishing while someone scrolls neither repeat nor push items off a page. A page
costs the same few queries however many results there are: one statement picks the page's keys
from the narrow sorted rows and loads those tasks with their members, and "favourited by me" is
a subquery, not a query per tile. The member filter's choices are one more statement, which
probes each member's newest tasks rather than joining every shared result.

A finished result's tile looks the same to everyone but for the viewer's star, so it is
rendered once and kept (see TILE_CACHE); the star is put in on each request. Only tiles not
kept yet need their cover, which one plain query brings for all of them.

Bad query strings (unknown kind or model, a broken date or cursor, an over-long search) are
reported beside the filter they belong to and ignored; they never turn into an error page.

The search box (here and on My tasks) looks for words, not a phrase: the text is split into
words (runs of letters, digits and combining marks; anything else separates them), and a task
matches when its prompt has every word, in any order, whatever their case.
TaskQuerySet.search says how one word matches on each database.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import unicodedata
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from uuid import UUID

from django import forms
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.core.cache.backends.locmem import LocMemCache
from django.db import connections
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import get_template, render_to_string
from django.urls import get_script_prefix, reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.http import require_GET, require_POST

from generations import providers
from generations.cards import link_maker
from generations.models import Favourite, Result, Run, Task
from generations.providers import Kind, catalog

PAGE_SIZE = 24
# Dates outside this range could overflow when turned into local midnight and back to UTC.
FIRST_DATE = date(1900, 1, 1)
LAST_DATE = date(9998, 12, 31)
TILE_FIELDS = (
    "code",
    "run_id",
    "provider",
    "model",
    "kind",
    "prompt",
    "created_at",
    "finished_at",
    "updated_at",
    "user__username",
    "user__display_name",
)
# Rendered tiles, kept in each process's memory rather than the shared cache: a tile's key
# names everything it shows that can change (see tile_key), so a change makes a new key and
# nothing ever needs invalidating across processes; a deploy, which may change the templates
# or the catalog's labels, starts with none. A tile is about 1 kB.
TILE_CACHE = LocMemCache(
    "omniweb-gallery-tiles", {"TIMEOUT": 24 * 3600, "OPTIONS": {"MAX_ENTRIES": 5000}}
)
# The member filter's choices, kept briefly in each process (see member_choices).
MEMBER_SECONDS = 30
MEMBER_CACHE = LocMemCache("omniweb-gallery-members", {"TIMEOUT": MEMBER_SECONDS})
MEMBER_CACHE_KEY = "members"
# The filter form's rendered fields, by what they show: the values asked for and the member
# list (the models come from the catalog, fixed while a process runs). Rendering a form's
# widgets, a select with every model among them, costs more than the rest of the page; a few
# hundred different filters cover what a team asks for, and the entries are a few kB each.
FILTER_CACHE = LocMemCache(
    "omniweb-gallery-filters", {"TIMEOUT": 3600, "OPTIONS": {"MAX_ENTRIES": 500}}
)
# Where a kept tile takes the viewer's star. Marked safe, so it cannot come from a prompt:
# anything a member typed is escaped.
STAR_SLOT = mark_safe("<!--favourite-->")
# Where a tile shown for a whole run gets the link to the rest of the run.
RUN_SLOT = mark_safe("<!--run-->")
DATE_FORMAT_ERROR = "Write the date as YYYY-MM-DD, e.g. 2025-03-31; this filter was ignored."
# A search is bounded so that one request cannot ask the database for an unbounded AND.
SEARCH_MAX_LENGTH = 200
SEARCH_MAX_WORDS = 10


def search_words(text: str) -> list[str]:
    """The words of a search, lower-cased, each once, in the order typed. A word is a run of
    letters, digits and combining marks (so accented and non-Latin words stay whole);
    punctuation, symbols and spaces only separate words: "sci-fi" is "sci" and "fi"."""
    spaced = "".join(
        char if unicodedata.category(char)[0] in "LMN" else " " for char in text.lower()
    )
    return list(dict.fromkeys(spaced.split()))


class SearchField(forms.CharField):
    """The prompt search box: its cleaned value is the list of words to look for (empty when
    nothing searchable was typed)."""

    def __init__(self) -> None:
        super().__init__(
            required=False,
            max_length=SEARCH_MAX_LENGTH,
            label="Prompt contains",
            help_text="Every word, in any order.",
            widget=forms.TextInput(attrs={"type": "search"}),
            error_messages={
                "max_length": f"Search for at most {SEARCH_MAX_LENGTH} characters; "
                "the search was ignored.",
            },
        )

    def clean(self, value) -> list[str]:
        words = search_words(super().clean(value))
        if len(words) > SEARCH_MAX_WORDS:
            raise forms.ValidationError(
                f"Search for at most {SEARCH_MAX_WORDS} words (this has {len(words)}); "
                "the search was ignored.",
                code="too_many_words",
            )
        return words


def matches_newest_first(tasks: QuerySet[Task], moment: str) -> QuerySet[Task]:
    """The tasks a search matched, newest first by `moment` (a date-time field or annotation),
    then by key, as the page showing them orders them anyway.

    On PostgreSQL the order is written so that no index provides it. Otherwise, expecting
    plenty of matches, the planner may walk a newest-first index and work out the words of
    every prompt it passes until a page is full: when the words are rarer than it thinks (a
    member's own tasks, a member or model filter: words are not spread evenly) that reads
    every row, about a second for 100,000 results. Without an index for the order it takes
    the matches from the prompt index and sorts them, so a search costs what its matches cost.
    SQLite reads every prompt anyway and does best stopping once a page is full, so there the
    order stays as it was.
    """
    if connections[tasks.db].vendor != "postgresql":
        return tasks
    return tasks.order_by((F(moment) + timedelta(0)).desc(), "-pk")


def model_choices() -> list:
    """Every model in the catalog, grouped by gateway, valued "provider/model"."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for spec in catalog.MODELS:
        groups.setdefault(providers.REGISTRY[spec.provider].name, []).append((spec.key, spec.label))
    return [("", "Any model"), *groups.items()]


def member_choices(wanted: str = "") -> list[tuple[str, str]]:
    """The member filter's choices, as this process read them within MEMBER_SECONDS: the list
    changes when someone shares for the first time or leaves, which can wait that long, while
    reading it costs every gallery page a query over every member. A filter naming a member
    the kept list lacks (`wanted`: a link from a newer page, say) reads it again at once."""
    choices = MEMBER_CACHE.get(MEMBER_CACHE_KEY)
    if choices is None or (wanted and wanted not in dict(choices)):
        choices = read_member_choices()
        MEMBER_CACHE.set(MEMBER_CACHE_KEY, choices)
    return choices


def read_member_choices() -> list[tuple[str, str]]:
    """Active members who have at least one result in the gallery.

    Written as "the member's newest shared task" rather than EXISTS: the database may turn an
    EXISTS into a join over every shared result (milliseconds per page, growing with the
    gallery), while this looks up each member's own tasks newest first through their index
    and stops at the first shared one, which for a member who shares is among the newest."""
    newest_shared = (
        Task.objects.in_gallery()
        .filter(user=OuterRef("pk"))
        .order_by("-created_at")
        .values("pk")[:1]
    )
    members = (
        get_user_model()
        .objects.filter(is_active=True)
        .alias(newest_shared=Subquery(newest_shared))
        .filter(newest_shared__isnull=False)
        .order_by("username")
        .only("username", "display_name")
    )
    return [("", "Anyone"), *((member.username, str(member)) for member in members)]


class GalleryFilters(forms.Form):
    """The gallery's filters, read from the query string. Each field that fails to validate is
    reported and left out; the valid ones still apply."""

    kind = forms.ChoiceField(
        required=False,
        choices=[
            ("", "Videos and images"),
            (Kind.VIDEO.value, "Videos"),
            (Kind.IMAGE.value, "Images"),
        ],
        error_messages={"invalid_choice": "Choose videos or images; this filter was ignored."},
    )
    model = forms.ChoiceField(
        required=False,
        error_messages={"invalid_choice": "Omniweb has no such model; this filter was ignored."},
    )
    member = forms.ChoiceField(
        required=False,
        error_messages={
            "invalid_choice": "No member with gallery results has that name; "
            "this filter was ignored."
        },
    )
    date_from = forms.DateField(
        required=False,
        label="From",
        input_formats=["%Y-%m-%d"],
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
        error_messages={"invalid": DATE_FORMAT_ERROR},
    )
    date_to = forms.DateField(
        required=False,
        label="To",
        input_formats=["%Y-%m-%d"],
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
        error_messages={"invalid": DATE_FORMAT_ERROR},
    )
    q = SearchField()
    fav = forms.BooleanField(
        required=False,
        label="Only my favourites",
        widget=forms.CheckboxInput(attrs={"value": "1"}),
    )
    runs = forms.BooleanField(
        required=False,
        label="One result per run",
        widget=forms.CheckboxInput(attrs={"value": "1"}),
    )

    def __init__(self, data: QueryDict, *, members: list[tuple[str, str]]) -> None:
        super().__init__(data)
        self.fields["model"].choices = model_choices()
        self.fields["member"].choices = members

    @staticmethod
    def _in_range(value: date | None) -> date | None:
        if value is not None and not FIRST_DATE <= value <= LAST_DATE:
            raise forms.ValidationError(
                f"Pick a date from {FIRST_DATE.year} to {LAST_DATE.year}; this filter was ignored."
            )
        return value

    def clean_date_from(self) -> date | None:
        return self._in_range(self.cleaned_data.get("date_from"))

    def clean_date_to(self) -> date | None:
        value = self._in_range(self.cleaned_data.get("date_to"))
        start = self.cleaned_data.get("date_from")
        if value and start and value < start:
            raise forms.ValidationError(
                "This date is before the “From” date; this filter was ignored."
            )
        return value


@dataclass(frozen=True)
class Cursor:
    """Where a page ends: the last item's finish time and primary key."""

    shown_at: datetime
    pk: int

    def encode(self) -> str:
        raw = f"{self.shown_at.isoformat()}|{self.pk}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, value: str) -> Cursor | None:
        """The cursor in `value`, or None when it is not one we could have made."""
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode("ascii")
            moment, pk_text = raw.split("|")
            shown_at = datetime.fromisoformat(moment)
            pk = int(pk_text)
            if shown_at.tzinfo is None or not 0 < pk < 2**63:
                return None
            # Converting here, not in the database driver, keeps an out-of-range time a
            # broken cursor rather than an error.
            return cls(shown_at.astimezone(UTC), pk)
        except (binascii.Error, UnicodeError, ValueError, OverflowError):
            return None


def _newest_first(tasks: QuerySet[Task], user) -> QuerySet[Task]:
    return tasks.annotate(
        # Succeeded tasks always have finished_at; the fallback keeps the order total.
        shown_at=Coalesce("finished_at", "created_at"),
        is_favourite=Exists(Favourite.objects.filter(user=user, task=OuterRef("pk"))),
    ).order_by("-shown_at", "-pk")


def gallery_tasks(user) -> QuerySet[Task]:
    """The gallery's results, newest first, with what the filters and the cursor work on."""
    return _newest_first(Task.objects.in_gallery(), user)


def tiles(keys, user) -> QuerySet[Task]:
    """The tasks with primary keys in `keys`, newest first, with what a tile shows: the
    member and only the columns a tile needs."""
    return (
        _newest_first(Task.objects.filter(pk__in=keys), user)
        .select_related("user")
        .only(*TILE_FIELDS)
    )


def tile_key(task: Task, prefix: str) -> str:
    """What a finished result's tile depends on beyond the catalog and the templates: the
    task as of its last change, the member's name as shown, and where the site is mounted.
    Its files (the first result) are stored before it succeeds and only go when it is deleted,
    which also takes it out of the gallery."""
    named = f"{task.code}|{task.updated_at.isoformat()}|{task.user}|{prefix}"
    return "tile:" + hashlib.blake2b(named.encode(), digest_size=16).hexdigest()


def render_tiles(tasks: list[Task], runs: bool = False) -> list[SafeString]:
    """Each task's tile, with a star where `is_favourite` is set: kept tiles as they are,
    others rendered (their covers loaded in one query) and kept for the next viewer. With
    `runs`, each tile stands for its run and links to the rest of it."""
    prefix = get_script_prefix()
    keys = {task.pk: tile_key(task, prefix) for task in tasks}
    kept = TILE_CACHE.get_many(keys.values())
    missing = [task for task in tasks if keys[task.pk] not in kept]
    if missing:
        covers = {
            result.task_id: result
            for result in Result.objects.filter(task__in=[t.pk for t in missing], position=0)
        }
        item_url = link_maker("generations-gallery-item", UUID)
        file_url = link_maker("generations-file", UUID, int)
        poster_url = link_maker("generations-poster", UUID, int)
        template = get_template("generations/_gallery_tile.html")
        fresh = {}
        for task in missing:
            cover = covers.get(task.pk)
            links = {"item": item_url(task.code)}
            if cover is not None:
                links["file"] = file_url(task.code, cover.position)
                links["poster"] = poster_url(task.code, cover.position)
            tile = template.render(
                {"task": task, "cover": cover, "links": links, "star": STAR_SLOT, "run": RUN_SLOT}
            )
            before, after = tile.split(STAR_SLOT, 1)
            fresh[keys[task.pk]] = (before, *after.split(RUN_SLOT, 1))
        TILE_CACHE.set_many(fresh)
        kept.update(fresh)
    star = render_to_string("generations/_gallery_star.html").strip()
    more = runs_more(tasks) if runs else {}
    shown = []
    for task in tasks:
        before, middle, after = kept[keys[task.pk]]
        run = more.get(task.pk, "")
        # Every part is template output, escaped where it had to be.
        shown.append(mark_safe(before + (star if task.is_favourite else "") + middle + run + after))
    return shown


def runs_more(tasks: list[Task]) -> dict[int, str]:
    """For tiles that stand for a run: the link to the rest of the run's results, by task,
    for runs with more than one result in the gallery. One query for the whole page."""
    runs = {task.run_id for task in tasks}
    sizes = dict(
        Task.objects.in_gallery()
        .filter(run__in=runs)
        .values_list("run")
        .annotate(n=Count("pk"))
        .values_list("run", "n")
    )
    codes = dict(
        Run.objects.filter(pk__in=[r for r in runs if sizes.get(r, 0) > 1]).values_list(
            "pk", "code"
        )
    )
    run_url = link_maker("generations-run", UUID)
    template = get_template("generations/_gallery_run.html")
    return {
        task.pk: template.render(
            {"more": sizes[task.run_id] - 1, "url": run_url(codes[task.run_id])}
        )
        for task in tasks
        if task.run_id in codes
    }


def filter_fields(form: GalleryFilters) -> SafeString:
    """The filter form's fields as _fields.html renders them, rendered once per different
    filter and member list. Everything they show (values, choices, errors) follows from
    those, so equal keys render equal HTML."""
    shown = repr(
        ([(name, form.data.getlist(name)) for name in form.fields], form.fields["member"].choices)
    )
    key = "filters:" + hashlib.blake2b(shown.encode(), digest_size=16).hexdigest()
    fields = FILTER_CACHE.get(key)
    if fields is None:
        fields = render_to_string("_fields.html", {"form": form})
        FILTER_CACHE.set(key, fields)
    # Template output, escaped where it had to be.
    return mark_safe(fields)


def _local_midnight(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


def apply_filters(tasks: QuerySet[Task], filters: dict) -> QuerySet[Task]:
    """Narrow `tasks` by the filters that validated (GalleryFilters.cleaned_data)."""
    if filters.get("kind"):
        tasks = tasks.filter(kind=filters["kind"])
    if filters.get("model"):
        provider, model = filters["model"].split("/", 1)
        tasks = tasks.filter(provider=provider, model=model)
    if filters.get("member"):
        tasks = tasks.filter(user__username=filters["member"])
    if filters.get("date_from"):
        tasks = tasks.filter(shown_at__gte=_local_midnight(filters["date_from"]))
    if filters.get("date_to"):
        tasks = tasks.filter(shown_at__lt=_local_midnight(filters["date_to"] + timedelta(days=1)))
    if filters.get("q"):
        tasks = matches_newest_first(tasks.search(filters["q"]), "shown_at")
    if filters.get("fav"):
        tasks = tasks.filter(is_favourite=True)
    if filters.get("runs"):
        # After the other filters, so a run stands for what they let through.
        tasks = tasks.one_per_run()
    return tasks


def _page_url(request: HttpRequest, cursor: Cursor | None) -> str:
    """The gallery with the same filters, starting after `cursor` (or at the newest)."""
    query = request.GET.copy()
    query.pop("cursor", None)
    if cursor is not None:
        query["cursor"] = cursor.encode()
    encoded = query.urlencode()
    return reverse("generations-gallery") + (f"?{encoded}" if encoded else "")


@require_GET
def gallery(request: HttpRequest) -> HttpResponse:
    form = GalleryFilters(request.GET, members=member_choices(request.GET.get("member", "")))
    form.is_valid()  # invalid fields are reported on the form and left out of cleaned_data
    tasks = apply_filters(gallery_tasks(request.user), form.cleaned_data)

    cursor_error = ""
    cursor = None
    if request.GET.get("cursor"):
        cursor = Cursor.decode(request.GET["cursor"])
        if cursor is None:
            cursor_error = (
                "That link to older results is broken or out of date; "
                "here are the newest results instead."
            )
        else:
            # (shown_at, pk) < cursor, written so an index on the order can seek to it.
            tasks = tasks.filter(shown_at__lte=cursor.shown_at).filter(
                Q(shown_at__lt=cursor.shown_at) | Q(pk__lt=cursor.pk)
            )

    # The page's keys are chosen from the narrow rows first; sorting whole rows, wide JSON
    # columns and all, costs far more once there are thousands of results.
    page_keys = tasks.values("pk")[: PAGE_SIZE + 1]
    items = list(tiles(page_keys, request.user))
    next_url = ""
    if len(items) > PAGE_SIZE:
        items = items[:PAGE_SIZE]
        next_url = _page_url(request, Cursor(items[-1].shown_at, items[-1].pk))

    context = {
        "tiles": render_tiles(items, runs=bool(form.cleaned_data.get("runs"))),
        "next_url": next_url,
    }
    # Infinite scroll asks for the next items only; a boosted filter form wants the whole page.
    if request.htmx and not request.htmx.boosted:
        return render(request, "generations/_gallery_items.html", context)
    context.update(
        form=form,
        filter_fields=filter_fields(form),
        cursor=cursor,
        cursor_error=cursor_error,
        newest_url=_page_url(request, None),
        filtered=any(form.data.get(name) for name in form.fields),
        filters_set=sum(bool(form.data.get(name)) for name in form.fields),
    )
    return render(request, "generations/gallery.html", context)


def _gallery_lookup(request: HttpRequest, code: UUID) -> Task:
    """A result the member may look at here: the team's, or their own private one."""
    own = Task.objects.owned_by(request.user).filter(state=Task.State.SUCCEEDED)
    return get_object_or_404((Task.objects.in_gallery() | own).select_related("user"), code=code)


def _is_favourite(user, task: Task) -> bool:
    return Favourite.objects.filter(user=user, task=task).exists()


@require_GET
def gallery_item(request: HttpRequest, code: UUID) -> HttpResponse:
    task = _gallery_lookup(request, code)
    return render(
        request,
        "generations/gallery_item.html",
        {
            "task": task,
            "results": task.results.all(),
            "is_favourite": _is_favourite(request.user, task),
            "shown_at": task.finished_at or task.created_at,
        },
    )


@require_POST
def favourite(request: HttpRequest, code: UUID) -> HttpResponse:
    """Star or unstar a result for the member; htmx gets the new button, others the page."""
    task = _gallery_lookup(request, code)
    removed, _ = Favourite.objects.filter(user=request.user, task=task).delete()
    if not removed:
        Favourite.objects.get_or_create(user=request.user, task=task)
    is_favourite = not removed
    if request.htmx:
        return render(
            request, "generations/_favourite.html", {"task": task, "is_favourite": is_favourite}
        )
    if is_favourite:
        messages.success(request, "Added to your favourites.")
    else:
        messages.success(request, "Removed from your favourites.")
    # Back where the star was clicked (Compare, say), if that is a page of this site.
    back = request.POST.get("next", "")
    if url_has_allowed_host_and_scheme(
        back, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return redirect(back)
    return redirect("generations-gallery-item", code=task.code)
