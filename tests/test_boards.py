"""Boards: making, editing and deleting them, the "Boards" control on every place a result is
shown (htmx and plain forms), bounds, the board page's filters and cursor pages, and who may
reach each board URL."""

import html
import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import unquote

import pytest
from django.test import Client
from django.urls import URLPattern, get_resolver, reverse
from django.utils import timezone

from generations import boards as board_views
from generations.gallery import PAGE_SIZE
from generations.models import Result, Task
from generations.models.boards import BOARD_NAME_CHARS, Board, BoardItem

NOW = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)
TILE = re.compile(r'class="gallery-link" href="/gallery/([0-9a-f-]{36})/"')
PANEL_LINK = re.compile(r'<a href="(/boards/for/[0-9a-f-]{36}/[^"]*)" hx-boost="true"')
HTMX = {"HTTP_HX_REQUEST": "true"}


def make_result(
    user,
    prompt="a cat on a skateboard",
    *,
    kind="video",
    finished_at=NOW,
    state=Task.State.SUCCEEDED,
    visibility=Task.Visibility.TEAM,
    run=None,
) -> Task:
    """A finished task with one stored result row (the files themselves are not needed)."""
    task = Task.objects.create(
        user=user,
        run=run,
        provider="apimart",
        model="Omni-Flash-Ext",
        kind=kind,
        prompt=prompt,
        params={"duration": 4, "resolution": "720p", "aspect_ratio": "16:9"},
        key_label="Mine",
        state=state,
        visibility=visibility,
        price_unit="task",
        price_credits_per_unit=10,
        price_units=1,
        price_multiplier=Decimal(1),
        credits_charged=10,
        created_at=finished_at - timedelta(minutes=1),
        finished_at=finished_at if state in Task.TERMINAL_STATES else None,
    )
    video = kind == "video"
    Result.objects.create(
        task=task,
        file=f"results/{task.code}.{'mp4' if video else 'png'}",
        poster=f"posters/{task.code}.jpg" if video else "",
        content_type="video/mp4" if video else "image/png",
        size=123_456,
        width=1280,
        height=720,
        duration=4.0 if video else None,
    )
    return task


def make_board(owner, name="Fox campaign", *, visibility="team", tasks=()) -> Board:
    board = Board.objects.create(owner=owner, name=name, visibility=visibility)
    for task in tasks:
        BoardItem.objects.create(board=board, task=task, added_by=owner)
    return board


def codes(response) -> list[str]:
    return TILE.findall(response.content.decode())


def on_board(board) -> set:
    return set(board.items.values_list("task_id", flat=True))


def toggle_url(board, task) -> str:
    return reverse("generations-board-toggle", kwargs={"code": board.code, "task": task.code})


def panel_url(task) -> str:
    return reverse("generations-board-panel", kwargs={"task": task.code})


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def as_alice(alice) -> Client:
    return logged_in(alice)


@pytest.fixture
def as_bob(bob) -> Client:
    return logged_in(bob)


# --- Making, listing, editing and deleting boards --------------------------------------------


def test_a_member_makes_a_board_and_lands_on_it(as_alice, alice):
    response = as_alice.post(
        "/boards/new",
        {
            "name": "Launch teaser",
            "description": "Shots for the spring teaser",
            "visibility": "team",
        },
    )

    board = Board.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/boards/{board.code}/"
    assert (board.owner, board.name, board.visibility) == (alice, "Launch teaser", "team")
    page = as_alice.get(response["Location"]).content.decode()
    assert "Launch teaser" in page
    assert "Shots for the spring teaser" in page
    assert "Nothing on this board yet" in page


