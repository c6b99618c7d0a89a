"""Share links: making them from a board or a result (and their bounds), a member's list and
revoke, the admin's list, and the page a link opens for anyone: what it shows, what it never
shows, its headers and cookies, its media, and what a page costs."""

import re
from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection
from django.http import HttpResponseRedirect
from django.template.loader import render_to_string
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from generations import shares, views
from generations.models import Result, Task
from generations.models.boards import Board, BoardItem
from generations.models.shares import SHARE_DAYS_DEFAULT, SHARE_DAYS_MAX, ShareLink
from generations.services import delete_task
from tests.test_gallery import make_result

pytestmark = pytest.mark.django_db

VIDEO_BYTES = b"mp4 " * 10
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"0" * 16
POSTER_BYTES = b"\xff\xd8\xff"
SHARED_FILE = re.compile(r"/s/[A-Za-z0-9_-]+/file/([0-9a-f-]{36})/(\d+)")


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path


def stored(user, prompt="a heron at dawn", *, kind="video", **options) -> Task:
    """A finished task whose result and poster are really stored."""
    task = make_result(user, prompt, kind=kind, **options)
    result = task.results.get()
    body = VIDEO_BYTES if kind == "video" else PNG_BYTES
    assert default_storage.save(result.file.name, ContentFile(body)) == result.file.name
    assert default_storage.save(result.poster.name, ContentFile(POSTER_BYTES)) == result.poster.name
    return task


def board_of(owner, *tasks, visibility="team", name="Launch film", description="") -> Board:
    board = Board.objects.create(
        owner=owner, name=name, description=description, visibility=visibility
    )
    for task in tasks:
        BoardItem.objects.create(board=board, task=task, added_by=owner)
    return board


def link_to(user, *, board=None, task=None, include_prompts=False, days=7) -> ShareLink:
    return ShareLink.objects.create(
        created_by=user,
        board=board,
        task=task,
        include_prompts=include_prompts,
        expires_at=timezone.now() + timedelta(days=days),
    )


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def shared_codes(response) -> list[str]:
    """The tasks a shared page shows, in order (each once)."""
    found = []
    for code, _position in SHARED_FILE.findall(response.content.decode()):
        if code not in found:
            found.append(code)
    return found


def page_url(link: ShareLink) -> str:
    return reverse("generations-shared", args=[link.token])


def file_url(link: ShareLink, task: Task, position=0, what="file") -> str:
    return reverse(f"generations-shared-{what}", args=[link.token, task.code, position])


# --- Making links -------------------------------------------------------------------------------


def test_a_member_makes_a_board_link_with_the_defaults_and_gets_its_address(alice):
    board = board_of(alice, stored(alice))
    client = signed_in(alice)

    response = client.post(f"/boards/{board.code}/share", {"days": "7"})

    link = ShareLink.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/shares/?new={link.pk}"
    assert (link.board, link.task, link.created_by) == (board, None, alice)
    assert link.include_prompts is False
    assert abs(link.expires_at - (timezone.now() + timedelta(days=7))) < timedelta(minutes=1)
    listing = client.get(response["Location"]).content.decode()
    address = f"http://testserver/s/{link.token}/"
    assert f'value="{address}" autofocus' in listing
    assert "Your share link is ready" in listing


def test_a_link_keeps_its_prompts_choice_and_its_days(alice):
    task = stored(alice)
    client = signed_in(alice)

    response = client.post(
        f"/t/{task.code}/share", {"include_prompts": "on", "days": str(SHARE_DAYS_MAX)}
    )

    link = ShareLink.objects.get()
    assert response.status_code == 302
    assert (link.task, link.board, link.include_prompts) == (task, None, True)
    expected = timezone.now() + timedelta(days=SHARE_DAYS_MAX)
    assert abs(link.expires_at - expected) < timedelta(minutes=1)


@pytest.mark.parametrize(
    ("days", "message"),
    [
        ("0", "A link lasts at least 1 day."),
        (str(SHARE_DAYS_MAX + 1), f"A link lasts at most {SHARE_DAYS_MAX} days."),
        ("soon", "Enter a whole number of days, like 7."),
        ("", "Enter how many days the link lasts."),
    ],
)
def test_days_outside_the_bounds_are_refused_beside_the_field(alice, days, message):
    board = board_of(alice)

    response = signed_in(alice).post(f"/boards/{board.code}/share", {"days": days})

    assert response.status_code == 200
    assert message in response.content.decode()
    assert not ShareLink.objects.exists()


