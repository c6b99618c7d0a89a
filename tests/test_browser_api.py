"""A member makes an API token in the browser, a script uses it, the docs page works under the
site's Content-Security-Policy, and a revoked token stops working at once."""

import re

import httpx
import pytest

from accounts import ledger
from tests.test_browser_csp import Console, log_in
from tests.test_create import make_key

pytestmark = pytest.mark.browser


def test_make_use_and_revoke_a_token_and_read_the_docs(page, live_server, alice, carol):
    ledger.grant(alice, 500, by=carol, reason="welcome")
    make_key(alice, "apimart", label="My APIMart")
    console = Console(page)
    log_in(page, "alice")

    page.goto("/accounts/profile/")
    page.get_by_label("Token name").fill("storyboard tool")
    page.get_by_label("Read and generate").check()
    page.get_by_role("button", name="Make token").click()
    secret = page.get_by_test_id("new-token-secret").inner_text().strip()
    assert secret.startswith("omw_")
    # Copy puts exactly the secret on the clipboard.
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.get_by_role("button", name="Copy").click()
    page.get_by_role("button", name="Copied").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == secret
    page.reload()
    assert page.get_by_test_id("new-token-secret").count() == 0
    assert secret not in page.content()

    api = httpx.Client(base_url=live_server.url, headers={"Authorization": f"Bearer {secret}"})
    me = api.get("/api/v1/me").json()
    assert me["balance"] == 500 and me["scope"] == "write"
    body = {"items": [{"model": "apimart/Omni-Flash-Ext", "prompt": "a fox", "duration": 4}]}
    assert api.post("/api/v1/quote", json=body).json()["total"] > 0
    page.goto("/accounts/profile/")
    row = page.get_by_role("row", name=re.compile("storyboard tool"))
    assert "never" not in row.inner_text()  # its last use is shown

    # The docs page: the operations render from this site's own files, inside the policy.
    page.get_by_role("link", name="API reference").click()
    page.wait_for_url(re.compile(r".*/api/v1/docs$"))
    page.get_by_text("/api/v1/tasks/{code}/cancel").first.wait_for()
    assert page.get_by_text("Omniweb API").first.is_visible()
    assert console.violations() == []

    page.goto("/accounts/profile/")
    page.get_by_role("button", name="Revoke storyboard tool").click()
    page.get_by_text("was revoked").wait_for()
    response = api.get("/api/v1/me")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
