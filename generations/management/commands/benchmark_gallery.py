"""How long the gallery takes to answer, measured on a throwaway database.

The command creates its own database with Django's test-database machinery, migrates it, fills
it with N team results from a few members and drops it afterwards, so it never reads or writes
real members or tasks. One member is logged in with the test client, which sends every request
through the full middleware stack (sessions, authentication, CSRF, messages, htmx).

It times the gallery's first page and a page from the middle (through its cursor), each against
a bare view that lists the same 24 prompts through the gallery's own index (the partial index
`gallery_newest_first`: newest first by finish time, then id) with one query and a minimal
template, behind the same middleware. The bare page must walk that index like the gallery does:
ordered by a column the index does not cover, it would sort every result itself and look slower
than the least a page can cost. On PostgreSQL the command shows the bare query's plan says so.
The ratio says what the gallery's filters, tiles, template and extra queries cost over the least
a page of 24 results can cost on this machine and database. The figures are printed, never
checked. DEBUG is off while measuring, as in production; static file URLs are built without a
collectstatic manifest, since a development copy may not have one.
"""

import statistics
import time
from datetime import timedelta
from decimal import Decimal
from functools import cache
from itertools import cycle
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from django.db.models import QuerySet
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.template import engines
from django.template.backends.django import Template
from django.test import Client
from django.test.utils import CaptureQueriesContext, override_settings
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from generations.gallery import PAGE_SIZE, Cursor
from generations.models import Favourite, Result, Task
from generations.providers import Kind, catalog
from omniweb.benchmarking import throwaway_database, vacuum_analyze

BARE_PATH = "/benchmark/bare/"
# The site's URLs plus the bare views, served only while a benchmark measures.
URLCONF = "omniweb.benchmark_urls"
SUBJECTS = ("a red fox", "a lighthouse", "two astronauts", "a paper boat", "a city tram")
PLACES = ("in the snow", "at dusk", "under water", "on Mars", "in a rainy street")
STYLES = ("cinematic", "watercolour", "35 mm film", "isometric", "claymation")


def bare_tasks(before=None) -> QuerySet[Task]:
    """The bare page's one query: the gallery's results in the gallery's order, which is the
    order of its partial index, from `before` (a finish time) on when given."""
    tasks = (
        Task.objects.in_gallery()
        .annotate(shown_at=Coalesce("finished_at", "created_at"))
        .order_by("-shown_at", "-pk")
    )
    if before is not None:
        tasks = tasks.filter(shown_at__lt=before)
    return tasks


@cache
def bare_template() -> Template:
    # Compiled once, as the site's own templates are by the cached loader.
    return engines["django"].from_string(
        "<!doctype html><title>Gallery</title>"
        "<ul>{% for prompt in prompts %}<li>{{ prompt }}</li>{% endfor %}</ul>"
    )


def bare_gallery(request: HttpRequest) -> HttpResponse:
    """The least a page of 24 gallery results can cost: one index-backed query, escaped prompts,
    a minimal template. `?before=<finish time>` starts after that time, as the gallery's cursor
    does."""
    before = parse_datetime(request.GET.get("before", ""))
    prompts = list(bare_tasks(before).values_list("prompt", flat=True)[:PAGE_SIZE])
    return HttpResponse(bare_template().render({"prompts": prompts}))


def bare_plan() -> str:
    """The bare page's query plan on PostgreSQL (empty elsewhere): it should name the
    gallery's index, or the bare page is not the least a page can cost."""
    if connection.vendor != "postgresql":
        return ""
    return bare_tasks().values_list("prompt", flat=True)[:PAGE_SIZE].explain()


def stored_result(task: Task, name: str) -> Result:
    """A first result for a benchmark's gallery task, by its row only: no file is written."""
    video = task.kind == Kind.VIDEO
    return Result(
        task=task,
        position=0,
        file=f"results/benchmark/{name}.{'mp4' if video else 'png'}",
        poster=f"posters/benchmark/{name}.jpg",
        content_type="video/mp4" if video else "image/png",
        size=1_000_000,
        width=1280,
        height=720,
        duration=5.0 if video else None,
    )


def create_gallery(users: list, count: int, *, favourites_of=None) -> list[Task]:
    """`count` finished team results spread over `users`, one second apart (the last the
    newest), each with one stored result row; the files themselves are not written. Every
    seventh is a favourite of `favourites_of`, when given."""
    specs = catalog.MODELS
    now = timezone.now()
    tasks = []
    for i, user, spec in zip(range(count), cycle(users), cycle(specs), strict=False):
        prompt = f"{SUBJECTS[i % 5]} {PLACES[i // 5 % 5]}, {STYLES[i // 25 % 5]}, take {i}"
        finished = now - timedelta(seconds=count - i)
        tasks.append(
            Task(
                user=user,
                provider=spec.provider,
                model=spec.model,
                kind=spec.kind.value,
                prompt=prompt,
                params={
                    "duration": spec.default_duration,
                    "resolution": spec.default_resolution,
                    "aspect_ratio": spec.default_aspect_ratio,
                },
                key_label="Benchmark",
                state=Task.State.SUCCEEDED,
                visibility=Task.Visibility.TEAM,
                price_unit="task",
                price_credits_per_unit=10,
                price_units=1,
                price_multiplier=Decimal(1),
                credits_charged=10,
                created_at=finished - timedelta(seconds=30),
                finished_at=finished,
            )
        )
    tasks = Task.objects.bulk_create(tasks, batch_size=1000)
    results = [stored_result(task, str(i)) for i, task in enumerate(tasks)]
    Result.objects.bulk_create(results, batch_size=1000)
    if favourites_of is not None:
        Favourite.objects.bulk_create(
            [Favourite(user=favourites_of, task=task) for task in tasks[::7]], batch_size=1000
        )
    return tasks