def test_the_share_page_offers_the_form_with_its_defaults(alice):
    board = board_of(alice, name="Moodboard")

    page = signed_in(alice).get(f"/boards/{board.code}/share").content.decode()

    assert "Share “Moodboard”" in page
    assert f'action="/boards/{board.code}/share"' in page
    assert 'name="include_prompts" value="on">' in page  # not checked
    assert f'max="{SHARE_DAYS_MAX}"' in page and f'value="{SHARE_DAYS_DEFAULT}"' in page


def test_the_partial_fits_a_board_or_a_task_and_keeps_step_with_the_bounds(alice):
    task = stored(alice)
    board = board_of(alice, task)

    for context, action in (
        (board, f"/boards/{board.code}/share"),
        (task, f"/t/{task.code}/share"),
    ):
        key = "board" if isinstance(context, Board) else "task"
        html = render_to_string("shares/_share_form.html", {key: context})
        assert f'action="{action}"' in html
        assert f'max="{SHARE_DAYS_MAX}"' in html and f'value="{SHARE_DAYS_DEFAULT}"' in html
        assert 'min="1"' in html


def test_a_teammates_team_board_can_be_shared_but_not_their_private_one(alice, bob):
    team = board_of(bob, visibility="team")
    private = board_of(bob, visibility="private")
    client = signed_in(alice)

    assert client.post(f"/boards/{team.code}/share", {"days": "3"}).status_code == 302
    assert client.post(f"/boards/{private.code}/share", {"days": "3"}).status_code == 404
    assert client.get(f"/boards/{private.code}/share").status_code == 404
    assert list(ShareLink.objects.values_list("board", flat=True)) == [team.pk]


def test_a_result_link_needs_a_finished_result_the_member_may_see(alice, bob):
    bobs_team = stored(bob)
    bobs_private = stored(bob, visibility="private")
    running = make_result(alice, state=Task.State.RUNNING)
    deleted = stored(alice)
    delete_task(deleted)
    client = signed_in(alice)

    assert client.post(f"/t/{bobs_team.code}/share", {"days": "1"}).status_code == 302
    for task in (bobs_private, running, deleted):
        assert client.post(f"/t/{task.code}/share", {"days": "1"}).status_code == 404
    assert list(ShareLink.objects.values_list("task", flat=True)) == [bobs_team.pk]


def test_live_links_are_bounded_per_member_and_revoking_frees_a_place(alice, monkeypatch):
    monkeypatch.setattr(shares, "MAX_LIVE_LINKS_PER_MEMBER", 2)
    board = board_of(alice)
    client = signed_in(alice)
    url = f"/boards/{board.code}/share"
    # An expired link does not count against the bound.
    expired = link_to(alice, board=board)
    ShareLink.objects.filter(pk=expired.pk).update(expires_at=timezone.now())

    assert client.post(url, {"days": "7"}).status_code == 302
    assert client.post(url, {"days": "7"}).status_code == 302
    refused = client.post(url, {"days": "7"})

    assert refused.status_code == 200
    assert "You already have 2 live share links" in refused.content.decode()
    assert ShareLink.objects.live().count() == 2
    ShareLink.objects.live().first().revoke()
    assert client.post(url, {"days": "7"}).status_code == 302


def test_the_task_page_offers_sharing_only_for_a_finished_result(alice):
    done = stored(alice)
    running = make_result(alice, state=Task.State.RUNNING)
    client = signed_in(alice)

    assert f'action="/t/{done.code}/share"' in client.get(f"/t/{done.code}/").content.decode()
    assert f"/t/{running.code}/share" not in client.get(f"/t/{running.code}/").content.decode()


def test_signed_out_visitors_cannot_make_links(client, alice):
    board = board_of(alice)

    response = client.post(f"/boards/{board.code}/share", {"days": "7"})

    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert not ShareLink.objects.exists()


# --- A member's links and revoke ----------------------------------------------------------------


