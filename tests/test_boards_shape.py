"""What a board's page costs: the same statements with 10, 1,000 or 10,000 results on the board,
on its first page and on a cursor page, and (on PostgreSQL) a page read through the index on
(board, -id) rather than by sorting the board's entries."""

import re

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from generations import boards
from generations.gallery import FILTER_CACHE, MEMBER_CACHE, PAGE_SIZE, TILE_CACHE
from generations.management.commands.benchmark_gallery import create_gallery
from generations.models import Task
from generations.models.boards import Board, BoardItem

SIZES = (10, 1_000, 10_000)
TILE = re.compile(r'class="gallery-link" href="/gallery/([0-9a-f-]{36})/"')


def put_on_board(board: Board, tasks: list[Task], user) -> list[BoardItem]:
    """Entries for `tasks` in their order, so the last is the newest added."""
    return BoardItem.objects.bulk_create(
        [BoardItem(board=board, task=task, added_by=user) for task in tasks], batch_size=1000
    )


def forget_kept_pages() -> None:
    for kept in (TILE_CACHE, MEMBER_CACHE, FILTER_CACHE):
        kept.clear()


def statements(client: Client, url: str) -> tuple[int, list[str]]:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200, url
    return len(queries), TILE.findall(response.content.decode())


@pytest.mark.django_db
def test_the_board_page_costs_the_same_statements_at_10_1000_and_10000_results(alice, bob):
    board = Board.objects.create(owner=alice, name="Big board")
    # Another board's entries share the table, as on a real site.
    other = Board.objects.create(owner=bob, name="Other board")
    client = Client()
    client.force_login(alice)
    client.get("/boards/")  # the session's first read may refresh it

    counts = {}
    entries: list[BoardItem] = []
    tasks: list[Task] = []
    for size in SIZES:
        more = create_gallery([alice, bob], size - len(tasks), favourites_of=alice)
        tasks += more
        entries += put_on_board(board, more, alice)
        put_on_board(other, more[::3], bob)
        # A cursor page from the middle of the board: after the entry half way down.
        middle = entries[len(entries) // 2]
        urls = {
            "first": f"/boards/{board.code}/",
            "cursor": f"/boards/{board.code}/?cursor={middle.pk}",
            "filtered": f"/boards/{board.code}/?kind=video&fav=1&cursor={middle.pk}",
        }
        counts[size] = {}
        for name, url in urls.items():
            forget_kept_pages()
            cold, shown = statements(client, url)
            warm, again = statements(client, url)
            assert shown == again
            counts[size][name] = (cold, warm)
            if name == "first":
                expected = [str(task.code) for task in reversed(tasks)][: min(size, PAGE_SIZE)]
                assert shown == expected
            if name == "cursor":
                older = [str(e.task.code) for e in reversed(entries) if e.pk < middle.pk]
                assert shown == older[:PAGE_SIZE]

    assert counts[10] == counts[1_000] == counts[10_000], counts


@pytest.mark.django_db
@pytest.mark.skipif(connection.vendor != "postgresql", reason="a PostgreSQL query plan")
def test_a_board_page_is_read_through_the_newest_entries_index(alice, bob):
    # One board among many: filled a while ago alongside others (its entries are every tenth
    # row of the older part), then the team moved on to other boards. Walking all entries
    # newest first and skipping other boards' would read every newer row before the first of
    # this board's; the index on (board, -id) goes straight to them.
    board = Board.objects.create(owner=alice, name="Last spring's board")
    others = [Board.objects.create(owner=bob, name=f"Other board {n}") for n in range(40)]
    tasks = create_gallery([alice, bob], 1000)
    BoardItem.objects.bulk_create(
        [BoardItem(board=b, task=task) for task in tasks for b in (board, *others[:9])],
        batch_size=5000,
    )
    BoardItem.objects.bulk_create(
        [BoardItem(board=b, task=task) for task in tasks for b in others[9:]],
        batch_size=5000,
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE generations_boarditem")
        cursor.execute("ANALYZE generations_task")
    middle = board.items.order_by("id")[500]

    first = boards.board_page(board, alice, {}, None).explain(analyze=True)
    cursor = boards.board_page(board, alice, {}, middle.pk).explain(analyze=True)

    assert "Index Scan using board_item_newest" in first, first
    for plan in (first, cursor):
        # In order from an index, never a sort of the board's entries; and it stops early:
        # the entries it reads and passes over are a few pages' worth at most. (From a cursor
        # inside the part where this board's entries lie, the planner may walk the primary
        # key down from the cursor instead, which there costs about as little.)
        assert "Sort" not in plan, plan
        assert "Seq Scan on generations_boarditem" not in plan, plan
        skipped = sum(int(n) for n in re.findall(r"Rows Removed by Filter: (\d+)", plan))
        assert skipped <= 10 * PAGE_SIZE, plan
