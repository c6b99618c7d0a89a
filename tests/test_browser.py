"""The site in a real browser: logging in and out, htmx loaded from our own server."""

import pytest

from tests.conftest import PASSWORD

pytestmark = pytest.mark.browser


def test_a_member_logs_in_sees_the_layout_and_logs_out(page, alice):
    requested = []
    page.on("request", lambda request: requested.append(request.url))

    page.goto("/accounts/profile/")
    assert "/accounts/login/" in page.url
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()

    page.wait_for_url("**/accounts/profile/")
    assert page.get_by_role("heading", name="Your profile").is_visible()
    assert page.get_by_role("navigation", name="Main").is_visible()
    assert "Alice A." in page.locator(".who").inner_text()
    # htmx is loaded, from this server, and every htmx request will carry the CSRF token.
    assert page.evaluate("typeof window.htmx") == "object"
    csrf = page.evaluate("JSON.parse(document.body.getAttribute('hx-headers'))['x-csrftoken']")
    assert len(csrf) >= 32
    assert all(url.startswith(page.url.split("/accounts")[0]) for url in requested)

    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/accounts/login/")
    page.goto("/accounts/profile/")
    assert "/accounts/login/" in page.url


def test_a_wrong_password_shows_a_message_in_the_form(page, alice):
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("not-my-password")
    page.get_by_role("button", name="Log in").click()
    assert page.get_by_role("alert").inner_text().startswith("Please enter a correct username")


def test_the_profile_form_saves_and_confirms(page, alice, live_server):
    page.goto("/accounts/profile/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/accounts/profile/")
    page.get_by_label("Display name").fill("Alice Studio")
    page.get_by_role("button", name="Save profile").click()
    assert page.get_by_role("status").inner_text().strip() == "Your profile was saved."
    alice.refresh_from_db()
    assert alice.display_name == "Alice Studio"
