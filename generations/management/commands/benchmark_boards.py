"""How long a board's page takes to answer beside the gallery's, on a throwaway database.

The command creates its own database (omniweb.benchmarking), fills it with N team results from
a few members, puts all of them on one team board in the order they finished, and drops it
afterwards, so it never reads or writes real members, tasks or boards. One member is logged in
with the test client, which sends every request through the full middleware stack.

It times the board's first page and a page from the middle (through its cursor) against the
gallery's first and middle pages. With every result on the board, added in the order they
finished, both list the same 24 results on each page (the command checks it), so the ratio is
what reaching them through the board's entries and its visibility rules costs over the
gallery's own index. It also prints the statements each page makes. The figures are printed,
never checked. DEBUG is off while measuring, as in production.
"""

import re
import time
from urllib.parse import urlencode

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from django.test import Client

from generations.gallery import PAGE_SIZE, Cursor
from generations.management.commands.benchmark_gallery import (
    create_gallery,
    measuring_settings,
    time_page,
)
from generations.models import Visibility
from generations.models.boards import MAX_ITEMS_PER_BOARD, Board, BoardItem
from omniweb.benchmarking import throwaway_database, vacuum_analyze

TILE = re.compile(r'class="gallery-link" href="/gallery/([0-9a-f-]{36})/"')


def shown_results(body: str) -> list[str]:
    """The results a gallery or board page shows, in order."""
    return TILE.findall(body)


class Command(BaseCommand):
    help = (
        "Time a board's first and middle page against the gallery's for the same results, on a "
        "throwaway database with N results on the board."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--results", type=int, default=10_000, help="Results on the board (10,000)."
        )
        parser.add_argument(
            "--repeat", type=int, default=20, help="Timed requests per page (default 20)."
        )

    def handle(self, *args, results: int, repeat: int, **options) -> None:
        if not PAGE_SIZE * 2 < results <= MAX_ITEMS_PER_BOARD:
            raise CommandError(
                f"--results must be above {PAGE_SIZE * 2} and at most {MAX_ITEMS_PER_BOARD:,} "
                "(the most a board holds)."
            )
        if not 1 <= repeat <= 10_000:
            raise CommandError("--repeat must be 1 to 10,000.")
        with throwaway_database(self.stdout), measuring_settings("omniweb.urls"):
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
        board = Board.objects.create(
            owner=members[1], name="Benchmark board", visibility=Visibility.TEAM
        )
        # In the order they finished, so the newest added is the newest result: the board
        # lists what the gallery lists.
        entries = BoardItem.objects.bulk_create(
            [BoardItem(board=board, task=task, added_by=members[1]) for task in tasks],
            batch_size=1000,
        )
        vacuum_analyze()
        elapsed = time.perf_counter() - started
        self.stdout.write(f"Created {count:,} results on one board in {elapsed:.1f} s")

        client = Client()
        client.force_login(members[0])
        middle = count // 2
        board_url = f"/boards/{board.code}/"
        gallery_cursor = Cursor(tasks[middle].finished_at, tasks[middle].pk).encode()
        pages = [
            ("first", board_url, "/gallery/"),
            (
                "middle",
                f"{board_url}?{urlencode({'cursor': entries[middle].pk})}",
                "/gallery/?" + urlencode({"cursor": gallery_cursor}),
            ),
        ]
        self.stdout.write(f"Each figure: {repeat} timed requests after 2 to warm up")
        self.stdout.write("")
        self.stdout.write(
            f"{'page':<8}{'view':<10}{'median ms':>11}{'p95 ms':>10}{'queries':>9}"
            f"{'board/gallery':>15}"
        )
        for name, board_page, gallery_page in pages:
            board_body, board_figures = time_page(client, board_page, repeat)
            gallery_body, gallery_figures = time_page(client, gallery_page, repeat)
            shown = shown_results(board_body)
            if len(shown) != PAGE_SIZE or shown != shown_results(gallery_body):
                raise CommandError(f"The {name} pages do not list the same results.")
            ratio = board_figures[0] / gallery_figures[0]
            self.stdout.write(self.row(name, "board", board_figures) + f"{ratio:>14.2f}x")
            self.stdout.write(self.row(name, "gallery", gallery_figures))
        self.stdout.write("")

    @staticmethod
    def row(page: str, view: str, figures: tuple[float, float, int]) -> str:
        median, high, queries = figures
        return f"{page:<8}{view:<10}{median:>11.2f}{high:>10.2f}{queries:>9}"