def test_the_list_shows_my_boards_and_the_teams_with_owner_visibility_count_and_cover(
    as_bob, alice, bob
):
    shared = make_result(alice, "a shared fox", finished_at=NOW - timedelta(hours=1))
    secret = make_result(alice, "alice's private fox", visibility=Task.Visibility.PRIVATE)
    team_board = make_board(alice, "Foxes", tasks=[shared, secret])
    make_board(alice, "Alice's secret board", visibility="private", tasks=[shared])
    make_board(bob, "Bob's drafts", visibility="private")

    page = html.unescape(as_bob.get("/boards/").content.decode())

    mine, team = page.split('id="team-heading"')
    assert "Bob's drafts" in mine and "Yours · private · 0 results" in mine
    assert "Foxes" in team and "Alice A. · team · 1 result" in team
    assert "Alice's secret board" not in page
    # The cover is the newest entry bob may see: alice's private result is newer but hidden.
    assert f"/t/{shared.code}/poster/0" in team
    assert str(secret.code) not in page
    assert f'href="/boards/{team_board.code}/"' in page


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"name": ""}, "This field is required."),
        ({"name": "x" * (BOARD_NAME_CHARS + 1)}, f"at most {BOARD_NAME_CHARS} characters"),
        ({"name": "Ok", "description": "d" * 1001}, "at most 1000 characters"),
        ({"name": "Ok", "visibility": "everyone"}, "Select a valid choice"),
    ],
)
def test_a_board_that_breaks_a_limit_is_refused_with_the_reason(as_alice, fields, error):
    response = as_alice.post("/boards/new", {"visibility": "team", **fields})

    assert response.status_code == 200
    assert error in html.unescape(response.content.decode())
    assert not Board.objects.exists()


def test_a_member_cannot_make_more_boards_than_the_bound(as_alice, alice, monkeypatch):
    monkeypatch.setattr(board_views, "MAX_BOARDS_PER_MEMBER", 2)
    make_board(alice, "One")
    make_board(alice, "Two")

    response = as_alice.post("/boards/new", {"name": "Three", "visibility": "team"})

    assert "the most one member may have" in response.content.decode()
    assert Board.objects.filter(owner=alice).count() == 2
    assert "Make the board" not in as_alice.get("/boards/").content.decode()


def test_the_owner_edits_name_description_visibility_and_cover(as_alice, alice, bob):
    first = make_result(alice, "first fox", finished_at=NOW - timedelta(hours=1))
    second = make_result(bob, "second fox")
    board = make_board(alice, tasks=[first, second])

    form = as_alice.get(f"/boards/{board.code}/edit").content.decode()
    assert f'value="{first.code}"' in form and "first fox" in form

    response = as_alice.post(
        f"/boards/{board.code}/edit",
        {
            "name": "Renamed",
            "description": "Now private",
            "visibility": "private",
            "cover_choice": str(first.code),
        },
    )

    assert response.status_code == 302
    board.refresh_from_db()
    assert (board.name, board.description, board.visibility) == (
        "Renamed",
        "Now private",
        "private",
    )
    assert board.cover == first
    # The chosen cover, not the newest entry, heads the board and its card in the list.
    assert f"/t/{first.code}/poster/0" in as_alice.get("/boards/").content.decode()


def test_a_cover_must_be_one_of_the_boards_results(as_alice, alice):
    elsewhere = make_result(alice, "not on the board")
    board = make_board(alice, tasks=[make_result(alice)])

    response = as_alice.post(
        f"/boards/{board.code}/edit",
        {"name": "Foxes", "visibility": "team", "cover_choice": str(elsewhere.code)},
    )

    assert "Select a valid choice" in response.content.decode()
    board.refresh_from_db()
    assert board.cover is None


def test_a_teammate_edits_a_team_board_but_not_who_sees_it(as_bob, alice):
    board = make_board(alice, "Foxes")

    form = as_bob.get(f"/boards/{board.code}/edit").content.decode()
    assert 'name="visibility"' not in form
    as_bob.post(
        f"/boards/{board.code}/edit",
        {"name": "Foxes, final", "visibility": "private", "cover_choice": ""},
    )

    board.refresh_from_db()
    assert (board.name, board.visibility) == ("Foxes, final", "team")


def test_a_teammate_saving_keeps_a_cover_they_cannot_see(as_bob, alice, bob):
    hidden = make_result(alice, "alice's private cover", visibility=Task.Visibility.PRIVATE)
    board = make_board(alice, tasks=[hidden, make_result(bob, "bob's")])
    board.cover = hidden
    board.save()

    form = as_bob.get(f"/boards/{board.code}/edit").content.decode()
    assert "Keep the current cover" in form
    assert "alice's private cover" not in form
    as_bob.post(
        f"/boards/{board.code}/edit",
        {"name": "Still foxes", "description": "", "cover_choice": "keep"},
    )

    board.refresh_from_db()
    assert (board.name, board.cover) == ("Still foxes", hidden)


