"""What a page of the gallery or of My tasks costs and reuses: the same statements however many
results there are and whichever page, tiles and ended cards rendered once and never shown
stale, covers loaded by a plain query, and typical durations worked out once a minute."""

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from generations.cards import (
    CARD_CACHE,
    RECENT_SAMPLE,
    TYPICAL_CACHE,
    link_maker,
    recent_typical_seconds,
    typical_seconds,
    with_timing,
)
from generations.gallery import MEMBER_CACHE, PAGE_SIZE, TILE_CACHE, Cursor
from generations.models import Favourite, Result, Task

NOW = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)
# The larger figure the query counts are compared at: more than ten pages of either list.
MANY = 300
TILE_TEMPLATE = "generations/_gallery_tile.html"
CARD_TEMPLATE = "generations/_task_card.html"
STAR = 'class="gallery-star"'


def make_tasks(user, count, *, start=0, state=Task.State.SUCCEEDED, run_seconds=60, **fields):
    """`count` tasks of `user`, one second apart going back from NOW - `start` seconds, with a
    stored first result when they succeeded: bulk-created, as a large gallery would take long
    one by one."""
    tasks = []
    for i in range(count):
        finished = NOW - timedelta(seconds=start + i)
        tasks.append(
            Task(
                user=user,
                provider="apimart",
                model="Omni-Flash-Ext",
                kind="video" if i % 2 else "image",
                prompt=f"a fox take {start + i}",
                params={"duration": 4, "resolution": "720p"},
                key_label="Mine",
                state=state,
                visibility=fields.get("visibility", Task.Visibility.TEAM),
                price_unit="task",
                price_credits_per_unit=10,
                price_units=1,
                price_multiplier=Decimal(1),
                credits_charged=10,
                created_at=finished - timedelta(seconds=run_seconds),
                finished_at=finished if state in Task.TERMINAL_STATES else None,
            )
        )
    tasks = Task.objects.bulk_create(tasks)
    Result.objects.bulk_create(
        Result(
            task=task,
            position=0,
            file=f"results/{task.code}.mp4",
            poster=f"posters/{task.code}.jpg",
            content_type="video/mp4",
            size=1000,
            width=1280,
            height=720,
            duration=4.0,
        )
        for task in tasks
        if state == Task.State.SUCCEEDED
    )
    return tasks


def statements(client, url) -> list[str]:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200, url
    return [query["sql"] for query in queries]


def forget_everything():
    """Nothing kept: no tiles, no member list, no cards, no typical durations."""
    TILE_CACHE.clear()
    MEMBER_CACHE.clear()
    CARD_CACHE.clear()
    TYPICAL_CACHE.clear()


@pytest.fixture(autouse=True)
def nothing_kept(db):
    forget_everything()
    yield
    forget_everything()


def tile_codes(page: str) -> list[str]:
    return re.findall(r'class="gallery-link" href="/gallery/([0-9a-f-]{36})/"', page)


# --- Statements per page --------------------------------------------------------------------


def gallery_counts(client, oldest: Task) -> dict[str, tuple[int, int]]:
    """Statements of each kind of gallery page, when nothing is kept and when it is."""
    urls = {
        "first": "/gallery/",
        "cursor": f"/gallery/?cursor={Cursor(oldest.finished_at, oldest.pk).encode()}",
        "filtered": "/gallery/?kind=video&member=bob&q=fox&fav=1",
    }
    counts = {}
    for name, url in urls.items():
        forget_everything()
        cold = statements(client, url)
        warm = statements(client, url)
        for sql in cold + warm:
            # The covers come from a plain lookup, not a window over each task's results.
            assert "ROW_NUMBER" not in sql.upper(), sql
        counts[name] = (len(cold), len(warm))
    return counts


def test_a_gallery_page_costs_the_same_statements_at_ten_and_many_results(client, alice, bob):
    client.force_login(alice)
    few = make_tasks(bob, 10)
    Favourite.objects.bulk_create(Favourite(user=alice, task=task) for task in few)
    # The cursor page starts after the fifth newest, so it has results at either size.
    at_ten = gallery_counts(client, few[4])

    more = make_tasks(bob, MANY - 10, start=10)
    Favourite.objects.bulk_create(Favourite(user=alice, task=task) for task in more)
    assert Task.objects.in_gallery().count() == MANY
    at_many = gallery_counts(client, few[4])

    assert at_ten == at_many
    for cold, warm in at_many.values():
        # Session, member, member choices, tiles, and the covers of tiles not kept yet.
        assert cold <= 5
        assert warm < cold  # every tile kept: no covers to load