def measuring_settings(urlconf: str) -> override_settings:
    """The settings pages are timed with: `urlconf` (the site's URLs plus bare views), the test
    client's host allowed, static URLs built without a collectstatic manifest."""
    return override_settings(
        ROOT_URLCONF=urlconf,
        ALLOWED_HOSTS=[*settings.ALLOWED_HOSTS, "testserver"],
        STORAGES={
            **settings.STORAGES,
            "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
        },
    )


def time_page(client: Client, url: str, repeat: int) -> tuple[str, tuple[float, float, int]]:
    """The page's text and (median ms, p95 ms, queries) of `repeat` timed GETs, after one
    counted and one warming GET."""
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url, secure=True)
    # Counted now: every request that follows empties the connection's query log.
    query_count = len(queries)
    if response.status_code != 200:
        raise CommandError(f"GET {url} answered {response.status_code}.")
    client.get(url, secure=True)
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        response = client.get(url, secure=True)
        samples.append((time.perf_counter() - start) * 1000)
    body = response.content.decode()
    return body, (statistics.median(samples), p95(samples), query_count)


def same_results(gallery_body: str, bare_body: str) -> bool:
    """Whether the gallery page shows every prompt the bare page lists: the comparison is fair
    only if both list the same results."""
    prompts = [item.split("</li>")[0] for item in bare_body.split("<li>")[1:]]
    return bool(prompts) and all(prompt in gallery_body for prompt in prompts)


def p95(samples: list[float]) -> float:
    """The nearest-rank 95th percentile."""
    ordered = sorted(samples)
    return ordered[max(0, -(-len(ordered) * 95 // 100) - 1)]


class Command(BaseCommand):
    help = (
        "Time the gallery's first and a middle page against a bare list of the same results, "
        "on a throwaway database filled with N results."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--results", type=int, default=10_000, help="Gallery results to create (10,000)."
        )
        parser.add_argument(
            "--repeat", type=int, default=20, help="Timed requests per page (default 20)."
        )

    def handle(self, *args, results: int, repeat: int, **options) -> None:
        if not PAGE_SIZE * 2 < results <= 1_000_000:
            raise CommandError(f"--results must be above {PAGE_SIZE * 2} and at most 1,000,000.")
        if not 1 <= repeat <= 10_000:
            raise CommandError("--repeat must be 1 to 10,000.")
        with throwaway_database(self.stdout), measuring_settings(URLCONF):
            self.measure(results, repeat)

    def measure(self, count: int, repeat: int) -> None:
        version = ".".join(str(part) for part in connection.get_database_version())
        self.stdout.write(f"Database: {connection.display_name} {version}")
        started = time.perf_counter()
        User = get_user_model()
        members = [
            User.objects.create(username=f"benchmark-{n}", display_name=f"Member {n}")
            for n in range(1, 6)
        ]
        tasks = create_gallery(members, count, favourites_of=members[0])
        vacuum_analyze()
        elapsed = time.perf_counter() - started
        self.stdout.write(f"Created {count:,} gallery results in {elapsed:.1f} s")
        if plan := bare_plan():
            self.stdout.write(f"Bare page plan: {' '.join(plan.split())}")

        client = Client()
        client.force_login(members[0])
        # The middle page starts after the task half way down the newest-first order.
        middle = tasks[count // 2]
        cursor = Cursor(middle.finished_at, middle.pk).encode()
        pages = [
            ("first", "/gallery/", BARE_PATH),
            (
                "middle",
                "/gallery/?" + urlencode({"cursor": cursor}),
                BARE_PATH + "?" + urlencode({"before": middle.finished_at.isoformat()}),
            ),
        ]
        self.stdout.write(f"Each figure: {repeat} timed requests after 2 to warm up")
        self.stdout.write("")
        self.stdout.write(
            f"{'page':<8}{'view':<10}{'median ms':>11}{'p95 ms':>10}{'queries':>9}"
            f"{'gallery/bare':>14}"
        )
        for name, gallery_url, bare_url in pages:
            gallery_body, gallery_figures = time_page(client, gallery_url, repeat)
            bare_body, bare_figures = time_page(client, bare_url, repeat)
            if not same_results(gallery_body, bare_body):
                raise CommandError(f"The {name} pages do not list the same results.")
            ratio = gallery_figures[0] / bare_figures[0]
            self.stdout.write(self.row(name, "gallery", gallery_figures) + f"{ratio:>13.1f}x")
            self.stdout.write(self.row(name, "bare", bare_figures))
        self.stdout.write("")

    @staticmethod
    def row(page: str, view: str, figures: tuple[float, float, int]) -> str:
        median, high, queries = figures
        return f"{page:<8}{view:<10}{median:>11.2f}{high:>10.2f}{queries:>9}"
