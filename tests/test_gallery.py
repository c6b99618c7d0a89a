"""The team gallery: the grid and its filters, cursor pages, one result's page, favourites, the
cost of a page in queries, and the benchmark command."""

import base64
import html
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.db import connection
from django.shortcuts import resolve_url
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from generations.gallery import PAGE_SIZE, Cursor, member_choices
from generations.management.commands.benchmark_gallery import create_gallery
from generations.models import Favourite, Result, Task

NOW = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)
TILE = re.compile(r'class="gallery-link" href="/gallery/([0-9a-f-]{36})/"')


def make_result(
    user,
    prompt="a cat on a skateboard",
    *,
    provider="apimart",
    model="Omni-Flash-Ext",
    kind="video",
    finished_at=NOW,
    state=Task.State.SUCCEEDED,
    visibility=Task.Visibility.TEAM,
    deleted_at=None,
    params=None,
) -> Task:
    """A finished task with one stored result row (the files themselves are not needed)."""
    task = Task.objects.create(
        user=user,
        provider=provider,
        model=model,
        kind=kind,
        prompt=prompt,
        params={"duration": 4, "resolution": "720p", "aspect_ratio": "16:9"}
        if params is None
        else params,
        key_label="Mine",
        state=state,
        visibility=visibility,
        deleted_at=deleted_at,
        price_unit="task",
        price_credits_per_unit=10,
        price_units=1,
        price_multiplier=Decimal(1),
        credits_charged=10,
        created_at=finished_at - timedelta(minutes=1),
        finished_at=finished_at,
    )
    video = kind == "video"
    Result.objects.create(
        task=task,
        file=f"results/{task.code}.{'mp4' if video else 'png'}",
        poster=f"posters/{task.code}.jpg",
        content_type="video/mp4" if video else "image/png",
        size=123_456,
        width=1280,
        height=720,
        duration=4.0 if video else None,
    )
    return task


def codes(response) -> list[str]:
    """The tasks a gallery page or partial shows, in order."""
    return TILE.findall(response.content.decode())


def next_url(response) -> str:
    match = re.search(r'hx-get="([^"]+)"', response.content.decode())
    return html.unescape(match.group(1)) if match else ""


@pytest.fixture
def as_alice(client, alice):
    client.force_login(alice)
    return client


# --- The grid ------------------------------------------------------------------------------


def test_it_shows_team_results_newest_first_and_nothing_else(as_alice, alice, bob):
    older = make_result(alice, "older", finished_at=NOW - timedelta(hours=2))
    newest = make_result(bob, "newest", finished_at=NOW)
    middle = make_result(bob, "middle", finished_at=NOW - timedelta(hours=1))
    make_result(alice, "my private one", visibility=Task.Visibility.PRIVATE)
    make_result(bob, "bob's private one", visibility=Task.Visibility.PRIVATE)
    make_result(bob, "failed", state=Task.State.FAILED)
    make_result(bob, "running", state=Task.State.RUNNING)
    make_result(bob, "deleted", deleted_at=NOW)

    response = as_alice.get("/gallery/")

    assert response.status_code == 200
    assert codes(response) == [str(newest.code), str(middle.code), str(older.code)]
    page = response.content.decode()
    for hidden in ("private one", "failed", "running", "deleted"):
        assert hidden not in page


def test_its_tiles_show_a_lazy_poster_with_its_size_the_model_and_the_member(as_alice, bob):
    video = make_result(bob, "a fox", finished_at=NOW)
    image = make_result(
        bob,
        "a lighthouse",
        provider="omnivideo",
        model="nano-banana-2",
        kind="image",
        finished_at=NOW - timedelta(minutes=5),
        params={},
    )
    Favourite.objects.create(user=bob, task=video)  # bob's star is not alice's

    page = as_alice.get("/gallery/").content.decode()

    poster = f'src="/t/{video.code}/poster/0" alt="a fox" width="1280" height="720" loading="lazy"'
    assert poster in page
    assert f'src="/t/{image.code}/poster/0"' in page
    # A video tile only names its file for the hover preview; no <video> loads with the page.
    assert f'data-preview="/t/{video.code}/file/0"' in page
    assert f'data-preview="/t/{image.code}/file/0"' not in page
    assert "<video" not in page
    assert "Omni Flash Ext" in page and "Nano Banana 2" in page
    assert "Bob B." in page
    assert "★" not in page
    assert "<script>" not in page.split("</head>")[1]  # no inline scripts in the body