def test_the_cursor_page_after_many_results_shows_the_next_ones(client, alice, bob):
    tasks = make_tasks(bob, MANY)
    client.force_login(alice)
    last = tasks[PAGE_SIZE - 1]
    page = client.get(f"/gallery/?cursor={Cursor(last.finished_at, last.pk).encode()}")
    assert tile_codes(page.content.decode()) == [
        str(task.code) for task in tasks[PAGE_SIZE : 2 * PAGE_SIZE]
    ]


def task_list_counts(client) -> dict[str, tuple[int, int]]:
    urls = {"first": "/tasks/", "second": "/tasks/?page=2", "filtered": "/tasks/?q=fox&kind=video"}
    counts = {}
    for name, url in urls.items():
        forget_everything()
        cold = statements(client, url)
        warm = statements(client, url)
        counts[name] = (len(cold), len(warm))
    return counts


def test_my_tasks_costs_the_same_statements_at_ten_and_many_tasks(client, alice):
    client.force_login(alice)
    make_tasks(alice, 3, state=Task.State.RUNNING)  # the newest: active cards on page one
    make_tasks(alice, 7, start=3)
    at_ten = task_list_counts(client)

    make_tasks(alice, 20, start=10, state=Task.State.FAILED)
    make_tasks(alice, 3, start=30, state=Task.State.RUNNING)  # active cards on page two too
    make_tasks(alice, MANY - 33, start=33, state=Task.State.FAILED)
    at_many = task_list_counts(client)

    assert at_ten == at_many


# --- Tiles ----------------------------------------------------------------------------------


def test_a_tile_is_rendered_once_and_each_viewer_sees_their_own_star(client, alice, bob, carol):
    (task,) = make_tasks(bob, 1)
    Favourite.objects.create(user=carol, task=task)

    client.force_login(alice)
    first = client.get("/gallery/")
    assert TILE_TEMPLATE in [t.name for t in first.templates]
    assert STAR not in first.content.decode()

    client.force_login(carol)
    with CaptureQueriesContext(connection) as queries:
        second = client.get("/gallery/")
    assert TILE_TEMPLATE not in [t.name for t in second.templates]
    assert not [q for q in queries if "generations_result" in q["sql"]]  # no covers needed
    page = second.content.decode()
    assert tile_codes(page) == [str(task.code)]
    assert page.count(STAR) == 1

    client.force_login(alice)
    assert STAR not in client.get("/gallery/").content.decode()


def test_a_tile_links_to_exactly_what_reverse_gives(client, alice, bob):
    (task,) = make_tasks(bob, 1)
    client.force_login(alice)
    page = client.get("/gallery/").content.decode()
    assert f'href="{reverse("generations-gallery-item", args=[task.code])}"' in page
    assert f'data-preview="{reverse("generations-file", args=[task.code, 0])}"' in page
    assert f'src="{reverse("generations-poster", args=[task.code, 0])}"' in page


def test_link_maker_gives_what_reverse_gives():
    make = link_maker("generations-file", type(Task().code), int)
    code = Task().code
    assert make(code, 3) == reverse("generations-file", args=[code, 3])
    assert make(code, 0) == reverse("generations-file", args=[code, 0])
    assert link_maker("generations-task", type(code))(code) == f"/t/{code}/"


def test_a_result_made_private_or_deleted_leaves_the_gallery_at_once(client, alice, bob):
    private, deleted, kept = make_tasks(bob, 3)
    client.force_login(alice)
    assert len(tile_codes(client.get("/gallery/").content.decode())) == 3

    client.force_login(bob)
    client.post(f"/t/{private.code}/visibility", {"visibility": Task.Visibility.PRIVATE})
    client.post(f"/t/{deleted.code}/delete")
    client.force_login(alice)
    assert tile_codes(client.get("/gallery/").content.decode()) == [str(kept.code)]


def test_a_renamed_member_or_a_changed_result_shows_at_once(client, alice, bob):
    (task,) = make_tasks(bob, 1)
    client.force_login(alice)
    page = client.get("/gallery/").content.decode()
    assert "Bob B." in page and "a fox take 0" in page

    bob.display_name = "Robert"
    bob.save(update_fields=["display_name"])
    task.prompt = "a fox, edited by an admin"
    task.save()

    page = client.get("/gallery/").content.decode()
    # The tiles at once; the member filter's list follows within gallery.MEMBER_SECONDS.
    results = page[page.index('id="gallery-results"') :]
    assert "Robert" in results and "Bob B." not in results
    assert "a fox, edited by an admin" in results and "a fox take 0" not in results


# --- Cards and typical durations ------------------------------------------------------------


