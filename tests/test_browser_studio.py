"""A member's day in headless Chromium, against a live server, a real worker and the simulator:
add a key, generate a video and an image, watch the cards finish without reloading, open the
result, find it in the gallery, reuse it, and see a failed task's refund."""

import re

import pytest

from accounts import ledger
from generations.models import Task
from tests.conftest import PASSWORD
from tests.test_engine_live import Worker, fresh_cache  # noqa: F401  (fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def worker(tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path
    settings.SIMULATOR_SECONDS = 3
    # The live server listens on loopback: the Keys page accepts it once it is allowed.
    settings.GATEWAY_ALLOWED_HOSTS = ["localhost", "127.0.0.1"]
    process = Worker(tmp_path)
    yield process
    process.stop()


def log_in(page):
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r".*/create/$"))


def add_key(page, live_server, gateway_label, gateway_id):
    page.goto("/accounts/keys/add/")
    page.get_by_label("Gateway").select_option(label=gateway_label)
    page.get_by_label("Label").fill(f"My {gateway_label}")
    page.get_by_label("API key").fill(f"sk-browser-{gateway_id}-0001")
    page.get_by_label("Base URL (optional)").fill(f"{live_server.url}/simulator/{gateway_id}")
    page.get_by_role("button", name="Save key").click()
    page.wait_for_url(re.compile(r".*/accounts/keys/$"))


def generate(page, model, prompt):
    page.get_by_label("Model").select_option(model)
    page.wait_for_function(
        # The form's own requests only: the card poller may be busy at any time.
        "m => { const s = document.querySelector('#id_model'); return s.value === m && "
        "!s.form.classList.contains('htmx-request') && !s.form.querySelector('.htmx-request'); }",
        arg=model,
    )
    page.get_by_label("Prompt").fill(prompt)
    token = page.locator("input[name=form_token]").input_value()
    page.get_by_role("button", name="Generate").click()
    card = page.locator(".task-card", has_text=prompt).first
    card.wait_for()
    # The fresh form (a new token; the prompt kept) has replaced the one just sent.
    page.wait_for_function("t => document.querySelector('#id_form_token').value !== t", arg=token)
    return card


def test_a_member_generates_watches_finds_reuses_and_is_refunded(
    page, live_server, alice, carol, worker
):
    ledger.grant(alice, 500, by=carol, reason="welcome")
    log_in(page)
    add_key(page, live_server, "APIMart", "apimart")
    add_key(page, live_server, "Omni Video", "omnivideo")

    page.goto("/create/")
    assert "Simulated gateways are on" in page.content()
    page.evaluate("window.stayedOnPage = true")
    video = generate(page, "apimart/Omni-Flash-Ext", "a flamingo dancing on a pier")
    image = generate(page, "omnivideo/nano-banana-2", "a turquoise teapot on a shelf")
    assert page.locator(".task-card").first.inner_text().count("turquoise") == 1  # newest first

    # The cards run and finish by themselves: no reload, one poller for the page.
    for card in (video, image):
        card.locator(".status", has_text="Succeeded").wait_for(timeout=90_000)
    assert page.evaluate("window.stayedOnPage") is True
    assert page.locator("#card-poller").count() == 1
    assert page.title() == "Create · Omniweb"  # nothing running any more
    assert "finished" in page.locator("#toasts").inner_text()

    # Open the video: a player whose file is served to its owner.
    video.get_by_role("link", name="Omni Flash Ext").click()
    page.wait_for_url(re.compile(r".*/t/[0-9a-f-]+/$"))
    source = page.locator("video source").get_attribute("src")
    response = page.request.get(source)
    assert response.status == 200 and response.headers["content-type"] == "video/mp4"
    assert page.locator("video").get_attribute("poster")

    # Find it in the gallery by a word of its prompt, open it, reuse it.
    page.goto("/gallery/")
    page.get_by_label("Prompt contains").fill("flamingo")
    page.get_by_role("button", name="Show results").click()
    page.wait_for_url(re.compile(r".*q=flamingo.*"))
    tiles = page.locator("#gallery-results > li")
    assert tiles.count() == 1
    tiles.first.get_by_role("link").first.click()
    page.wait_for_url(re.compile(r".*/gallery/[0-9a-f-]+/$"))
    assert "a flamingo dancing on a pier" in page.content()
    page.get_by_role("link", name="Reuse prompt and settings").click()
    page.wait_for_url(re.compile(r".*/create/\?from=.*"))
    assert page.get_by_label("Prompt").input_value() == "a flamingo dancing on a pier"
    assert page.get_by_label("Model").input_value() == "apimart/Omni-Flash-Ext"

    # A task the gateway fails is refunded, and the Credits page shows it.
    failing = generate(page, "apimart/Omni-Flash-Ext", "fail this flamingo please")
    failing.locator(".status", has_text="Failed").wait_for(timeout=90_000)
    assert "refunded" in failing.inner_text()
    page.goto("/accounts/credits/")
    history = page.locator("main").inner_text()
    assert "Refund" in history
    task = Task.objects.get(prompt="fail this flamingo please")
    assert task.state == Task.State.FAILED
    alice.refresh_from_db()
    charged = sum(
        t.credits_charged for t in Task.objects.filter(user=alice, state=Task.State.SUCCEEDED)
    )
    assert alice.credit_balance == 500 - charged
