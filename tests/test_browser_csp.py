"""The site under its Content-Security-Policy in headless Chromium: no page trips the policy,
and htmx (fields, price, submit, card polling) and the admin's scripts still work under it."""

import re

import pytest

from accounts import ledger
from tests.conftest import PASSWORD
from tests.test_create import make_key

pytestmark = pytest.mark.browser

VIOLATION = re.compile(r"Content Security Policy|Refused to", re.I)


class Console:
    """Every console message and uncaught error of the page, as text."""

    def __init__(self, page):
        self.messages: list[str] = []
        self.errors: list[str] = []
        page.on("console", lambda message: self.messages.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def violations(self) -> list[str]:
        return [text for text in self.messages + self.errors if VIOLATION.search(text)]


def log_in(page, username):
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r".*/create/$"))


def options(page, name) -> list[str]:
    return page.eval_on_selector_all(f"select[name={name}] option", "els => els.map(e => e.value)")


def settled(page) -> None:
    """Wait until the create form has no htmx request in flight."""
    page.wait_for_function(
        "() => { const f = document.querySelector('#create-form');"
        " return f && !f.classList.contains('htmx-request')"
        " && !f.querySelector('.htmx-request'); }"
    )


def test_no_page_trips_the_policy_and_htmx_works_under_it(page, alice, carol):
    ledger.grant(alice, 500, by=carol, reason="welcome")
    make_key(alice, "apimart", label="My APIMart")
    console = Console(page)
    log_in(page, "alice")
    # htmx was told not to add its inline <style>, and its indicator rules come from our CSS.
    assert page.evaluate("htmx.config.includeIndicatorStyles") is False
    assert page.locator("head style").count() == 0

    # Create: changing the model swaps in its fields and price; changing a field re-prices.
    page.goto("/create/")
    assert options(page, "duration") == [str(s) for s in range(3, 16)]
    price = page.locator("#price").inner_text()
    page.get_by_label("Model").select_option("apimart/Omni-Flash-Ext")
    page.wait_for_function(
        "() => [...document.querySelectorAll('select[name=duration] option')]"
        ".map(o => o.value).join() === '4,6,8,10'"
    )
    settled(page)
    assert options(page, "resolution") == ["720p", "1080p", "4k"]
    assert page.get_by_label("Pay with key").locator("option", has_text="My APIMart").count()
    assert page.locator("#price").inner_text() != price
    price = page.locator("#price").inner_text()
    page.get_by_label("Duration").select_option("10")
    page.wait_for_function("p => document.querySelector('#price').innerText !== p", arg=price)
    assert "Costs" in page.locator("#price").inner_text()

    # A submit by htmx (multipart, with the CSRF header) answers with a fresh form and a card.
    page.get_by_label("Prompt").fill("a lighthouse in a storm")
    page.get_by_role("button", name="Generate").click()
    page.locator(".task-card", has_text="a lighthouse in a storm").wait_for()
    page.locator("#create-form", has_text="Submitted").wait_for()
    assert page.get_by_label("Prompt").input_value() == "a lighthouse in a storm"

    for path, heading in [
        ("/tasks/", "My tasks"),
        ("/gallery/", "Gallery"),
        ("/accounts/credits/", "Credits"),
        ("/accounts/keys/", "Keys"),
        ("/accounts/keys/add/", None),
        ("/accounts/profile/", "Your profile"),
        ("/accounts/password_change/", None),
    ]:
        page.goto(path)
        page.wait_for_load_state("networkidle")
        if heading:
            assert page.get_by_role("heading", level=1).first.inner_text().startswith(heading)
    # The task's own page, whose card polls while the task is active.
    page.goto("/tasks/")
    page.locator(".task-card a", has_text=re.compile(r"\S")).first.click()
    page.wait_for_url(re.compile(r".*/t/[0-9a-f-]+/$"))
    page.wait_for_load_state("networkidle")

    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/accounts/login/")

    # The admin, as carol: its own scripts (sidebar, actions, calendars) run under the policy.
    log_in(page, "carol")
    for path in [
        "/admin/",
        "/admin/generations/task/",
        "/admin/accounts/user/",
        f"/admin/accounts/user/{alice.pk}/change/",
        "/admin/generations/task/cost-report/",
    ]:
        page.goto(path)
        page.wait_for_load_state("networkidle")
        assert page.title().endswith("Omniweb admin"), path
    # The changelist's actions script works: ticking a row counts it.
    page.goto("/admin/accounts/user/")
    page.locator("input.action-select").first.check()
    assert "1 of" in page.locator(".action-counter").inner_text()

    assert console.violations() == []
    assert console.errors == []