def test_deleting_a_board_asks_first_and_never_deletes_its_results(as_alice, alice, bob):
    kept = [make_result(alice, "fox one"), make_result(bob, "fox two")]
    board = make_board(alice, tasks=kept)
    other = make_board(bob, "Bob's board", tasks=[kept[0]])

    confirm = as_alice.get(f"/boards/{board.code}/delete")
    assert confirm.status_code == 200
    assert "2 results stay in the gallery" in confirm.content.decode()
    assert Board.objects.filter(pk=board.pk).exists()

    response = as_alice.post(f"/boards/{board.code}/delete", follow=True)

    assert response.redirect_chain == [("/boards/", 302)]
    assert "Its results are still there." in response.content.decode()
    assert not Board.objects.filter(pk=board.pk).exists()
    assert Task.objects.filter(pk__in=[t.pk for t in kept], deleted_at__isnull=True).count() == 2
    assert Result.objects.filter(task__in=kept).count() == 2
    assert on_board(other) == {kept[0].pk}
    assert set(codes(as_alice.get("/gallery/"))) == {str(t.code) for t in kept}


# --- The control on each place a result is shown ---------------------------------------------


def place_url(place: str, task: Task) -> str:
    return {
        "gallery": "/gallery/",
        "gallery item": f"/gallery/{task.code}/",
        "task page": f"/t/{task.code}/",
        "run page": f"/run/{task.run.code}/",
        "compare": f"/run/{task.run.code}/compare",
    }[place]


PLACES = ["gallery", "gallery item", "task page", "run page", "compare"]


@pytest.mark.parametrize("place", PLACES)
def test_each_place_adds_and_removes_a_result_with_htmx_in_one_click(as_alice, alice, place):
    task = make_result(alice, "a fox in the snow")
    board = make_board(alice, "Foxes")

    page = as_alice.get(place_url(place, task)).content.decode()
    (link,) = [html.unescape(url) for url in PANEL_LINK.findall(page) if str(task.code) in url]
    panel = as_alice.get(link, **HTMX)
    assert panel.status_code == 200
    assert "<html" not in panel.content.decode()  # the panel alone, to swap in
    assert 'aria-pressed="false"' in panel.content.decode()

    added = as_alice.post(toggle_url(board, task), {"on": "1"}, **HTMX)

    assert added.status_code == 200
    assert on_board(board) == {task.pk}
    assert 'aria-pressed="true"' in added.content.decode()
    assert "Added to “Foxes”." in added.content.decode()

    removed = as_alice.post(toggle_url(board, task), {"on": "0"}, **HTMX)

    assert on_board(board) == set()
    assert 'aria-pressed="false"' in removed.content.decode()
    assert Task.objects.filter(pk=task.pk, deleted_at__isnull=True).exists()


@pytest.mark.parametrize("place", PLACES)
def test_each_place_adds_and_removes_a_result_without_javascript(as_alice, alice, place):
    task = make_result(alice, "a fox in the snow")
    board = make_board(alice, "Foxes")
    came_from = place_url(place, task)

    page = as_alice.get(came_from).content.decode()
    links = re.findall(r'<a href="(/boards/for/[^"]+)"[^>]*>Add to a board', page)
    (link,) = [html.unescape(url) for url in links if str(task.code) in url]
    panel = as_alice.get(link)
    assert "<html" in panel.content.decode()
    assert f'action="{toggle_url(board, task)}"' in panel.content.decode()

    # Pages that know their own address send it along, and the panel leads back there.
    back = came_from if "?next=" in link else ""
    added = as_alice.post(toggle_url(board, task), {"on": "1", "next": back}, follow=True)

    assert on_board(board) == {task.pk}
    assert unquote(added.redirect_chain[0][0]) == unquote(link)
    page = added.content.decode()
    assert "Added to “Foxes”." in page
    assert f'href="{back or f"/gallery/{task.code}/"}">Done</a>' in page

    as_alice.post(toggle_url(board, task), {"on": "0"})
    assert on_board(board) == set()