def test_it_shows_my_favourites_with_a_star(as_alice, alice, bob):
    starred = make_result(bob, "starred", finished_at=NOW)
    make_result(bob, "plain", finished_at=NOW - timedelta(minutes=1))
    Favourite.objects.create(user=alice, task=starred)

    page = as_alice.get("/gallery/").content.decode()

    tiles = page.split('class="gallery-tile"')[1:]
    assert "One of your favourites" in tiles[0]
    assert "One of your favourites" not in tiles[1]


def test_it_escapes_prompts(as_alice, alice, bob):
    task = make_result(bob, "<script>alert(1)</script> a cat")

    for url in ("/gallery/", f"/gallery/{task.code}/"):
        page = as_alice.get(url).content.decode()
        assert "&lt;script&gt;alert(1)&lt;/script&gt; a cat" in page
        assert "<script>alert(1)" not in page


def test_it_says_so_when_nothing_is_shared_yet(as_alice):
    page = as_alice.get("/gallery/").content.decode()
    assert "Nothing has been shared yet" in page


# --- Filters -------------------------------------------------------------------------------


@pytest.fixture
def mixed(alice, bob):
    """Results of two members, both kinds, three models and three days."""
    return {
        "alice_video": make_result(
            alice, "A red fox in the snow", finished_at=datetime(2025, 6, 1, 9, tzinfo=UTC)
        ),
        "alice_image": make_result(
            alice,
            "A paper boat",
            provider="omnivideo",
            model="nano-banana-2",
            kind="image",
            finished_at=datetime(2025, 6, 2, 9, tzinfo=UTC),
            params={},
        ),
        "bob_video": make_result(
            bob,
            "Two astronauts at dusk",
            provider="omniakey",
            model="sora",
            finished_at=datetime(2025, 6, 3, 23, 59, tzinfo=UTC),
        ),
        "bob_image": make_result(
            bob,
            "A lighthouse, foxglove in front",
            provider="omnivideo",
            model="gpt-image-2",
            kind="image",
            finished_at=datetime(2025, 6, 4, 0, 0, tzinfo=UTC),
            params={},
        ),
    }


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("kind=video", ["bob_video", "alice_video"]),
        ("kind=image", ["bob_image", "alice_image"]),
        ("model=omnivideo/nano-banana-2", ["alice_image"]),
        ("model=omniakey/sora", ["bob_video"]),
        ("member=bob", ["bob_image", "bob_video"]),
        ("date_from=2025-06-02", ["bob_image", "bob_video", "alice_image"]),
        ("date_to=2025-06-03", ["bob_video", "alice_image", "alice_video"]),
        ("date_from=2025-06-02&date_to=2025-06-03", ["bob_video", "alice_image"]),
        ("q=FOX", ["bob_image", "alice_video"]),
        ("q=astronauts", ["bob_video"]),
        ("kind=image&member=alice", ["alice_image"]),
        ("q=nothing+like+this", []),
    ],
)
def test_each_filter_narrows_the_grid(as_alice, mixed, query, expected):
    response = as_alice.get(f"/gallery/?{query}")

    assert response.status_code == 200
    assert codes(response) == [str(mixed[name].code) for name in expected]
    if not expected:
        assert "No results match these filters." in response.content.decode()