def test_my_links_show_what_each_shares_its_status_and_an_address_only_when_active(alice, bob):
    task = stored(alice)
    board = board_of(alice, task, name="Night shots")
    active = link_to(alice, board=board, include_prompts=True)
    expired = link_to(alice, task=task)
    ShareLink.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(days=1))
    revoked = link_to(alice, board=board)
    revoked.revoke()
    bobs = link_to(bob, board=board)
    ShareLink.objects.filter(pk=active.pk).update(views=3, last_viewed_at=timezone.now())

    page = signed_in(alice).get("/shares/").content.decode()

    assert "Night shots" in page and "with prompts" in page
    assert f'href="/t/{task.code}/"' in page
    assert page.count("<tr") == 4  # the head row and alice's three links
    for status in ("Active", "Expired", "Revoked"):
        assert f">{status}</span>" in page
    assert f"http://testserver/s/{active.token}/" in page
    for hidden in (expired, revoked, bobs):
        assert hidden.token not in page
    assert re.search(r'data-label="Views" class="num">3<', page)
    assert f"/shares/{revoked.pk}/revoke" not in page
    assert f"/shares/{active.pk}/revoke" in page and f"/shares/{expired.pk}/revoke" in page


def test_revoking_my_link_makes_it_answer_404(alice):
    link = link_to(alice, board=board_of(alice, stored(alice)))
    assert Client().get(page_url(link)).status_code == 200

    response = signed_in(alice).post(f"/shares/{link.pk}/revoke", follow=True)

    link.refresh_from_db()
    assert link.status == "revoked"
    assert "The link is revoked" in response.content.decode()
    assert Client().get(page_url(link)).status_code == 404


def test_another_members_link_cannot_be_revoked_and_revoke_needs_a_post(alice, bob):
    link = link_to(alice, board=board_of(alice))

    assert signed_in(bob).post(f"/shares/{link.pk}/revoke").status_code == 404
    assert signed_in(alice).get(f"/shares/{link.pk}/revoke").status_code == 405
    link.refresh_from_db()
    assert link.status == "active"


# --- Admin --------------------------------------------------------------------------------------


def test_the_admin_lists_every_members_links_and_filters_by_status(alice, bob, carol):
    board = board_of(alice, name="Alice's board")
    alices = link_to(alice, board=board)
    bobs = link_to(bob, task=stored(bob, "a kettle"))
    bobs.revoke()
    client = signed_in(carol)
    url = reverse("admin:generations_sharelink_changelist")

    everything = client.get(url).content.decode()
    revoked = client.get(url, {"status": "revoked"}).content.decode()
    active = client.get(url, {"status": "active"}).content.decode()

    assert "Board “Alice&#x27;s board”" in everything and "a kettle" not in everything
    assert f"{alices.token[:6]}…" in everything and f"{bobs.token[:6]}…" in everything
    assert alices.token not in everything  # only a hint of the token
    assert f"{bobs.token[:6]}…" in revoked and f"{alices.token[:6]}…" not in revoked
    assert f"{alices.token[:6]}…" in active and f"{bobs.token[:6]}…" not in active
    change = reverse("admin:generations_sharelink_change", args=[alices.pk])
    assert client.get(change).status_code == 200


def test_the_admin_revoke_action_revokes_the_chosen_links(alice, bob, carol):
    board = board_of(alice, stored(alice))
    chosen, kept = link_to(alice, board=board), link_to(bob, board=board)

    response = signed_in(carol).post(
        reverse("admin:generations_sharelink_changelist"),
        {"action": "revoke_links", "_selected_action": [chosen.pk]},
        follow=True,
    )

    assert "Revoked 1 link." in response.content.decode()
    chosen.refresh_from_db()
    kept.refresh_from_db()
    assert (chosen.status, kept.status) == ("revoked", "active")
    assert Client().get(page_url(chosen)).status_code == 404
    assert Client().get(page_url(kept)).status_code == 200


# --- The shared page ----------------------------------------------------------------------------


def test_a_board_link_shows_its_name_description_and_results_newest_added_first(alice):
    first = stored(alice, "first added")
    image = stored(alice, "an image", kind="image")
    board = board_of(alice, first, image, name="Spring campaign", description="Cuts for review")
    link = link_to(alice, board=board)

    response = Client().get(page_url(link))

    page = response.content.decode()
    assert response.status_code == 200
    assert "<h1>Spring campaign</h1>" in page and "Cuts for review" in page
    assert shared_codes(response) == [str(image.code), str(first.code)]
    poster = file_url(link, first, what="poster")
    assert f'<video controls preload="none" poster="{poster}"' in page
    assert f'<source src="{file_url(link, first)}" type="video/mp4">' in page
    assert f'<img src="{file_url(link, image)}"' in page
    # Nothing of the studio: no member names, no links into the site's member pages.
    assert "alice" not in page.lower() and "/gallery/" not in page and "/t/" not in page


