"""A new member's first steps in headless Chromium, on a desktop and on a phone: signing in
lands on Create, the demo's simulator keys are there to pay with, and without a key Create says
what to do and links to the Keys page."""

import re

import pytest
from django.core.management import call_command
from playwright.sync_api import expect

from tests.conftest import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SIZES = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
DAVES_PASSWORD = "dave-first-passphrase-9"


@pytest.fixture(params=sorted(SIZES))
def screen(request, page):
    page.set_viewport_size(SIZES[request.param])
    return page


def log_in(page, username: str, password: str = PASSWORD) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def seen(locator) -> None:
    """What a person sees once they scroll to it: shown, and inside the window."""
    locator.scroll_into_view_if_needed()
    expect(locator).to_be_visible()
    expect(locator).to_be_in_viewport()


def test_a_member_the_admin_adds_lands_on_create_and_pays_with_a_simulator_key(
    screen, live_server, client, carol, django_user_model
):
    page = screen
    call_command("ensure_demo", "--site", live_server.url, verbosity=0)
    client.force_login(carol)
    added = client.post(
        "/admin/accounts/user/add/",
        {
            "username": "dave",
            "display_name": "Dave D.",
            "password1": DAVES_PASSWORD,
            "password2": DAVES_PASSWORD,
            "usable_password": "true",
            "_save": "Save",
        },
    )
    assert added.status_code == 302

    log_in(page, "dave", DAVES_PASSWORD)
    page.wait_for_url(re.compile(r".*/create/$"))
    seen(page.get_by_role("heading", name="Create", exact=True))

    page.get_by_label("Model").select_option("apimart/Omni-Flash-Ext")
    key = page.get_by_label("Pay with key")
    expect(key.locator("option")).to_have_count(1)
    expect(key.locator("option")).to_have_text(re.compile(r"^Simulator \(APIMart\) .* team key$"))
    seen(key)
    key.select_option(label=key.locator("option").inner_text())
    expect(page.locator("#no-key")).to_have_count(0)
    expect(page.get_by_role("button", name="Generate")).to_be_enabled()

    # The brand goes back to Create from anywhere.
    page.goto("/accounts/profile/")
    page.get_by_role("link", name="Omniweb").click()
    page.wait_for_url(re.compile(r".*/create/$"))
    seen(page.get_by_role("heading", name="Create", exact=True))


def test_a_member_without_a_key_is_told_what_to_do_and_the_link_leads_to_keys(screen, alice):
    page = screen
    log_in(page, "alice")
    page.wait_for_url(re.compile(r".*/create/$"))
    page.get_by_label("Model").select_option("omixa/sora")

    hint = page.locator("#no-key")
    expect(hint).to_have_text(
        "You have no usable key for Omixa. "
        "Add your own Omixa key under Keys, or ask an admin to share one."
    )
    seen(hint)
    expect(page.locator("select[name=key]")).to_have_count(0)
    expect(page.get_by_role("button", name="Generate")).to_be_disabled()

    link = hint.get_by_role("link", name="Add your own Omixa key under Keys")
    seen(link)
    link.click()
    page.wait_for_url(re.compile(r".*/accounts/keys/$"))
    seen(page.get_by_role("heading", name="Keys", exact=True))
    seen(page.get_by_role("link", name="Add a key", exact=True))
