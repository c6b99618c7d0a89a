"""How long the prompt search takes, measured on a throwaway database.

Like benchmark_gallery, the command creates its own database with Django's test-database
machinery, migrates it (the prompt index included, on PostgreSQL), fills it with N team results
from four members (100,000 by default) and drops it afterwards; one member is logged in with
the test client, so every request goes through the full middleware stack.

The prompts are drawn from a vocabulary of about 200 words, as a team's prompts are: with
benchmark_gallery's few repeated words PostgreSQL's statistics would know fewer than the 100
common words it needs to estimate how many prompts a word prefix matches, and its plans would
be those of an unusual gallery. After loading, the database is vacuumed and analysed, as
autovacuum keeps a live one.

Each search is timed on the gallery's first page and on the member's My tasks (a quarter of
the results are theirs), against the same page without a search, measured in the same run:
the ratio is what searching costs over browsing. The searches go from a word in half the
prompts to one in none. On PostgreSQL the table names the indexes each search's page query
reads (the prompt index, see gallery.matches_newest_first), and says how long building the
prompt index over the loaded prompts takes: what its migration costs on an existing table.
The figures are printed, never checked. DEBUG is off while measuring, as in production.
"""

import random
import re
import time
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, transaction
from django.db.models import QuerySet
from django.test import Client

from generations.gallery import (
    PAGE_SIZE,
    apply_filters,
    gallery_tasks,
    matches_newest_first,
    search_words,
)
from generations.management.commands.benchmark_gallery import (
    create_gallery,
    measuring_settings,
    time_page,
)
from generations.models import Task
from omniweb.benchmarking import throwaway_database

SUBJECTS = (
    "a red fox", "a lighthouse", "two astronauts", "a paper boat", "a city tram",
    "an old fisherman", "a koi pond", "a steam locomotive", "a snow leopard", "a greenhouse",
    "a jazz trio", "a hot air balloon", "a robot gardener", "a wooden cabin", "a night market",
    "a humpback whale", "a vintage motorcycle", "a ballet dancer", "a desert caravan",
    "a mountain monastery", "a neon diner", "a flock of starlings", "a sailing yacht",
    "a sleeping cat", "a bamboo grove", "a windmill", "a clockmaker", "a coral reef",
    "a samurai", "a street violinist", "a floating island", "a lantern festival",
    "an abandoned factory", "a bonsai tree", "a polar bear", "a racing cyclist",
    "a library tower", "a stone bridge", "a train station", "a hummingbird",
)  # fmt: skip
PLACES = (
    "in the snow", "at dusk", "under water", "on Mars", "in a rainy street", "on a cliff",
    "in a foggy harbour", "in the desert", "on a rooftop", "in a sunflower field",
    "by a frozen lake", "in a cyberpunk alley", "on the moon", "in a rainforest",
    "at a busy crossing", "in an autumn park", "on a beach", "in a cathedral", "inside a cave",
    "on a volcano", "in a wheat field", "above the clouds", "in a tea house", "on a glacier",
    "in a subway car", "at a fish market", "in a canyon", "on a rice terrace",
    "in a botanical garden", "beside a waterfall",
)  # fmt: skip
LIGHTS = (
    "golden hour", "soft morning light", "moonlight", "neon glow", "overcast sky",
    "candlelight", "harsh noon sun", "blue hour", "stormy light", "backlit", "volumetric fog",
    "studio lighting",
)  # fmt: skip
STYLES = (
    "cinematic", "watercolour", "35 mm film", "isometric", "claymation", "oil painting",
    "anime", "pixel art", "charcoal sketch", "photorealistic", "woodblock print", "low poly",
    "papercut", "stop motion", "vaporwave", "film noir", "gouache", "documentary",
    "tilt-shift", "double exposure",
)  # fmt: skip
# From a word in half the prompts to one in none; words in another order than the prompts'.
SEARCHES = (
    "detailed",
    "cinematic",
    "snow fox",
    "golden watercolour lighthouse",
    "take 31337",
    "zebra",
)
PAGES = {"gallery": "/gallery/", "my tasks": "/tasks/"}
INDEX = "task_prompt_words"


def varied_prompts(count: int) -> list[str]:
    """`count` prompts in the way members write them, the same on every run; the last words
    ("take N") make each one different."""
    pick = random.Random(2025).choice
    return [
        f"{pick(SUBJECTS)} {pick(PLACES)}, {pick(LIGHTS)}, {pick(STYLES)}"
        f"{pick((', highly detailed', ''))}, take {i}"
        for i in range(count)
    ]