def test_ended_cards_are_rendered_once_and_active_ones_every_time(client, alice):
    make_tasks(alice, 2, state=Task.State.RUNNING)
    ended = make_tasks(alice, 3, start=2) + make_tasks(alice, 2, start=5, state="failed")
    client.force_login(alice)

    first = client.get("/tasks/")
    assert [t.name for t in first.templates].count(CARD_TEMPLATE) == 7
    second = client.get("/tasks/")
    assert [t.name for t in second.templates].count(CARD_TEMPLATE) == 2  # the active ones
    for task in ended:
        card = re.search(
            rf'<article class="task-card[^"]*" id="task-{task.code}".*?</article>',
            first.content.decode(),
            re.S,
        ).group(0)
        assert card in second.content.decode()
    assert "refunded" in second.content.decode()


def typical_statements(queries) -> list[str]:
    return [q["sql"] for q in queries if f"LIMIT {RECENT_SAMPLE}" in q["sql"]]


def test_typical_durations_are_worked_out_once_within_their_cache_time(alice):
    make_tasks(alice, 5, run_seconds=100)
    running = make_tasks(alice, 1, state=Task.State.RUNNING)

    with CaptureQueriesContext(connection) as queries:
        first = typical_seconds()
        with_timing(Task.objects.filter(pk=running[0].pk).prefetch_related("results"))
        typical_seconds()
    assert len(typical_statements(queries)) == 1
    assert first == {("apimart", "Omni-Flash-Ext", 4): 100.0}

    # A success that would change the median waits for the cache time to pass.
    make_tasks(alice, 9, start=10, run_seconds=10)
    assert typical_seconds() == first
    assert recent_typical_seconds() == {("apimart", "Omni-Flash-Ext", 4): 10.0}


def test_an_active_card_estimates_from_the_typical_duration(client, alice):
    make_tasks(alice, 5, start=3600, run_seconds=100)
    running = Task.objects.bulk_create(
        [
            Task(
                user=alice,
                provider="apimart",
                model="Omni-Flash-Ext",
                kind="video",
                prompt="still going",
                params={"duration": 4},
                state=Task.State.RUNNING,
                price_unit="task",
                price_credits_per_unit=10,
                price_units=1,
                price_multiplier=Decimal(1),
                credits_charged=10,
                created_at=datetime.now(UTC) - timedelta(seconds=50),
            )
        ]
    )[0]
    client.force_login(alice)
    with CaptureQueriesContext(connection) as queries:
        page = client.get("/tasks/").content.decode()
    card = re.search(rf'id="task-{running.code}".*?</article>', page, re.S).group(0)
    assert re.search(r"≈(4[5-9]|5[0-5])% \(estimate\)", card), card
    assert len(typical_statements(queries)) == 1
    with CaptureQueriesContext(connection) as queries:
        client.get("/tasks/")
    assert typical_statements(queries) == []


def test_the_member_filter_list_is_read_once_and_a_newly_named_member_at_once(client, alice, bob):
    """The member list costs no query on a second page; a filter naming a member who shared
    after it was read still finds them, instead of calling the name unknown."""
    first = make_tasks(bob, 1)
    client.force_login(alice)
    with CaptureQueriesContext(connection) as cold:
        client.get("/gallery/")
    assert any('WHERE ("accounts_user"."is_active"' in q["sql"] for q in cold)
    with CaptureQueriesContext(connection) as warm:
        client.get("/gallery/")
    assert not any('WHERE ("accounts_user"."is_active"' in q["sql"] for q in warm), [
        q["sql"] for q in warm
    ]

    carol = type(bob).objects.create_user("carol-new", display_name="Carol N.")
    make_tasks(carol, 1, start=len(first) + 10)
    page = client.get("/gallery/?member=carol-new").content.decode()
    assert "No member with gallery results has that name" not in page
    assert '<option value="carol-new" selected>Carol N.</option>' in page


def test_the_filter_fields_are_rendered_once_per_filter_and_show_each_filters_values(
    client, alice, bob
):
    make_tasks(bob, 3)
    client.force_login(alice)

    def fields_rendered(query: str) -> tuple[bool, str]:
        response = client.get("/gallery/" + query)
        names = [template.name for template in response.templates]
        return "_fields.html" in names, response.content.decode()

    assert fields_rendered("?kind=video&q=fox")[0]
    rendered, page = fields_rendered("?kind=video&q=fox")
    assert not rendered
    assert '<option value="video" selected>Videos</option>' in page and 'value="fox"' in page

    rendered, page = fields_rendered("?kind=image&date_from=yesterday")
    assert rendered
    assert '<option value="image" selected>Images</option>' in page
    assert "Write the date as YYYY-MM-DD" in page and 'value="fox"' not in page
    # The same filter's errors come back with its kept fields.
    rendered, page = fields_rendered("?kind=image&date_from=yesterday")
    assert not rendered and "Write the date as YYYY-MM-DD" in page
