"""The Create page's everyday loop in headless Chromium: the price line after a submit, errors
brought into view and focused (with and without JavaScript, on a desktop and on a phone), and
the keyboard shortcuts with their help panel.

No worker runs here: a submit is charged and queued by the web request, which is all these
tests look at."""

import pytest
from django.conf import settings
from django.test import Client
from playwright.sync_api import expect

from accounts import ledger
from generations.models import Task
from tests.test_create import make_key
from tests.test_gallery import make_result

pytestmark = pytest.mark.browser

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
SIZES = pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
FLASH = "/create/?model=apimart/Omni-Flash-Ext"  # 8 credits a second, 6 s by default: 48


@pytest.fixture(autouse=True)
def public_url(settings, live_server, tmp_path):
    settings.PUBLIC_URL = live_server.url
    settings.MEDIA_ROOT = tmp_path


def signed_in(context, live_server, user) -> None:
    """Give a browser context the member's session, without going through the login form."""
    client = Client()
    client.force_login(user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": live_server.url}]
    )


def member(alice, carol, live_server, credits: int):
    ledger.grant(alice, credits, by=carol, reason="welcome")
    key = make_key(alice, "apimart", label="My APIMart")
    key.base_url = f"{live_server.url}/simulator/apimart"
    key.save()
    return alice


def settled(page) -> None:
    """Wait until the create form has no htmx request in flight."""
    page.wait_for_function(
        "() => { const f = document.querySelector('#create-form');"
        " return f && !f.classList.contains('htmx-request')"
        " && !f.querySelector('.htmx-request'); }"
    )


@pytest.fixture
def no_script(page, live_server):
    """A second page of the same browser with JavaScript turned off."""
    context = page.context.browser.new_context(base_url=live_server.url, java_script_enabled=False)
    plain = context.new_page()
    plain.set_default_timeout(10_000)
    yield plain
    context.close()


# --- the price line after a submit ------------------------------------------------------------


@SIZES
def test_after_generate_the_price_line_shows_the_new_balance(page, live_server, alice, carol, size):
    member(alice, carol, live_server, 500)
    signed_in(page.context, live_server, alice)
    page.set_viewport_size(size)
    page.goto(FLASH)
    price = page.locator("#price")
    expect(price).to_contain_text("Costs 48 credits · your balance after: 452")

    for balance_after in (404, 356):
        page.get_by_label("Prompt").fill(f"a heron, then {balance_after} left")
        page.get_by_role("button", name="Generate").click()
        page.locator(".task-card", has_text=f"a heron, then {balance_after} left").wait_for()
        expect(page.locator("#create-form")).to_contain_text("48 credits charged")
        # No field was touched: the line the fresh form came with is already right.
        expect(price).to_contain_text(f"your balance after: {balance_after}")
        expect(price).to_be_in_viewport()
    assert Task.objects.filter(user=alice).count() == 2


# --- errors brought into view -----------------------------------------------------------------


def submit_from_the_bottom(page) -> None:
    button = page.get_by_role("button", name="Generate")
    button.scroll_into_view_if_needed()
    button.click()


@SIZES
def test_an_empty_prompt_brings_the_error_into_view_and_focuses_it(
    page, live_server, alice, carol, size
):
    member(alice, carol, live_server, 500)
    signed_in(page.context, live_server, alice)
    page.set_viewport_size(size)
    page.goto(FLASH)
    submit_from_the_bottom(page)

    summary = page.locator("#create-summary")
    expect(summary).to_contain_text("Write a prompt: describe what you want to see.")
    expect(summary).to_be_focused()
    expect(summary).to_be_in_viewport()
    expect(page.locator("#id_prompt_error")).to_be_in_viewport()
    # Its link leads to the field, ready to type in.
    summary.get_by_role("link", name="Write a prompt").click()
    expect(page.get_by_label("Prompt")).to_be_focused()
    assert Task.objects.count() == 0


@SIZES
def test_a_balance_too_low_brings_the_refusal_into_view_and_focuses_it(
    page, live_server, alice, carol, size
):
    member(alice, carol, live_server, 20)
    signed_in(page.context, live_server, alice)
    page.set_viewport_size(size)
    page.goto(FLASH)
    page.get_by_label("Prompt").fill("a heron on one leg")
    submit_from_the_bottom(page)

    summary = page.locator("#create-summary")
    expect(summary).to_contain_text("This costs 48 credits and your balance is 20.")
    expect(summary).to_be_focused()
    expect(summary).to_be_in_viewport()
    assert Task.objects.count() == 0


@SIZES
def test_without_javascript_the_error_is_in_view_and_focused(
    no_script, live_server, alice, carol, size
):
    member(alice, carol, live_server, 20)
    signed_in(no_script.context, live_server, alice)
    no_script.set_viewport_size(size)

    no_script.goto(FLASH)
    submit_from_the_bottom(no_script)
    summary = no_script.locator("#create-summary")
    expect(summary).to_contain_text("Write a prompt: describe what you want to see.")
    expect(summary).to_be_focused()
    expect(summary).to_be_in_viewport()

    no_script.get_by_label("Prompt").fill("a heron on one leg")
    submit_from_the_bottom(no_script)
    expect(summary).to_contain_text("This costs 48 credits and your balance is 20.")
    expect(summary).to_be_focused()
    expect(summary).to_be_in_viewport()
    assert Task.objects.count() == 0


# --- keyboard shortcuts -----------------------------------------------------------------------


