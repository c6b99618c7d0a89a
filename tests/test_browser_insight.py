"""The insight dashboard in headless Chromium: a staff member opens it for a month with known
tasks, the server-drawn charts and their tables show, and nothing trips the
Content-Security-Policy. Writes the README's screenshot when asked."""

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.test_browser_csp import Console, log_in
from tests.test_insight_dashboard import march  # noqa: F401  (fixture)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SCREENSHOTS = os.environ.get("OMNIWEB_SCREENSHOTS", "")


def test_a_staff_member_reads_the_month_on_the_dashboard(page, carol, march):  # noqa: F811
    console = Console(page)
    log_in(page, "carol")
    page.get_by_role("link", name="Insight").click()
    page.wait_for_url(re.compile(r".*/insight/$"))
    page.goto("/insight/?period=custom&from=2026-03-01&to=2026-03-31")

    charts = page.locator("svg[role=img]")
    expect(charts).to_have_count(2)
    expect(page.get_by_role("img", name=re.compile("Credits per day"))).to_be_visible()
    # The numbers are in tables beside the charts, and every gateway has a row.
    for gateway in ("APIMart", "Omni Video", "OmniaKey", "Omixa"):
        expect(page.get_by_role("row", name=re.compile(gateway)).first).to_be_visible()
    expect(page.get_by_role("link", name=re.compile("Export tasks or ledger"))).to_be_visible()
    assert console.violations() == [] and console.errors == []
    if SCREENSHOTS:
        page.set_viewport_size({"width": 1280, "height": 900})
        page.screenshot(path=str(Path(SCREENSHOTS) / "insight.png"), full_page=True)