def test_its_filter_form_is_a_labelled_get_form_with_every_model_and_member(as_alice, mixed):
    page = as_alice.get("/gallery/?kind=video&member=bob").content.decode()

    assert '<form method="get" action="/gallery/"' in page
    assert '<button type="submit" class="button primary">Show results</button>' in page
    for field in ("kind", "model", "member", "date_from", "date_to", "q", "fav"):
        assert f'<label for="id_{field}">' in page
    assert '<optgroup label="OmniaKey">' in page
    assert '<option value="omnivideo/nano-banana-2">Nano Banana 2</option>' in page
    assert '<option value="bob" selected>Bob B.</option>' in page
    assert '<option value="video" selected>Videos</option>' in page
    assert 'type="date" name="date_from"' in page
    assert "Clear filters" in page


def test_its_member_choices_are_active_members_with_gallery_results(as_alice, alice, bob, carol):
    make_result(bob, "shared")
    make_result(carol, "private", visibility=Task.Visibility.PRIVATE)
    gone = type(alice).objects.create_user("dave", display_name="Dave D.", is_active=False)
    make_result(gone, "from someone who left")

    page = as_alice.get("/gallery/").content.decode()

    assert '<option value="bob">Bob B.</option>' in page
    assert 'value="carol"' not in page
    assert 'value="dave"' not in page
    assert 'value="alice"' not in page


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("kind=sculpture", "Choose videos or images; this filter was ignored."),
        ("model=nobody/nothing", "Omniweb has no such model; this filter was ignored."),
        ("model=sora", "Omniweb has no such model; this filter was ignored."),
        ("member=mallory", "No member with gallery results has that name"),
        ("date_from=yesterday", "Write the date as YYYY-MM-DD"),
        ("date_to=2025-13-45", "Write the date as YYYY-MM-DD"),
        ("date_from=0001-01-01", "Pick a date from 1900 to 9998"),
        ("date_to=9999-12-31", "Pick a date from 1900 to 9998"),
        ("date_from=2025-06-03&date_to=2025-06-01", "This date is before the “From” date"),
        ("cursor=not-a-cursor", "That link to older results is broken or out of date"),
        ("cursor=%%%", "That link to older results is broken or out of date"),
        ("cursor=" + "A" * 300, "That link to older results is broken or out of date"),
    ],
)
def test_a_bad_filter_or_cursor_is_reported_and_ignored(as_alice, mixed, query, message):
    response = as_alice.get(f"/gallery/?{query}")

    assert response.status_code == 200
    page = response.content.decode()
    assert html.escape(message, quote=False) in page or message in page
    assert len(codes(response)) >= 2  # the bad filter did not narrow the grid


@pytest.mark.parametrize(
    "raw",
    [
        "2025-06-01T00:00:00+00:00|0",  # no primary key is 0
        "2025-06-01T00:00:00+00:00|99999999999999999999999",  # beyond any key
        "2025-06-01T00:00:00|12",  # a time without a zone
        "0001-01-01T00:00:00+14:00|12",  # before the first moment there is in UTC
        "yesterday|12",
        "just text",
    ],
)
def test_a_cursor_we_could_not_have_made_is_reported(as_alice, mixed, raw):
    encoded = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
    assert Cursor.decode(encoded) is None

    response = as_alice.get(f"/gallery/?cursor={encoded}")

    assert response.status_code == 200
    assert "That link to older results is broken" in response.content.decode()
    assert len(codes(response)) == 4


def test_a_bad_date_is_reported_beside_its_field(as_alice, mixed):
    page = as_alice.get("/gallery/?date_from=31/12/2025&kind=image").content.decode()

    field = page.split('<label for="id_date_from">')[1].split("</div>")[0]
    assert 'class="field-error" role="alert"' in field
    assert "Write the date as YYYY-MM-DD" in field
    assert 'value="31/12/2025"' in field  # what the member typed stays, to be corrected


def test_only_my_favourites_shows_what_i_starred(as_alice, alice, bob, mixed):
    Favourite.objects.create(user=alice, task=mixed["bob_video"])
    Favourite.objects.create(user=alice, task=mixed["alice_video"])
    Favourite.objects.create(user=bob, task=mixed["bob_image"])

    response = as_alice.get("/gallery/?fav=1")

    assert codes(response) == [str(mixed["bob_video"].code), str(mixed["alice_video"].code)]
    assert 'name="fav" value="1"' in response.content.decode()
    assert "checked" in response.content.decode().split('name="fav"')[1].split(">")[0]