def test_control_enter_in_the_prompt_generates(page, live_server, alice, carol):
    member(alice, carol, live_server, 500)
    signed_in(page.context, live_server, alice)
    page.set_viewport_size(DESKTOP)
    page.goto(FLASH)
    prompt = page.get_by_label("Prompt")
    prompt.fill("a kingfisher diving")
    prompt.press("Control+Enter")

    page.locator(".task-card", has_text="a kingfisher diving").wait_for()
    expect(page.locator("#create-form")).to_contain_text("48 credits charged")
    assert Task.objects.get(user=alice).prompt == "a kingfisher diving"
    # The fresh form keeps the member in the prompt, ready for the next one.
    expect(prompt).to_be_focused()
    # Cmd+Enter, as on a Mac, does the same.
    prompt.fill("a kingfisher perched")
    prompt.press("Meta+Enter")
    page.locator(".task-card", has_text="a kingfisher perched").wait_for()
    assert Task.objects.filter(user=alice).count() == 2
    # The card can show before the submit's own answer has replaced the form; on a loaded
    # machine CI once saw the model chosen next never get its fields. Change it only once
    # the form has no request in flight.
    settled(page)

    # While the button is disabled (no key for this model), the shortcut does nothing either.
    page.get_by_label("Model").select_option("omixa/sora")
    # The model's fields arrive by htmx; on a loaded machine that can take a few seconds.
    expect(page.locator("#model-fields")).to_contain_text(
        "You have no usable key for Omixa", timeout=20_000
    )
    settled(page)
    expect(page.get_by_role("button", name="Generate")).to_be_disabled(timeout=10_000)
    page.get_by_label("Prompt").fill("a kingfisher again")
    page.get_by_label("Prompt").press("Control+Enter")
    page.wait_for_timeout(500)
    assert Task.objects.count() == 2


@SIZES
def test_slash_focuses_the_gallery_search_unless_typing(page, live_server, alice, size):
    signed_in(page.context, live_server, alice)
    page.set_viewport_size(size)
    page.goto("/gallery/")
    search = page.get_by_label("Prompt contains")
    expect(search).not_to_be_focused()

    # On a phone-sized screen the filters start folded away: the shortcut unfolds them.
    page.keyboard.press("/")
    expect(search).to_be_focused()
    expect(search).to_be_in_viewport(ratio=1)
    expect(search).to_have_value("")  # the slash itself was not typed
    # In a field, "/" is just a character.
    page.keyboard.type("red/blue")
    expect(search).to_have_value("red/blue")


def test_question_mark_opens_the_help_and_escape_closes_it(page, live_server, alice):
    signed_in(page.context, live_server, alice)
    page.set_viewport_size(DESKTOP)
    page.goto("/create/")
    dialog = page.get_by_role("dialog", name="Keyboard shortcuts")
    expect(dialog).to_be_hidden()
    tasks_link = page.get_by_role("link", name="All my tasks")
    tasks_link.focus()

    page.keyboard.press("?")
    expect(dialog).to_be_visible()
    expect(dialog).to_be_in_viewport(ratio=1)
    for words in ("Generate, while you write", "Search the gallery", "Close what is open"):
        expect(dialog).to_contain_text(words)
    assert page.evaluate("document.getElementById('shortcuts').contains(document.activeElement)")

    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(tasks_link).to_be_focused()
    # Typed in a field, "?" is a character and opens nothing.
    page.get_by_label("Prompt").press("?")
    expect(page.get_by_label("Prompt")).to_have_value("?")
    expect(dialog).to_be_hidden()


def test_escape_closes_an_open_details_and_returns_focus_to_it(page, live_server, alice):
    task = make_result(alice, "a lighthouse at dusk", state=Task.State.FAILED)
    Task.objects.filter(pk=task.pk).update(details="The gateway said: no capacity.")
    signed_in(page.context, live_server, alice)
    page.set_viewport_size(DESKTOP)
    page.goto("/tasks/")
    summary = page.get_by_text("Details from APIMart")
    summary.click()
    details = page.locator("details.task-details")
    expect(details).to_have_attribute("open", "")
    expect(page.get_by_text("no capacity")).to_be_visible()

    page.keyboard.press("Escape")
    expect(details).not_to_have_attribute("open", "")
    expect(page.get_by_text("no capacity")).to_be_hidden()
    expect(summary).to_be_focused()


def test_escape_stops_the_gallery_preview(page, live_server, alice):
    make_result(alice, "a fox in the snow")
    signed_in(page.context, live_server, alice)
    page.set_viewport_size(DESKTOP)
    page.goto("/gallery/")
    tile = page.locator(".gallery-link").first
    tile.hover()
    preview = page.locator("video.gallery-preview")
    expect(preview).to_have_count(1)

    page.keyboard.press("Escape")
    expect(preview).to_have_count(0)


@SIZES
def test_the_help_panel_opens_from_the_footer_and_gives_focus_back(page, live_server, alice, size):
    signed_in(page.context, live_server, alice)
    page.set_viewport_size(size)
    page.goto("/create/")
    button = page.get_by_role("button", name="Keyboard shortcuts")
    button.click()

    dialog = page.get_by_role("dialog", name="Keyboard shortcuts")
    expect(dialog).to_be_visible()
    expect(dialog).to_be_in_viewport(ratio=1)
    box = dialog.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= size["width"]
    close = dialog.get_by_role("button", name="Close")
    expect(close).to_be_focused()
    expect(close).to_be_in_viewport()

    close.click()
    expect(dialog).to_be_hidden()
    expect(button).to_be_focused()
