"""Reference images that stay for the next try, in headless Chromium on a desktop and a phone:
generate with an image and generate again with the same one, leave one out, clear the form,
reuse a task from its page (with and without JavaScript), and use a result as reference.

No worker runs here: a submit is charged and queued by the web request, which is all these
tests look at."""

import re
import uuid

import pytest
from django.conf import settings
from django.test import Client
from playwright.sync_api import expect

from accounts import ledger
from generations.models import Task
from tests.test_create import make_key, png, upload
from tests.test_references_reuse import image_result, stored_pixels

pytestmark = pytest.mark.browser

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
SIZES = pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
FLASH = "/create/?model=apimart/Omni-Flash-Ext"


@pytest.fixture(autouse=True)
def storage(settings, live_server, tmp_path):
    settings.PUBLIC_URL = live_server.url
    settings.MEDIA_ROOT = tmp_path


@pytest.fixture
def member(alice, carol, live_server):
    """Alice with credits and a key for APIMart and for Omni Video (simulated, never called)."""
    ledger.grant(alice, 500, by=carol, reason="welcome")
    for provider in ("apimart", "omnivideo"):
        key = make_key(alice, provider, label=f"My {provider}")
        key.base_url = f"{live_server.url}/simulator/{provider}"
        key.save()
    return alice


def signed_in(page, live_server, user) -> None:
    """Give the page's browser the member's session, without going through the login form."""
    client = Client()
    client.force_login(user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    page.context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": live_server.url}]
    )


@pytest.fixture
def no_script(page, live_server):
    """A second page of the same browser with JavaScript turned off."""
    context = page.context.browser.new_context(base_url=live_server.url, java_script_enabled=False)
    plain = context.new_page()
    plain.set_default_timeout(10_000)
    yield plain
    context.close()


def settled(page) -> None:
    """Wait until the create form has no htmx request in flight."""
    page.wait_for_function(
        "() => { const f = document.querySelector('#create-form');"
        " return f && !f.classList.contains('htmx-request')"
        " && !f.querySelector('.htmx-request'); }"
    )


def seen(image) -> None:
    """The image is on screen where a person looks for it, and its picture has loaded."""
    image.scroll_into_view_if_needed()
    expect(image).to_be_visible()
    expect(image).to_be_in_viewport()
    assert image.evaluate("img => img.complete && img.naturalWidth > 0"), "not loaded"


def generate(page, prompt_text: str, count: int) -> None:
    """Click Generate and wait for the task's card (the `count`th with this prompt)."""
    button = page.get_by_role("button", name="Generate")
    button.scroll_into_view_if_needed()
    button.click()
    expect(page.locator("#task-cards .task-card", has_text=prompt_text)).to_have_count(count)
    settled(page)


def sent_bytes(task: Task) -> list[bytes]:
    out = []
    for reference in task.references.order_by("id"):
        with reference.file.open("rb") as handle:
            out.append(handle.read())
    return out


@SIZES
def test_generate_with_an_image_then_again_sends_the_same_image(
    page, live_server, member, size, tmp_path
):
    signed_in(page, live_server, member)
    page.set_viewport_size(size)
    page.goto(FLASH)
    words = "a fox in the snow, like this one"
    page.get_by_label("Prompt").fill(words)
    page.get_by_label("Upload images").set_input_files(
        [{"name": "fox.png", "mimeType": "image/png", "buffer": png(120, 90)}]
    )
    generate(page, words, 1)
    first = Task.objects.get(user=member)

    # The prompt and the image stay: the image as a thumbnail, the file input empty again.
    expect(page.get_by_label("Prompt")).to_have_value(words)
    thumbnail = page.get_by_role("img", name=f"Reference image 1 of “{words}”")
    seen(thumbnail)
    assert page.get_by_label("Upload images").evaluate("input => input.files.length") == 0

    generate(page, words, 2)
    second = Task.objects.filter(user=member).exclude(pk=first.pk).get()
    assert sent_bytes(second) == sent_bytes(first) and len(sent_bytes(first)) == 1
    assert second.references.get().token != first.references.get().token
    assert second.params["reference_images"] == first.params["reference_images"]
    # Still there for a third try, now as the second task's copy.
    seen(page.get_by_role("img", name=f"Reference image 1 of “{words}”"))
    assert page.locator("input[name=carried]").input_value() == f"reference:{second.code}:0"