# --- Cursor pages and infinite scroll -----------------------------------------------------


def test_its_pages_neither_repeat_nor_skip_even_when_results_arrive(as_alice, alice, bob):
    # Ten share one finishing time, so the order within a second has to come from the key.
    tasks = [
        make_result(bob if i % 2 else alice, f"take {i}", finished_at=NOW - timedelta(seconds=i))
        for i in range(40)
    ]
    tasks += [
        make_result(bob, f"same second {i}", finished_at=NOW - timedelta(hours=1))
        for i in range(10)
    ]
    expected = [
        str(t.code) for t in sorted(tasks, key=lambda t: (t.finished_at, t.pk), reverse=True)
    ]

    first = as_alice.get("/gallery/")
    assert codes(first) == expected[:PAGE_SIZE]
    # A new result finishes between the two page loads.
    make_result(bob, "brand new", finished_at=timezone.now())
    second = as_alice.get(next_url(first))
    assert codes(second) == expected[PAGE_SIZE : 2 * PAGE_SIZE]
    third = as_alice.get(next_url(second))
    assert codes(third) == expected[2 * PAGE_SIZE :]
    assert next_url(third) == ""
    assert "Older results" not in third.content.decode()
    assert "← Newest results" in third.content.decode()


def test_its_next_pages_keep_the_filters(as_alice, alice, bob):
    for i in range(30):
        make_result(alice, f"fox {i}", finished_at=NOW - timedelta(minutes=i))
        make_result(bob, f"boat {i}", finished_at=NOW - timedelta(minutes=i, seconds=30))

    first = as_alice.get("/gallery/?member=alice&q=fox")
    url = next_url(first)
    assert "member=alice" in url and "q=fox" in url and "cursor=" in url
    second = as_alice.get(url)
    assert len(codes(first)) == PAGE_SIZE and len(codes(second)) == 30 - PAGE_SIZE
    assert "boat" not in second.content.decode()


def test_its_last_tile_is_followed_by_an_infinite_scroll_trigger_and_a_plain_link(as_alice, bob):
    for i in range(PAGE_SIZE + 1):
        make_result(bob, f"take {i}", finished_at=NOW - timedelta(seconds=i))

    response = as_alice.get("/gallery/?kind=video")
    page = response.content.decode()

    url = next_url(response)
    assert url.startswith("/gallery/?kind=video&cursor=")
    sentinel = re.search(r'<li class="gallery-more"[^>]*>', page).group(0)
    assert 'hx-trigger="revealed"' in sentinel
    assert 'hx-swap="outerHTML"' in sentinel
    # Without JavaScript the same page opens through a plain link.
    assert f'<a class="button" href="{html.escape(url)}">Older results</a>' in page


def test_an_htmx_request_gets_only_the_next_tiles(as_alice, bob):
    tasks = [
        make_result(bob, f"take {i}", finished_at=NOW - timedelta(seconds=i))
        for i in range(PAGE_SIZE * 2 + 1)
    ]
    first = as_alice.get("/gallery/")

    partial = as_alice.get(next_url(first), headers={"HX-Request": "true"})

    body = partial.content.decode()
    assert "<html" not in body and "<form" not in body
    assert body.count('class="gallery-tile"') == PAGE_SIZE
    assert codes(partial) == [str(t.code) for t in tasks[PAGE_SIZE : 2 * PAGE_SIZE]]
    last = as_alice.get(next_url(partial), headers={"HX-Request": "true"})
    assert codes(last) == [str(tasks[-1].code)]
    assert "gallery-more" not in last.content.decode()


def test_a_boosted_filter_form_gets_the_whole_page(as_alice, bob):
    make_result(bob, "a fox")
    response = as_alice.get("/gallery/?q=fox", headers={"HX-Request": "true", "HX-Boosted": "true"})
    assert "<html" in response.content.decode()


