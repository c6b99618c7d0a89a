"""The prompt search in a real browser, on a desktop and on a phone: words typed in any order and
case find the result in the gallery and the task in My tasks, and My tasks keeps its other
filters alongside the search."""

import re
from datetime import timedelta

import pytest
from playwright.sync_api import expect

from tests.conftest import PASSWORD
from tests.test_gallery import NOW, make_result

pytestmark = pytest.mark.browser

VIEWPORTS = pytest.mark.parametrize(
    "viewport",
    [{"width": 1280, "height": 800}, {"width": 390, "height": 844}],
    ids=["desktop", "phone"],
)


def log_in_to(page, path: str) -> None:
    """Log in as alice from a link to `path`, as following it signed out does."""
    page.goto(f"/accounts/login/?next={path}")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(rf".*{re.escape(path)}$"))


@VIEWPORTS
def test_words_in_any_order_find_the_result_in_the_gallery(page, alice, bob, viewport):
    page.set_viewport_size(viewport)
    wanted = make_result(bob, "A red fox in the snow at dawn", finished_at=NOW - timedelta(hours=1))
    make_result(bob, "A fox asleep in a forest", finished_at=NOW)
    make_result(bob, "Snow over the harbour at dawn", finished_at=NOW - timedelta(hours=2))
    log_in_to(page, "/gallery/")

    search = page.get_by_label("Prompt contains")
    if not search.is_visible():
        # On a phone the gallery's filters are folded behind their button.
        page.locator("summary", has_text="Filters").click()
    expect(search).to_be_visible()
    search.fill("dawn FOX snow")
    search.press("Enter")

    # htmx writes the spaces as %20, a plain form as +.
    page.wait_for_url(re.compile(r".*[?&]q=dawn(\+|%20)FOX(\+|%20)snow$"))
    tiles = page.locator("#gallery-results > li.gallery-tile")
    expect(tiles).to_have_count(1)
    tile = page.locator(f'a.gallery-link[href="/gallery/{wanted.code}/"]')
    expect(tile).to_be_visible()
    expect(tile).to_be_in_viewport()
    expect(tile.get_by_role("img", name="A red fox in the snow at dawn")).to_be_attached()


@VIEWPORTS
def test_words_in_any_order_find_my_task_and_keep_the_other_filters(page, alice, bob, viewport):
    page.set_viewport_size(viewport)
    wanted = make_result(alice, "A red fox in the snow at dawn", kind="image", params={})
    make_result(alice, "A red fox in the snow at dawn", finished_at=NOW - timedelta(minutes=1))
    make_result(alice, "A paper boat", kind="image", params={})
    make_result(bob, "A red fox in the snow at dawn", kind="image", params={})
    log_in_to(page, "/tasks/")

    search = page.get_by_label("Prompt contains")
    expect(search).to_be_visible()
    search.fill("snow DAWN fox")
    page.get_by_label("Kind").select_option("image")
    page.get_by_role("button", name="Filter").click()

    page.wait_for_url(re.compile(r".*[?&]q=snow\+DAWN\+fox"))
    expect(page.locator(".task-card")).to_have_count(1)
    card = page.locator(f"#task-{wanted.code}")
    expect(card).to_be_visible()
    expect(card.locator(".task-prompt")).to_have_text("A red fox in the snow at dawn")
    card.scroll_into_view_if_needed()
    expect(card.locator(".task-prompt")).to_be_in_viewport()
    # The search and the filter both stay set, ready for the next change.
    expect(page.get_by_label("Prompt contains")).to_have_value("snow DAWN fox")
    expect(page.get_by_label("Kind")).to_have_value("image")
