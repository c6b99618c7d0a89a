"""The team's library in headless Chromium, as a member uses it: make a board from the
gallery, put three results on it (one from a run's Compare view), share the board, open the
link in a fresh browser with no login and play a video there, revoke the link, and see the
same address answer 404."""

import os
import re
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from playwright.sync_api import expect

from generations.models import Run, Task
from generations.models.boards import Board
from generations.models.shares import ShareLink
from generations.simulator.media import render_mp4, render_png
from tests.test_browser_csp import Console
from tests.test_browser_studio import log_in
from tests.test_gallery import make_result

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Where the README's screenshot of a board is written, when asked for.
SCREENSHOTS = os.environ.get("OMNIWEB_SCREENSHOTS", "")


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path


def playable(task: Task, words: str) -> Task:
    """Give the task's result a real, playable video and poster."""
    result = task.results.get()
    default_storage.save(result.file.name, ContentFile(render_mp4(words, 2, 320, 180)))
    default_storage.save(result.poster.name, ContentFile(render_png(words, 320, 180)))
    return task


def tile_of(page, task: Task):
    return page.locator(".gallery-tile", has=page.locator(f'a[href="/gallery/{task.code}/"]'))


def add_to_board(place, name: str) -> None:
    """Open the result's Boards control and put it on board `name` with one click."""
    place.get_by_text("Boards").first.click()
    toggle = place.get_by_role("button", name=re.compile(name))
    toggle.click()
    expect(place.get_by_role("button", name=re.compile(name))).to_have_attribute(
        "aria-pressed", "true"
    )


def test_a_board_from_the_gallery_and_compare_shared_played_and_revoked(page, alice):
    heron = playable(make_result(alice, "a heron lands on a quiet lake"), "a heron")
    otter = playable(make_result(alice, "an otter floats on its back"), "an otter")
    # A run of two models, whose Compare view offers the third result.
    run = Run.objects.create(user=alice, name="kingfishers")
    kingfisher = playable(make_result(alice, "a kingfisher dives"), "a kingfisher")
    other = make_result(alice, "a kingfisher dives", provider="omnivideo", model="seedance-2")
    Task.objects.filter(pk__in=[kingfisher.pk, other.pk]).update(run=run)
    console = Console(page)
    log_in(page)

    # A new board, made from a gallery tile's Boards control, with that result on it.
    page.goto("/gallery/")
    heron_tile = tile_of(page, heron)
    heron_tile.get_by_text("Boards").click()
    heron_tile.get_by_label("New board").fill("Birds and otters")
    heron_tile.get_by_role("button", name="Make it and add this result").click()
    expect(heron_tile.get_by_role("button", name=re.compile("Birds and otters"))).to_have_attribute(
        "aria-pressed", "true"
    )
    # A second result from the gallery, one click once its panel is open.
    add_to_board(tile_of(page, otter), "Birds and otters")

    # The third from the run's Compare view.
    page.goto(f"/run/{run.code}/compare")
    add_to_board(page.locator(f"#compare-{kingfisher.code}"), "Birds and otters")
    board = Board.objects.get(name="Birds and otters")
    assert set(board.items.values_list("task_id", flat=True)) == {
        heron.pk,
        otter.pk,
        kingfisher.pk,
    }

    # The board's page shows the three in the gallery's grid.
    page.goto("/boards/")
    page.get_by_role("link", name=re.compile("Birds and otters")).first.click()
    page.wait_for_url(re.compile(rf".*/boards/{board.code}/$"))
    expect(page.locator("#board-results .gallery-tile")).to_have_count(3)
    if SCREENSHOTS:
        page.set_viewport_size({"width": 1280, "height": 900})
        page.screenshot(path=str(Path(SCREENSHOTS) / "board.png"), full_page=True)

    # Share it, prompts included; the member's list shows the address to copy.
    page.get_by_label("Include prompts").check()
    page.get_by_role("button", name="Make a share link").click()
    page.wait_for_url(re.compile(r".*/shares/.*"))
    address = page.locator("input.share-address").first.input_value()
    link = ShareLink.objects.get(board=board)
    assert address.endswith(f"/s/{link.token}/") and link.include_prompts

    # A stranger: a fresh browser context with no login and no cookies.
    stranger = page.context.browser.new_context()
    outside = stranger.new_page()
    outside_console = Console(outside)
    outside.goto(address)
    expect(outside.get_by_role("heading", name="Birds and otters")).to_be_visible()
    expect(outside.locator("video")).to_have_count(3)
    expect(outside.get_by_text("a heron lands on a quiet lake")).to_be_visible()
    video = outside.locator("video").first
    video.evaluate("v => { v.muted = true; return v.play(); }")
    outside.wait_for_function("() => document.querySelector('video').currentTime > 0")
    assert outside_console.violations() == [] and outside_console.errors == []
    assert stranger.cookies() == []

    # The member revokes it; the same address now answers 404.
    page.goto("/shares/")
    page.get_by_role("button", name=re.compile("Revoke")).first.click()
    expect(page.get_by_text(re.compile("[Rr]evoked")).first).to_be_visible()
    assert outside.goto(address).status == 404
    stranger.close()
    assert console.violations() == []