# --- Queries --------------------------------------------------------------------------------


def test_a_page_costs_the_same_few_queries_with_ten_thousand_results(
    client, alice, bob, carol, django_assert_max_num_queries
):
    tasks = create_gallery([alice, bob, carol], 10_000, favourites_of=alice)
    client.force_login(alice)
    middle = tasks[5_000]
    pages = {
        "first": "/gallery/",
        "middle": f"/gallery/?cursor={Cursor(middle.finished_at, middle.pk).encode()}",
        "filtered": "/gallery/?kind=video&member=bob&q=fox&date_from=2000-01-01&fav=1",
    }
    # The member filter's list is kept for a while after the first page reads it.
    member_choices()
    counts = {}
    for name, url in pages.items():
        with django_assert_max_num_queries(8), CaptureQueriesContext(connection) as queries:
            response = client.get(url)
        assert response.status_code == 200
        assert len(codes(response)) == PAGE_SIZE, name
        counts[name] = len(queries)

    assert len(set(counts.values())) == 1, counts
    middle_codes = codes(client.get(pages["middle"]))
    assert middle_codes[0] == str(tasks[4_999].code)  # strictly older than the cursor's item


# --- One result's page ----------------------------------------------------------------------


def test_its_item_page_shows_the_result_large_with_its_prompt_and_settings(as_alice, bob):
    task = make_result(bob, "a red fox in the snow", provider="omniakey", model="sora")

    response = as_alice.get(f"/gallery/{task.code}/")

    page = response.content.decode()
    assert response.status_code == 200
    assert '<video controls preload="none" width="1280" height="720"' in page
    assert f'poster="/t/{task.code}/poster/0"' in page
    assert f'<source src="/t/{task.code}/file/0" type="video/mp4">' in page
    assert "a red fox in the snow" in page
    for fact in ("Sora", "OmniaKey", "4 s", "720p", "16:9", "Bob B.", "15 Jun 2025"):
        assert fact in page
    assert re.search(rf'href="[^"]*/create/\?from={task.code}"', page)
    assert "Reuse prompt and settings" in page
    assert 'aria-pressed="false"' in page
    assert "Task details" not in page  # the task page is bob's


def test_its_item_page_shows_an_image_in_full(as_alice, bob):
    task = make_result(
        bob, "a lighthouse", provider="omnivideo", model="nano-banana-2", kind="image", params={}
    )
    page = as_alice.get(f"/gallery/{task.code}/").content.decode()
    assert f'<img src="/t/{task.code}/file/0" alt="a lighthouse" width="1280"' in page
    assert "<video" not in page
    assert "Duration" not in page


def test_a_member_sees_their_own_private_result_but_a_teammate_gets_404(client, alice, bob):
    private = make_result(alice, "just for me", visibility=Task.Visibility.PRIVATE)

    client.force_login(alice)
    page = client.get(f"/gallery/{private.code}/")
    assert page.status_code == 200
    assert "only you see this result" in page.content.decode()
    assert client.post(f"/gallery/{private.code}/favourite").status_code == 302

    client.force_login(bob)
    assert client.get(f"/gallery/{private.code}/").status_code == 404
    assert client.post(f"/gallery/{private.code}/favourite").status_code == 404


@pytest.mark.parametrize(
    "hidden",
    [
        {"state": Task.State.FAILED},
        {"state": Task.State.RUNNING},
        {"deleted_at": NOW},
    ],
)
def test_unfinished_or_deleted_results_have_no_item_page(client, alice, hidden):
    task = make_result(alice, "not here", **hidden)
    client.force_login(alice)
    assert client.get(f"/gallery/{task.code}/").status_code == 404
    assert client.post(f"/gallery/{task.code}/favourite").status_code == 404
    assert not Favourite.objects.exists()


def test_an_unknown_code_answers_404(as_alice):
    assert as_alice.get("/gallery/00000000-0000-0000-0000-000000000000/").status_code == 404


# --- Favourites -----------------------------------------------------------------------------