def test_the_tile_carries_the_control_and_the_gallery_costs_no_more_queries(
    as_alice, alice, django_assert_max_num_queries
):
    for i in range(5):
        make_result(alice, f"fox {i}", finished_at=NOW - timedelta(minutes=i))
    as_alice.get("/gallery/")  # warm the kept tiles and members
    without_boards = as_alice.get("/gallery/")
    make_board(alice, "Foxes", tasks=Task.objects.all())

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as before:
        as_alice.get("/gallery/")
    tiles = without_boards.content.decode().count('class="board-control"')
    assert tiles == 5
    with CaptureQueriesContext(connection) as after:
        as_alice.get("/gallery/")
    assert len(after) == len(before)
    assert not any("board" in query["sql"] for query in after)


def test_a_result_can_be_on_several_boards(as_alice, alice, bob):
    task = make_result(bob, "a shared fox")
    boards = [make_board(alice, "Foxes"), make_board(bob, "Bob's picks"), make_board(alice, "B")]

    for board in boards[:2]:
        as_alice.post(toggle_url(board, task), {"on": "1"}, **HTMX)

    panel = as_alice.get(panel_url(task), **HTMX).content.decode()
    assert panel.count('aria-pressed="true"') == 2
    assert panel.count('aria-pressed="false"') == 1
    # The boards holding it come first.
    assert panel.index("Bob&#x27;s picks") < panel.index(">B<")
    for board in boards[:2]:
        assert codes(as_alice.get(f"/boards/{board.code}/")) == [str(task.code)]
    assert codes(as_alice.get(f"/boards/{boards[2].code}/")) == []


def test_adding_twice_keeps_one_entry(as_alice, alice):
    task = make_result(alice)
    board = make_board(alice)

    as_alice.post(toggle_url(board, task), {"on": "1"}, **HTMX)
    as_alice.post(toggle_url(board, task), {"on": "1"}, **HTMX)

    assert board.items.count() == 1


@pytest.mark.parametrize(
    "hidden",
    [
        {"visibility": Task.Visibility.PRIVATE},
        {"state": Task.State.FAILED},
        {"state": Task.State.RUNNING},
    ],
)
def test_only_results_the_member_may_see_can_be_added(as_alice, alice, bob, hidden):
    task = make_result(bob, "bob's", **hidden)
    board = make_board(alice)

    assert as_alice.get(panel_url(task)).status_code == 404
    assert as_alice.post(toggle_url(board, task), {"on": "1"}).status_code == 404
    assert as_alice.post(f"/boards/for/{task.code}/new", {"name": "X"}).status_code == 404
    assert not BoardItem.objects.exists()


def test_a_deleted_result_cannot_be_added(as_alice, alice):
    task = make_result(alice)
    Task.objects.filter(pk=task.pk).update(deleted_at=timezone.now())
    board = make_board(alice)

    assert as_alice.post(toggle_url(board, task), {"on": "1"}).status_code == 404


def test_a_full_board_refuses_one_more_result(as_alice, alice, monkeypatch):
    monkeypatch.setattr(board_views, "MAX_ITEMS_PER_BOARD", 2)
    board = make_board(alice, "Small", tasks=[make_result(alice), make_result(alice)])
    third = make_result(alice, "one too many")

    response = as_alice.post(toggle_url(board, third), {"on": "1"}, **HTMX)

    assert "holds 2 results, the most a board may hold" in response.content.decode()
    assert board.items.count() == 2
    plain = as_alice.post(toggle_url(board, third), {"on": "1"}, follow=True)
    assert "the most a board may hold" in plain.content.decode()


def test_new_board_in_the_panel_makes_it_with_the_result_on_it(as_alice, alice):
    task = make_result(alice)

    response = as_alice.post(
        f"/boards/for/{task.code}/new", {"name": "Quick one", "visibility": "private"}, **HTMX
    )

    board = Board.objects.get()
    assert (board.name, board.visibility, board.owner) == ("Quick one", "private", alice)
    assert on_board(board) == {task.pk}
    page = response.content.decode()
    assert 'aria-pressed="true"' in page and "Quick one" in page