def test_prompts_show_only_when_the_link_includes_them(alice):
    board = board_of(alice, stored(alice, "a secret recipe for dumplings"))
    without = link_to(alice, board=board)
    with_prompts = link_to(alice, board=board, include_prompts=True)

    assert "secret recipe" not in Client().get(page_url(without)).content.decode()
    assert "a secret recipe for dumplings" in Client().get(page_url(with_prompts)).content.decode()


def test_a_result_link_shows_that_result_only(alice):
    shared_task = stored(alice, "the one")
    stored(alice, "another one")
    link = link_to(alice, task=shared_task, include_prompts=True)

    response = Client().get(page_url(link))

    assert response.status_code == 200
    assert shared_codes(response) == [str(shared_task.code)]
    assert "the one" in response.content.decode() and "another" not in response.content.decode()


def test_a_team_board_shows_only_what_the_links_creator_may_see_now(alice, bob):
    alices_private = stored(alice, "alice private", visibility="private")
    bobs_private = stored(bob, "bob private", visibility="private")
    bobs_team = stored(bob, "bob team")
    running = make_result(alice, "still running", state=Task.State.RUNNING)
    board = board_of(alice, alices_private, bobs_private, bobs_team, running)
    alices_link = link_to(alice, board=board)
    bobs_link = link_to(bob, board=board)

    assert set(shared_codes(Client().get(page_url(alices_link)))) == {
        str(alices_private.code),
        str(bobs_team.code),
    }
    assert set(shared_codes(Client().get(page_url(bobs_link)))) == {
        str(bobs_private.code),
        str(bobs_team.code),
    }
    # Bob turns his team result private: alice's link stops showing it at once.
    Task.objects.filter(pk=bobs_team.pk).update(visibility="private")
    assert shared_codes(Client().get(page_url(alices_link))) == [str(alices_private.code)]
    assert Client().get(file_url(alices_link, bobs_team)).status_code == 404


def test_deleted_results_disappear_from_the_page_and_their_media_answer_404(alice):
    kept, deleted = stored(alice, "kept"), stored(alice, "deleted")
    board = board_of(alice, kept, deleted)
    link = link_to(alice, board=board)
    single = link_to(alice, task=deleted)

    delete_task(deleted)

    assert shared_codes(Client().get(page_url(link))) == [str(kept.code)]
    assert Client().get(file_url(link, deleted)).status_code == 404
    assert Client().get(page_url(single)).status_code == 404