def test_a_plain_favourite_post_toggles_and_returns_to_the_item(as_alice, alice, bob):
    task = make_result(bob, "a fox")
    url = f"/gallery/{task.code}/favourite"

    response = as_alice.post(url, follow=True)
    assert response.redirect_chain == [(f"/gallery/{task.code}/", 302)]
    assert Favourite.objects.filter(user=alice, task=task).exists()
    page = response.content.decode()
    assert 'aria-pressed="true"' in page and "Favourited" in page
    assert "Added to your favourites." in page

    response = as_alice.post(url, follow=True)
    assert not Favourite.objects.filter(user=alice, task=task).exists()
    assert 'aria-pressed="false"' in response.content.decode()
    assert "Removed from your favourites." in response.content.decode()


def test_an_htmx_favourite_post_returns_the_new_button(as_alice, alice, bob):
    task = make_result(bob, "a fox")
    Favourite.objects.create(user=bob, task=task)  # bob's star stays whatever alice does
    url = f"/gallery/{task.code}/favourite"

    response = as_alice.post(url, headers={"HX-Request": "true"})
    body = response.content.decode()
    assert response.status_code == 200
    assert '<form class="favourite-form"' in body and "<html" not in body
    assert 'aria-pressed="true"' in body and "Favourited" in body
    assert f'hx-post="{url}"' in body and 'name="csrfmiddlewaretoken"' in body

    body = as_alice.post(url, headers={"HX-Request": "true"}).content.decode()
    assert 'aria-pressed="false"' in body
    assert "</span> Favourite</button>" in body
    assert not Favourite.objects.filter(user=alice).exists()
    assert Favourite.objects.filter(user=bob, task=task).exists()


def test_a_favourite_needs_a_csrf_token_and_a_post(alice, bob):
    task = make_result(bob, "a fox")
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(alice)

    assert strict.post(f"/gallery/{task.code}/favourite").status_code == 403
    assert strict.get(f"/gallery/{task.code}/favourite").status_code == 405
    assert not Favourite.objects.exists()


def test_a_favourite_with_the_csrf_header_htmx_sends_is_accepted(alice, bob):
    task = make_result(bob, "a fox")
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(alice)
    page = strict.get(f"/gallery/{task.code}/").content.decode()
    token = re.search(r'"x-csrftoken": "([^"]+)"', page).group(1)

    response = strict.post(
        f"/gallery/{task.code}/favourite", headers={"HX-Request": "true", "X-CSRFToken": token}
    )
    assert response.status_code == 200
    assert Favourite.objects.filter(user=alice, task=task).exists()


# --- Signed out -----------------------------------------------------------------------------


def test_signed_out_visitors_are_sent_to_log_in(client, bob):
    task = make_result(bob, "a fox")
    for response in (
        client.get("/gallery/"),
        client.get(f"/gallery/{task.code}/"),
        client.post(f"/gallery/{task.code}/favourite"),
    ):
        assert response.status_code == 302
        assert response.url.startswith(resolve_url(settings.LOGIN_URL) + "?next=")
    assert not Favourite.objects.exists()


# --- The benchmark command ------------------------------------------------------------------


@pytest.mark.slow
def test_the_benchmark_prints_a_table_with_the_ratio(tmp_path):
    env = dict(os.environ)
    # Its own throwaway database is made next to this (never created) one.
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'bench.sqlite3'}"
    env.pop("REDIS_URL", None)
    run = subprocess.run(
        [sys.executable, "manage.py", "benchmark_gallery", "--results", "200", "--repeat", "2"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "page    view        median ms    p95 ms  queries  gallery/bare" in out
    assert re.search(r"^first\s+gallery\s+[\d.]+\s+[\d.]+\s+\d+\s+[\d.]+x$", out, re.M)
    assert re.search(r"^middle\s+bare\s+[\d.]+\s+[\d.]+\s+\d+$", out, re.M)
    assert "The throwaway database was dropped." in out
    assert list(tmp_path.iterdir()) == []  # nothing left behind
