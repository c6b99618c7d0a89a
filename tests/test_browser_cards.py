"""Task cards and the task page in headless Chromium, at desktop size and on a phone: a failed
card says why and that it was refunded where the result would be, an active card can be
canceled from where it is, the gallery's filters fold away on a phone, and a task page left
open shows the player when its task succeeds."""

import io
import re

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone
from PIL import Image

from accounts import ledger
from accounts.models import LedgerEntry, ProviderKey
from generations.models import Result, Task
from generations.providers import GenerationRequest
from generations.services import fail_task, submit_task
from generations.simulator.media import render_mp4, render_png
from tests.conftest import PASSWORD

pytestmark = pytest.mark.browser

VIEWPORTS = {"desktop": (1280, 800), "phone": (390, 844)}
GATEWAY_CAVEAT = "has no cancel call, so it may still finish the task; Omniweb will not fetch it."


@pytest.fixture(params=list(VIEWPORTS))
def screen(request, page):
    width, height = VIEWPORTS[request.param]
    page.set_viewport_size({"width": width, "height": height})
    return request.param


@pytest.fixture
def funded(alice, carol, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    ledger.grant(alice, 500, by=carol, reason="welcome")
    return alice


def key_for(user, provider: str) -> ProviderKey:
    key = ProviderKey(
        provider=provider, label=f"My {provider}", owner=user, base_url="https://gw.example"
    )
    key.set_secret(f"sk-{provider}-cards-0001")
    key.save()
    return key


def running(user, prompt: str) -> Task:
    """A video task the gateway is working on (no worker runs here: nothing moves it on)."""
    request = GenerationRequest("apimart", "Omni-Flash-Ext", prompt, duration=4, resolution="720p")
    task = submit_task(user, request, key=key_for(user, "apimart"))[0]
    Task.objects.filter(pk=task.pk).update(state=Task.State.RUNNING, next_check_at=None)
    task.refresh_from_db()
    return task


def log_in(page, username="alice"):
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    # Wherever the site sends a member after logging in, they have left the login page.
    page.wait_for_url(lambda url: "/accounts/login/" not in url)


def within_viewport(page, locator) -> bool:
    """The element's box lies inside the visible part of the page, across its whole width."""
    box = locator.bounding_box()
    size = page.viewport_size
    return bool(
        box
        and box["x"] >= 0
        and box["x"] + box["width"] <= size["width"] + 1
        and 0 <= box["y"] < size["height"]
    )


def jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 90, 160)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_a_failed_card_shows_its_message_and_refund_where_the_media_would_be(page, screen, funded):
    task = running(funded, "a heron on a frozen lake")
    reason = "The gateway refused the prompt; nothing was made."
    assert fail_task(task, actor="poll", reason=reason)

    log_in(page)
    page.goto("/tasks/")
    card = page.locator(f"#task-{task.code}")
    media = card.locator(".task-card-media")
    media.scroll_into_view_if_needed()
    assert media.is_visible() and within_viewport(page, media)
    shown = media.inner_text()
    assert reason in shown
    assert f"{task.credits_charged} credits refunded" in shown
    # No empty "VIDEO" box any more, and the message is not said twice on the card.
    assert card.locator(".media-placeholder").count() == 0
    assert card.inner_text().count(reason) == 1
    assert card.locator(".status").inner_text() == "Failed"

    # The task page shows the same card.
    page.goto(f"/t/{task.code}/")
    media = page.locator(f"#task-{task.code} .task-card-media")
    assert media.is_visible() and "refunded" in media.inner_text()


def test_cancel_on_an_active_card_cancels_and_the_card_shows_the_refund(page, screen, funded):
    task = running(funded, "a lighthouse in a storm")
    log_in(page)
    page.goto("/tasks/")
    page.evaluate("window.stayedOnPage = true")
    card = page.locator(f"#task-{task.code}")
    button = card.get_by_role("button", name="Cancel and refund")
    button.scroll_into_view_if_needed()
    assert button.is_visible() and within_viewport(page, button)
    assert f"APIMart {GATEWAY_CAVEAT}" in card.inner_text()

    button.click()
    card.locator(".status", has_text="Canceled").wait_for()
    media = card.locator(".task-card-media")
    assert media.is_visible()
    assert f"{task.credits_charged} credits refunded" in media.inner_text()
    assert "Omniweb will not fetch it" in media.inner_text()
    assert card.get_by_role("button", name="Cancel and refund").count() == 0
    assert page.evaluate("window.stayedOnPage") is True  # swapped in place, no reload
    page.locator("#toasts", has_text="was canceled").wait_for()
    task.refresh_from_db()
    assert task.state == Task.State.CANCELED
    assert LedgerEntry.objects.filter(task=task, kind="refund").count() == 1