def test_the_page_asks_not_to_be_indexed_sends_no_referrer_and_is_not_cached(alice):
    link = link_to(alice, board=board_of(alice, stored(alice)))

    response = Client().get(page_url(link))

    assert response["X-Robots-Tag"] == "noindex, nofollow"
    assert response["Referrer-Policy"] == "no-referrer"
    assert "no-store" in response["Cache-Control"] and "private" in response["Cache-Control"]
    page = response.content.decode()
    assert '<meta name="robots" content="noindex">' in page
    # The site's policy holds: no inline scripts or styles, nothing from elsewhere.
    policy = response["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "<script" not in page and "style=" not in page and "<style" not in page
    assert re.findall(r'(?:src|href)="(https?:)?//', page) == []


def test_a_stranger_gets_no_cookie_from_the_page_its_media_or_its_404(alice):
    task = stored(alice)
    link = link_to(alice, board=board_of(alice, task))
    stranger = Client()

    for url in (
        page_url(link),
        file_url(link, task),
        file_url(link, task, what="poster"),
        "/s/nope/",
    ):
        response = stranger.get(url)
        assert response.cookies == {}, url
    assert stranger.cookies == {}


def test_a_signed_in_member_opening_a_link_sees_the_same_page(alice, bob):
    task = stored(alice)
    link = link_to(alice, board=board_of(alice, task))

    response = signed_in(bob).get(page_url(link))

    assert response.status_code == 200 and shared_codes(response) == [str(task.code)]


def test_page_views_are_counted_once_per_page_not_per_file(alice):
    task = stored(alice)
    link = link_to(alice, board=board_of(alice, task))
    visitor = Client()

    visitor.get(page_url(link))
    visitor.get(page_url(link))
    visitor.get(file_url(link, task))
    visitor.get(file_url(link, task, what="poster"))

    link.refresh_from_db()
    assert link.views == 2
    assert timezone.now() - link.last_viewed_at < timedelta(minutes=1)


def test_a_shared_board_pages_with_a_cursor_without_repeats_or_gaps(alice, monkeypatch):
    monkeypatch.setattr(shares, "SHARED_PAGE_SIZE", 2)
    tasks = [stored(alice, f"take {n}") for n in range(5)]
    link = link_to(alice, board=board_of(alice, *tasks))
    visitor = Client()

    seen, url = [], page_url(link)
    while url:
        response = visitor.get(url)
        seen.append(shared_codes(response))
        older = re.search(r'href="([^"]+\?before=\d+)" rel="next"', response.content.decode())
        url = older.group(1).replace("&amp;", "&") if older else None

    newest_first = [str(t.code) for t in reversed(tasks)]
    assert seen == [newest_first[0:2], newest_first[2:4], newest_first[4:5]]
    # A cursor we could not have made is ignored: the first page again.
    for bad in ("abc", "-1", "9" * 40):
        assert shared_codes(visitor.get(page_url(link), {"before": bad})) == newest_first[0:2]


def test_the_page_costs_the_same_queries_with_10_or_200_results(alice):
    link_small = link_to(alice, board=board_of(alice, *(make_result(alice) for _ in range(10))))
    link_large = link_to(alice, board=board_of(alice, *(make_result(alice) for _ in range(200))))
    counts = []
    for link in (link_small, link_large):
        with CaptureQueriesContext(connection) as queries:
            response = Client().get(page_url(link))
        assert response.status_code == 200
        counts.append(len(queries))

    assert counts[0] == counts[1] <= 6, counts
    assert len(shared_codes(Client().get(page_url(link_large)))) == shares.SHARED_PAGE_SIZE


# --- Refusals: one 404 page for all -------------------------------------------------------------


def test_every_dead_link_gets_the_same_404_page(alice, bob, carol):
    task = stored(alice)
    board = board_of(alice, task)
    revoked = link_to(alice, board=board)
    revoked.revoke()
    expired = link_to(alice, board=board)
    ShareLink.objects.filter(pk=expired.pk).update(expires_at=timezone.now())
    gone_board = board_of(alice, task, name="Soon deleted")
    on_gone_board = link_to(alice, board=gone_board)
    gone_board.delete()
    # The board's owner made it private: a teammate's link to it dies with it.
    private_later = board_of(alice, task)
    teammates = link_to(carol, board=private_later)
    Board.objects.filter(pk=private_later.pk).update(visibility="private")
    # Bob leaves the team: his links stop working.
    bobs = link_to(bob, board=board)
    type(bob).objects.filter(pk=bob.pk).update(is_active=False)
    live = link_to(alice, board=board)

    urls = [
        page_url(revoked),
        page_url(expired),
        f"/s/{on_gone_board.token}/",
        page_url(teammates),
        page_url(bobs),
        f"/s/{live.token}x/",  # an unknown token of the right shape
        f"/s/{'a' * 65}/",  # longer than any token: refused before a lookup
        "/s/not%20a%20token/",
        file_url(revoked, task),
        file_url(expired, task, what="poster"),
    ]
    bodies = set()
    for url in urls:
        response = Client().get(url)
        assert response.status_code == 404, url
        assert response["X-Robots-Tag"] == "noindex, nofollow", url
        assert response["Referrer-Policy"] == "no-referrer", url
        bodies.add(response.content)
    assert len(bodies) == 1
    assert b"This link does not work" in bodies.pop()
    assert Client().get(page_url(live)).status_code == 200


def test_a_too_long_token_never_reaches_the_database(alice, django_assert_num_queries):
    with django_assert_num_queries(0):
        assert Client().get(f"/s/{'a' * 65}/").status_code == 404


def test_the_shared_page_answers_only_get_and_head(alice):
    link = link_to(alice, board=board_of(alice, stored(alice)))

    assert Client().head(page_url(link)).status_code == 200
    assert Client().post(page_url(link)).status_code == 405


# --- Media through the link ---------------------------------------------------------------------


def test_media_are_served_through_the_links_own_addresses(alice):
    video, image = stored(alice), stored(alice, kind="image")
    link = link_to(alice, board=board_of(alice, video, image))

    film = Client().get(file_url(link, video))
    poster = Client().get(file_url(link, video, what="poster"))
    picture = Client().get(file_url(link, image))

    assert (film.status_code, film["Content-Type"]) == (200, "video/mp4")
    assert b"".join(film.streaming_content) == VIDEO_BYTES
    assert (poster["Content-Type"], b"".join(poster.streaming_content)) == (
        "image/jpeg",
        POSTER_BYTES,
    )
    assert b"".join(picture.streaming_content) == PNG_BYTES
    for response in (film, poster, picture):
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response["Referrer-Policy"] == "no-referrer"
        assert response["Cache-Control"] == shares.SHARED_MEDIA_CACHE


def test_media_of_a_task_the_link_does_not_share_answer_404(alice):
    on_board, elsewhere = stored(alice), stored(alice)
    board = board_of(alice, on_board)
    link = link_to(alice, board=board)
    single = link_to(alice, task=on_board)

    assert Client().get(file_url(link, on_board)).status_code == 200
    assert Client().get(file_url(link, elsewhere)).status_code == 404
    assert Client().get(file_url(link, elsewhere, what="poster")).status_code == 404
    assert Client().get(file_url(single, elsewhere)).status_code == 404
    assert Client().get(file_url(link, on_board, position=1)).status_code == 404
    # Taken off the board: no longer shared.
    BoardItem.objects.filter(task=on_board).delete()
    assert Client().get(file_url(link, on_board)).status_code == 404


def test_a_result_without_a_poster_has_no_shared_poster(alice):
    task = stored(alice)
    Result.objects.filter(task=task).update(poster="")
    link = link_to(alice, task=task)

    assert Client().get(file_url(link, task, what="poster")).status_code == 404
    page = Client().get(page_url(link)).content.decode()
    assert '<video controls preload="none" width=' in page


def test_on_object_storage_media_redirect_to_a_short_lived_signed_link(
    alice, settings, monkeypatch
):
    task = stored(alice)
    link = link_to(alice, board=board_of(alice, task))
    settings.S3_BUCKET = "media"
    signed = []

    def sign(stored_file, *, content_type, attachment=None):
        signed.append((stored_file.name, content_type))
        response = HttpResponseRedirect("https://store.example.com/o?X-Amz-Expires=300")
        response["Cache-Control"] = "private, no-store"
        return response

    monkeypatch.setattr(views, "signed_redirect", sign)

    film = Client().get(file_url(link, task))
    poster = Client().get(file_url(link, task, what="poster"))
    outside = Client().get(file_url(link, stored(alice)))

    assert film.status_code == poster.status_code == 302
    assert "X-Amz-Expires=300" in film["Location"]
    assert film["Referrer-Policy"] == "no-referrer"
    assert signed == [
        (f"results/{task.code}.mp4", "video/mp4"),
        (f"posters/{task.code}.jpg", "image/jpeg"),
    ]
    assert outside.status_code == 404


# --- In a browser -------------------------------------------------------------------------------


@pytest.mark.browser
def test_a_fresh_browser_plays_a_shared_video_without_cookies_or_policy_errors(page, alice):
    from generations.simulator.media import render_mp4, render_png
    from tests.test_browser_csp import Console

    task = make_result(alice, "a heron lands on a quiet lake")
    result = task.results.get()
    default_storage.save(result.file.name, ContentFile(render_mp4("a heron", 2, 160, 96)))
    default_storage.save(result.poster.name, ContentFile(render_png("a heron", 160, 96)))
    link = link_to(alice, board=board_of(alice, task, name="Birds"), include_prompts=True)
    console = Console(page)

    page.goto(page_url(link))

    assert page.get_by_role("heading", name="Birds").is_visible()
    assert page.get_by_text("a heron lands on a quiet lake").is_visible()
    video = page.locator("video")
    # preload="none": nothing but the poster is fetched until the visitor presses play.
    assert video.evaluate("v => v.readyState") == 0
    video.evaluate("v => { v.muted = true; return v.play(); }")
    page.wait_for_function("() => document.querySelector('video').currentTime > 0")
    assert console.violations() == [] and console.errors == []
    assert page.context.cookies() == []

    link.revoke()
    response = page.goto(page_url(link))
    assert response.status == 404
    assert page.get_by_role("heading", name="This link does not work").is_visible()