def test_new_board_in_the_panel_reports_a_missing_name(as_alice, alice):
    task = make_result(alice)

    response = as_alice.post(f"/boards/for/{task.code}/new", {"visibility": "team"}, **HTMX)

    assert "This field is required." in response.content.decode()
    assert '<details class="board-new" open>' in response.content.decode()
    assert not Board.objects.exists()


def test_the_panel_lists_only_the_boards_the_member_may_edit(as_bob, alice, bob):
    task = make_result(alice)
    make_board(alice, "Team foxes")
    make_board(alice, "Alice only", visibility="private")
    make_board(bob, "Bob only", visibility="private")

    panel = as_bob.get(panel_url(task), **HTMX).content.decode()

    assert "Team foxes" in panel and "Bob only" in panel
    assert "Alice only" not in panel


def test_the_panel_ignores_a_next_that_leaves_the_site(as_alice, alice):
    task = make_result(alice)
    board = make_board(alice)

    page = as_alice.get(panel_url(task) + "?next=https://evil.example/").content.decode()
    response = as_alice.post(toggle_url(board, task), {"on": "1", "next": "//evil.example/x"})

    assert "evil.example" not in page
    assert response["Location"] == panel_url(task)


def test_taking_off_the_chosen_cover_falls_back_to_the_newest(as_alice, alice):
    older = make_result(alice, "older", finished_at=NOW - timedelta(hours=1))
    newer = make_result(alice, "newer")
    board = make_board(alice, tasks=[older, newer])
    board.cover = older
    board.save()

    as_alice.post(toggle_url(board, older), {"on": "0"})

    board.refresh_from_db()
    assert board.cover is None
    assert f"/t/{newer.code}/poster/0" in as_alice.get(f"/boards/{board.code}/").content.decode()


# --- The board page --------------------------------------------------------------------------


def test_the_board_page_lists_results_newest_added_first_and_only_those_the_viewer_may_see(
    as_bob, alice, bob
):
    early = make_result(alice, "finished last, added first", finished_at=NOW)
    late = make_result(bob, "finished first, added last", finished_at=NOW - timedelta(days=3))
    hidden = make_result(alice, "alice's private one", visibility=Task.Visibility.PRIVATE)
    gone = make_result(alice, "deleted later")
    board = make_board(alice, tasks=[early, hidden, gone, late])
    Task.objects.filter(pk=gone.pk).update(deleted_at=timezone.now())

    response = as_bob.get(f"/boards/{board.code}/")

    assert codes(response) == [str(late.code), str(early.code)]
    page = response.content.decode()
    assert "private one" not in page and "deleted later" not in page
    assert "By Alice A." in page
    # The tiles are the gallery's: the hover preview and the control come with them.
    assert f'data-preview="/t/{late.code}/file/0"' in page


def test_the_board_page_shows_the_owners_private_results_to_the_owner(as_alice, alice):
    mine = make_result(alice, "my private one", visibility=Task.Visibility.PRIVATE)
    board = make_board(alice, visibility="private", tasks=[mine])

    response = as_alice.get(f"/boards/{board.code}/")

    assert codes(response) == [str(mine.code)]
    assert "private: only you see it" in response.content.decode()


def test_the_board_page_applies_the_gallerys_filters(as_alice, alice, bob):
    video = make_result(bob, "a fox running", kind="video")
    image = make_result(alice, "a fox sleeping", kind="image")
    other = make_result(alice, "a lighthouse", kind="video")
    starred = make_result(alice, "a starred fox", kind="image")
    board = make_board(alice, tasks=[video, image, other, starred])
    as_alice.post(f"/gallery/{starred.code}/favourite")
    url = f"/boards/{board.code}/"

    assert codes(as_alice.get(url, {"kind": "image"})) == [str(starred.code), str(image.code)]
    assert codes(as_alice.get(url, {"q": "fox"})) == [
        str(starred.code),
        str(image.code),
        str(video.code),
    ]
    assert codes(as_alice.get(url, {"member": "bob"})) == [str(video.code)]
    assert codes(as_alice.get(url, {"fav": "1"})) == [str(starred.code)]
    none = as_alice.get(url, {"q": "zebra"}).content.decode()
    assert "No results on this board match these filters." in none
    broken = as_alice.get(url, {"kind": "sound"})
    assert "Choose videos or images; this filter was ignored." in broken.content.decode()
    assert len(codes(broken)) == 4