def vary_prompts(tasks: list[Task]) -> None:
    """Give `tasks` varied prompts, in one statement per task within one transaction."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany(
            f"UPDATE {Task._meta.db_table} SET prompt = %s WHERE id = %s",
            list(zip(varied_prompts(len(tasks)), (task.pk for task in tasks), strict=True)),
        )


def plan_indexes(plan: str) -> str:
    """The indexes a query plan reads, or how it reads the table without one."""
    names = re.findall(r"Index (?:Only )?Scan (?:Backward )?(?:using|on) (\w+)", plan)
    if names:
        return "+".join(dict.fromkeys(names))
    return "whole table" if "Seq Scan" in plan else "?"


class Command(BaseCommand):
    help = (
        "Time prompt searches on the gallery and My tasks against the same pages unsearched, "
        "on a throwaway database filled with N results."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--results", type=int, default=100_000, help="Gallery results to create (100,000)."
        )
        parser.add_argument(
            "--repeat", type=int, default=20, help="Timed requests per page (default 20)."
        )

    def handle(self, *args, results: int, repeat: int, **options) -> None:
        if not PAGE_SIZE * 2 < results <= 1_000_000:
            raise CommandError(f"--results must be above {PAGE_SIZE * 2} and at most 1,000,000.")
        if not 1 <= repeat <= 10_000:
            raise CommandError("--repeat must be 1 to 10,000.")
        with throwaway_database(self.stdout), measuring_settings(settings.ROOT_URLCONF):
            self.measure(results, repeat)

    def measure(self, count: int, repeat: int) -> None:
        postgresql = connection.vendor == "postgresql"
        version = ".".join(str(part) for part in connection.get_database_version())
        self.stdout.write(f"Database: {connection.display_name} {version}")
        started = time.perf_counter()
        User = get_user_model()
        # Four members, so that each has prompts of every kind.
        members = [
            User.objects.create(username=f"benchmark-{n}", display_name=f"Member {n}")
            for n in range(1, 5)
        ]
        vary_prompts(create_gallery(members, count, favourites_of=members[0]))
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE" if postgresql else "ANALYZE")
        elapsed = time.perf_counter() - started
        self.stdout.write(f"Created {count:,} gallery results in {elapsed:.1f} s")
        if postgresql:
            started = time.perf_counter()
            with connection.cursor() as cursor:
                cursor.execute(f"REINDEX INDEX {INDEX}")
            elapsed = time.perf_counter() - started
            self.stdout.write(f"Building the prompt index over {count:,} prompts: {elapsed:.1f} s")

        client = Client()
        client.force_login(members[0])
        self.stdout.write(f"Each figure: {repeat} timed requests after 2 to warm up")
        self.stdout.write("")
        header = (
            f"{'page':<10}{'search':<31}{'matches':>9}{'median ms':>11}{'p95 ms':>10}"
            f"{'queries':>9}{'ratio':>8}"
        )
        self.stdout.write(header + ("  indexes read" if postgresql else ""))
        for page, url in PAGES.items():
            _, (unsearched, high, queries) = time_page(client, url, repeat)
            matches = self.page_tasks(page, members[0], []).count()
            self.stdout.write(self.row(page, "(none)", matches, (unsearched, high, queries, 1.0)))
            for search in SEARCHES:
                search_url = f"{url}?{urlencode({'q': search})}"
                _, (median, high, queries) = time_page(client, search_url, repeat)
                tasks = self.page_tasks(page, members[0], search_words(search))
                figures = (median, high, queries, median / unsearched)
                line = self.row(page, search, tasks.count(), figures)
                if postgresql:
                    # The page's own query: its order and its limit.
                    line += "  " + plan_indexes(tasks.values("pk")[: PAGE_SIZE + 1].explain())
                self.stdout.write(line)
        self.stdout.write("")

    @staticmethod
    def page_tasks(page: str, member, words: list[str]) -> QuerySet[Task]:
        """What the page searches, in the page's order, filtered as its view filters it."""
        if page == "gallery":
            return apply_filters(gallery_tasks(member), {"q": words})
        mine = Task.objects.owned_by(member)
        return matches_newest_first(mine.search(words), "created_at") if words else mine

    @staticmethod
    def row(page: str, search: str, matches: int, figures: tuple) -> str:
        median, high, queries, ratio = figures
        return (
            f"{page:<10}{search:<31}{matches:>9,}{median:>11.2f}{high:>10.2f}{queries:>9}"
            f"{ratio:>7.1f}x"
        )