@SIZES
def test_remove_leaves_an_image_out_and_clear_empties_the_form(page, live_server, member, size):
    signed_in(page, live_server, member)
    page.set_viewport_size(size)
    page.goto(FLASH)
    words = "a lighthouse at night"
    page.get_by_label("Prompt").fill(words)
    page.get_by_label("Upload images").set_input_files(
        [{"name": "light.png", "mimeType": "image/png", "buffer": png()}]
    )
    page.get_by_label("Duration").select_option("10")
    generate(page, words, 1)

    thumbnail = page.get_by_role("img", name=f"Reference image 1 of “{words}”")
    seen(thumbnail)
    remove = page.get_by_role("checkbox", name=re.compile(r"^Remove"))
    remove.check()
    expect(remove).to_be_checked()
    # Plainly left out, yet still there to untick.
    expect(thumbnail).to_have_css("opacity", "0.35")
    generate(page, words, 2)
    newest = Task.objects.filter(user=member).order_by("-created_at", "-id").first()
    assert newest.references.count() == 0
    expect(page.locator(".carried-image")).to_have_count(0)
    expect(page.get_by_label("Prompt")).to_have_value(words)

    clear = page.get_by_role("button", name="Clear")
    clear.scroll_into_view_if_needed()
    clear.click()
    settled(page)
    prompt = page.get_by_label("Prompt")
    expect(prompt).to_have_value("")
    expect(prompt).to_be_focused()
    expect(prompt).to_be_in_viewport()
    expect(page.get_by_label("Duration")).to_have_value("10")  # the settings stay
    assert Task.objects.filter(user=member).count() == 2


@SIZES
def test_reuse_from_a_task_page_shows_the_image_and_sends_it_again(page, live_server, member, size):
    client = Client()
    client.force_login(member)
    response = client.post(
        "/create/",
        {
            "model": "apimart/Omni-Flash-Ext",
            "prompt": "a heron on one leg",
            "duration": "6",
            "resolution": "720p",
            "aspect_ratio": "16:9",
            "key": str(member.provider_keys.get(provider="apimart").code),
            "visibility": "team",
            "form_token": str(uuid.uuid4()),
            "reference_files": upload("heron.png", png(100, 100)),
        },
    )
    assert response.status_code == 302
    task = Task.objects.get(user=member)

    signed_in(page, live_server, member)
    page.set_viewport_size(size)
    page.goto(f"/t/{task.code}/")
    expect(page.get_by_role("heading", name="Reference images")).to_be_visible()
    seen(page.get_by_role("img", name="Reference image 1 of 1"))

    reuse = page.get_by_role("link", name="Reuse prompt and settings")
    reuse.scroll_into_view_if_needed()
    reuse.click()
    page.wait_for_url(re.compile(r".*/create/\?from=.*"))
    expect(page.get_by_label("Prompt")).to_have_value("a heron on one leg")
    seen(page.get_by_role("img", name="Reference image 1 of “a heron on one leg”"))

    generate(page, "a heron on one leg", 2)
    again = Task.objects.filter(user=member).exclude(pk=task.pk).get()
    assert sent_bytes(again) == sent_bytes(task)


@SIZES
def test_without_javascript_reuse_carries_the_image_into_the_next_task(
    page, no_script, live_server, member, size
):
    client = Client()
    client.force_login(member)
    response = client.post(
        "/create/",
        {
            "model": "apimart/Omni-Flash-Ext",
            "prompt": "a kite over the dunes",
            "duration": "6",
            "resolution": "720p",
            "aspect_ratio": "16:9",
            "key": str(member.provider_keys.get(provider="apimart").code),
            "visibility": "team",
            "form_token": str(uuid.uuid4()),
            "reference_files": upload("kite.png", png(90, 90)),
        },
    )
    task = Task.objects.get(code=response["Location"].split("/")[-2])

    signed_in(no_script, live_server, member)
    no_script.set_viewport_size(size)
    no_script.goto(f"/t/{task.code}/")
    no_script.get_by_role("link", name="Reuse prompt and settings").click()
    no_script.wait_for_url(re.compile(r".*/create/\?from=.*"))
    seen(no_script.get_by_role("img", name="Reference image 1 of “a kite over the dunes”"))
    button = no_script.get_by_role("button", name="Generate")
    button.scroll_into_view_if_needed()
    button.click()
    # A plain submit lands on the new task's page, which shows the copy it was sent.
    no_script.wait_for_url(re.compile(r".*/t/[0-9a-f-]+/$"))
    assert str(task.code) not in no_script.url
    seen(no_script.get_by_role("img", name="Reference image 1 of 1"))
    again = Task.objects.filter(user=member).exclude(pk=task.pk).get()
    assert sent_bytes(again) == sent_bytes(task)


@SIZES
def test_use_as_reference_from_an_image_result(page, live_server, member, size):
    result, picture = image_result(member, prompt="a turquoise teapot on a shelf")
    signed_in(page, live_server, member)
    page.set_viewport_size(size)
    page.goto(f"/t/{result.code}/")
    use = page.get_by_role("link", name="Use as reference")
    use.scroll_into_view_if_needed()
    expect(use).to_be_in_viewport()
    use.click()
    page.wait_for_url(re.compile(r".*/create/\?carry=.*"))

    expect(page.get_by_label("Model")).to_have_value("omnivideo/nano-banana-2")
    seen(page.get_by_role("img", name="The result of “a turquoise teapot on a shelf”"))
    words = "the same teapot, in the rain"
    page.get_by_label("Prompt").fill(words)
    generate(page, words, 1)
    new = Task.objects.get(user=member, prompt=words)
    copy = new.references.get()
    assert stored_pixels(copy).tobytes() == picture.tobytes()
    assert new.params["reference_images"] == [f"{live_server.url}/ref/{copy.token}"]