def test_the_board_page_pages_with_a_cursor_and_infinite_scroll(as_alice, alice):
    tasks = [make_result(alice, f"fox {i}") for i in range(PAGE_SIZE + 5)]
    board = make_board(alice, tasks=tasks)
    newest_first = [str(task.code) for task in reversed(tasks)]

    first = as_alice.get(f"/boards/{board.code}/", {"kind": "video"})
    assert codes(first) == newest_first[:PAGE_SIZE]
    more = re.search(r'hx-get="([^"]+)" hx-trigger="revealed"', first.content.decode())
    next_url = html.unescape(more.group(1))
    assert "kind=video" in next_url and "cursor=" in next_url

    scrolled = as_alice.get(next_url, **HTMX)
    assert "<html" not in scrolled.content.decode()
    assert codes(scrolled) == newest_first[PAGE_SIZE:]
    assert 'hx-trigger="revealed"' not in scrolled.content.decode()

    # Without JavaScript the same link is a whole page, with a way back to the newest.
    page = as_alice.get(next_url).content.decode()
    assert "← Newest on this board" in page
    assert TILE.findall(page) == newest_first[PAGE_SIZE:]


@pytest.mark.parametrize("cursor", ["abc", "0", "-5", "9" * 30, "１２"])
def test_a_broken_cursor_shows_the_newest_with_a_note(as_alice, alice, cursor):
    task = make_result(alice)
    board = make_board(alice, tasks=[task])

    response = as_alice.get(f"/boards/{board.code}/", {"cursor": cursor})

    assert response.status_code == 200
    assert "That link to older results is broken" in response.content.decode()
    assert codes(response) == [str(task.code)]


# --- Who may reach each URL ------------------------------------------------------------------


def board_url_patterns() -> list[URLPattern]:
    """Every URL of the boards, read from the site's URL configuration by name."""
    found = []

    def walk(patterns):
        for pattern in patterns:
            if isinstance(pattern, URLPattern):
                if (pattern.name or "").startswith("generations-board"):
                    found.append(pattern)
            else:
                walk(pattern.url_patterns)

    walk(get_resolver().url_patterns)
    return found


BOARD_URLS = sorted(pattern.name for pattern in board_url_patterns())


def test_the_permission_tests_cover_every_board_url():
    assert set(BOARD_URLS) >= {
        "generations-boards",
        "generations-board",
        "generations-board-edit",
        "generations-board-delete",
        "generations-board-toggle",
        "generations-board-panel",
    }


def url_for(name: str, board: Board, task: Task) -> tuple[str, bool]:
    """The URL `name` for `board` and `task` where its route names them, and whether it names
    the board."""
    (pattern,) = [p for p in board_url_patterns() if p.name == name]
    kwargs = {}
    converters = pattern.pattern.converters
    if "code" in converters:
        kwargs["code"] = board.code
    if "task" in converters:
        kwargs["task"] = task.code
    return reverse(name, kwargs=kwargs), "code" in converters


# Who looks at which board: the owner and a teammate at a team board; the owner, another
# member and an admin at a private one; and someone not logged in.
ROLES = [
    ("owner", "team"),
    ("teammate", "team"),
    ("owner", "private"),
    ("other member", "private"),
    ("admin", "private"),
    ("anonymous", "private"),
    ("anonymous", "team"),
]