def test_cancel_on_a_card_works_without_javascript(page, screen, funded, live_server):
    task = running(funded, "a kite over the dunes")
    context = page.context.browser.new_context(
        base_url=live_server.url, java_script_enabled=False, viewport=page.viewport_size
    )
    plain = context.new_page()
    try:
        log_in(plain)
        plain.goto("/tasks/")
        plain.locator(f"#task-{task.code}").get_by_role("button", name="Cancel and refund").click()
        plain.wait_for_url(re.compile(rf".*/t/{task.code}/$"))
        assert "Canceled and refunded" in plain.get_by_role("status").first.inner_text()
        media = plain.locator(f"#task-{task.code} .task-card-media")
        assert media.is_visible() and "refunded" in media.inner_text()
    finally:
        context.close()
    task.refresh_from_db()
    assert task.state == Task.State.CANCELED


def shared_image(user, prompt: str) -> Task:
    request = GenerationRequest("omnivideo", "nano-banana-2", prompt)
    task = submit_task(user, request, key=key_for(user, "omnivideo"))[0]
    name = default_storage.save("results/cat.png", ContentFile(render_png(prompt, 160, 120)))
    Result.objects.create(
        task=task, file=name, content_type="image/png", size=10, width=160, height=120
    )
    Task.objects.filter(pk=task.pk).update(
        state=Task.State.SUCCEEDED, finished_at=timezone.now(), next_check_at=None
    )
    return task


def test_the_gallery_filters_fold_behind_a_button_on_a_phone(page, screen, funded):
    shared_image(funded, "a cat asleep on a radiator")
    log_in(page)
    page.goto("/gallery/?kind=image&q=cat")
    toggle = page.locator("summary", has_text="Filters (2)")
    assert toggle.is_visible() and within_viewport(page, toggle)
    search = page.get_by_label("Prompt contains")
    tile = page.locator("#gallery-results > li").first
    if screen == "phone":
        # The results come first; the filters wait behind their button.
        assert not search.is_visible()
        assert tile.is_visible() and within_viewport(page, tile)
        toggle.click()
    assert search.is_visible()
    assert search.input_value() == "cat"
    assert page.get_by_label("Kind").input_value() == "image"

    # The button counts only what is set.
    page.goto("/gallery/")
    assert page.locator("summary").filter(has_text=re.compile(r"^Filters$")).is_visible()


def test_a_task_page_left_open_shows_the_player_when_the_task_succeeds(page, screen, funded):
    task = running(funded, "a paper boat in the rain")
    log_in(page)
    page.goto(f"/t/{task.code}/")
    page.evaluate("window.stayedOnPage = true")
    assert page.locator(f"#task-{task.code} .status").inner_text() == "Running"
    assert page.locator("video").count() == 0

    # The worker's part, done here: the file is stored, then the task succeeds.
    with transaction.atomic():
        name = default_storage.save(
            "results/boat.mp4", ContentFile(render_mp4("a paper boat", 1, 160, 90))
        )
        poster = default_storage.save("posters/boat.jpg", ContentFile(jpeg(160, 90)))
        Result.objects.create(
            task=task,
            file=name,
            poster=poster,
            content_type="video/mp4",
            size=default_storage.size(name),
            width=160,
            height=90,
            duration=1.0,
        )
        Task.objects.filter(pk=task.pk).update(
            state=Task.State.SUCCEEDED, progress=100, finished_at=timezone.now()
        )

    player = page.locator("figure.result video")
    player.wait_for(state="visible")
    assert within_viewport(page, player)
    assert page.evaluate("window.stayedOnPage") is True
    assert page.locator(".task-state .status").inner_text() == "Succeeded"
    source = page.locator("figure.result video source").get_attribute("src")
    response = page.request.get(source)
    assert response.status == 200 and response.headers["content-type"] == "video/mp4"
    assert page.locator("figure.result").get_by_role("link", name="Download").is_visible()
    page.locator("#toasts", has_text="finished").wait_for()
    # Nothing is left to watch: the page stops asking.
    assert page.locator(".watch").count() == 0