@pytest.mark.parametrize("name", BOARD_URLS)
@pytest.mark.parametrize(("role", "visibility"), ROLES)
def test_every_board_url_answers_each_role_as_it_should(name, role, visibility, alice, bob, carol):
    task = make_result(alice, "a shared fox")
    board = make_board(alice, "The board", visibility=visibility, tasks=[task])
    client = Client()
    if role != "anonymous":
        client.force_login({"owner": alice, "teammate": bob, "other member": bob}.get(role, carol))
    url, names_board = url_for(name, board, task)
    data = {"on": "1", "name": "Another", "visibility": "team", "cover_choice": ""}

    got = client.get(url), client.post(url, data)

    if role == "anonymous":
        for response in got:
            assert response.status_code == 302
            assert response["Location"].startswith(reverse("login"))
    elif role == "other member" or role == "admin":
        if names_board:
            # 404 to the method the URL takes; the other method answers exactly what it
            # answers for a board that does not exist (405), so nothing tells the two apart.
            statuses = [response.status_code for response in got]
            assert 404 in statuses and set(statuses) <= {404, 405}
            missing = Board(code=uuid.uuid4())
            nowhere, _ = url_for(name, missing, task)
            assert statuses == [
                client.get(nowhere).status_code,
                client.post(nowhere, data).status_code,
            ]
            assert Board.objects.filter(pk=board.pk, name="The board").exists()
            assert on_board(board) == {task.pk}
        else:
            # Pages about boards in general never mention another member's private board.
            for response in got:
                assert response.status_code in (200, 302, 405)
                assert "The board" not in response.content.decode()
    else:
        assert got[0].status_code in (200, 405)  # 405: a POST-only action
        assert got[1].status_code in (200, 302, 405)
        if got[0].status_code == 200:
            assert "<html" in got[0].content.decode()


def test_posts_need_the_csrf_token(alice):
    task = make_result(alice)
    board = make_board(alice)
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)

    refused = client.post(toggle_url(board, task), {"on": "1"})
    assert refused.status_code == 403
    assert not BoardItem.objects.exists()

    panel = client.get(panel_url(task)).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', panel).group(1)
    accepted = client.post(toggle_url(board, task), {"on": "1", "csrfmiddlewaretoken": token})
    assert accepted.status_code == 302
    assert on_board(board) == {task.pk}


def test_the_site_menu_links_to_the_boards(as_alice):
    page = as_alice.get("/boards/").content.decode()
    assert '<a href="/boards/" aria-current="page">Boards</a>' in page


def test_admins_see_boards_read_only(carol, alice):
    board = make_board(alice, "Foxes", tasks=[make_result(alice)])
    client = logged_in(carol)

    listing = client.get("/admin/generations/board/")
    assert listing.status_code == 200
    assert "Foxes" in listing.content.decode()
    assert client.get("/admin/generations/board/add/").status_code == 403
    assert (
        client.post(f"/admin/generations/board/{board.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    assert Board.objects.filter(pk=board.pk).exists()


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_in_a_browser_the_tiles_control_makes_a_board_and_toggles_in_one_click(
    page, live_server, alice
):
    from playwright.sync_api import expect

    from tests.test_browser_studio import log_in

    task = make_result(alice, "a fox in the browser")
    problems = []
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    log_in(page)
    page.goto("/gallery/")

    tile = page.locator(".gallery-tile", has=page.locator(f'a[href="/gallery/{task.code}/"]'))
    tile.get_by_text("Boards").click()
    panel = tile.locator(".board-panel")
    panel.get_by_label("New board").fill("Browser foxes")
    panel.get_by_role("button", name="Make it and add this result").click()
    toggle = tile.get_by_role("button", name=re.compile("Browser foxes"))
    toggle.wait_for()
    assert toggle.get_attribute("aria-pressed") == "true"
    board = Board.objects.get(name="Browser foxes")
    assert on_board(board) == {task.pk}

    toggle.click()
    expect(tile.locator(".board-toggle")).to_have_attribute("aria-pressed", "false")
    assert on_board(board) == set()
    tile.get_by_role("button", name=re.compile("Browser foxes")).click()
    expect(tile.locator(".board-toggle")).to_have_attribute("aria-pressed", "true")
    assert on_board(board) == {task.pk}
    # Still the gallery: the panel swapped in place, the address did not change.
    assert page.url.endswith("/gallery/")
    assert not [p for p in problems if "Content Security Policy" in p or "htmx" in p.lower()]
