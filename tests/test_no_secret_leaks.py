"""RELIABILITY 4: a provider secret, once saved, appears nowhere but in its encrypted column.

A canary secret is saved on a member's key and on a team key; then every page reachable by
following links as that member and as an admin (admin lists, change, history and delete pages
included), the captured logs of a real gateway call at DEBUG (httpx included), an error report
built with DEBUG off from a failure inside a gateway call, and the job tables are searched for it.
"""

import html
import logging
import re
import sys

import httpx
import pytest
import respx
from django.db import connection
from django.test import override_settings
from django.views.debug import ExceptionReporter

from accounts import ledger
from accounts.models import ProviderKey
from generations import providers
from generations.providers import GenerationRequest
from generations.services import fail_task, submit_task
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

CANARY = "sk-canary-R4-9d8c7b6a5f4e3d2c"
TEAM_CANARY = "sk-canary-TEAM-1a2b3c4d5e6f7a8b"
CAT = GenerationRequest("apimart", "Omni-Flash-Ext", "a cat", duration=4, resolution="720p")
NEVER_FOLLOW = ("/static/", "/media/", "/simulator/", "/accounts/logout", "/admin/logout")


def leaked(text: str) -> bool:
    # Any 12-character run of either canary, in case something truncates or splits it.
    return any(secret[i : i + 12] in text for secret in (CANARY, TEAM_CANARY) for i in range(4, 12))


@pytest.fixture
def world(alice, bob, carol):
    own = ProviderKey(provider="apimart", label="Alice APIMart", owner=alice)
    own.set_secret(CANARY)
    own.save()
    team = ProviderKey(provider="omniakey", label="Team OmniaKey")
    team.set_secret(TEAM_CANARY)
    team.save()
    team.allowed_users.add(alice)
    ledger.grant(alice, 500, by=carol, reason="welcome")
    task, _ = submit_task(alice, CAT, key=own)
    failed, _ = submit_task(alice, CAT, key=own)
    fail_task(failed, actor="poll", reason="moderation")
    return own, team


def crawl(client, start: list[str], limit: int = 500) -> dict[str, str]:
    pages: dict[str, str] = {}
    queue, seen = list(start), set()
    while queue and len(seen) < limit:
        url = queue.pop(0)
        if url in seen:
            continue
        seen.add(url)
        response = client.get(url)
        body = response.content.decode(errors="replace")
        pages[url] = body
        if "html" in response.get("Content-Type", ""):
            for href in re.findall(r'href="(/[^"#]*)"', body):
                href = html.unescape(href)
                if not href.startswith(NEVER_FOLLOW) and href not in seen:
                    queue.append(href)
    return pages


def test_no_page_shows_the_secret_to_its_owner(client, world):
    client.login(username="alice", password=PASSWORD)
    pages = crawl(client, ["/", "/accounts/profile/", "/accounts/keys/", "/accounts/credits/"])
    assert len(pages) >= 4
    assert [url for url, body in pages.items() if leaked(body)] == []
    assert any("…4e3d2c" in body or "…3d2c" in body for body in pages.values())


def test_no_admin_page_shows_the_secret(client, world):
    own, team = world
    client.login(username="carol", password=PASSWORD)
    start = [
        "/admin/",
        f"/admin/accounts/providerkey/{own.pk}/change/",
        f"/admin/accounts/providerkey/{team.pk}/change/",
        f"/admin/accounts/providerkey/{own.pk}/history/",
        f"/admin/accounts/providerkey/{own.pk}/delete/",
    ]
    pages = crawl(client, start)
    assert f"/admin/accounts/providerkey/{own.pk}/change/" in pages
    assert len(pages) > 20, "the crawl should reach the admin's lists and change pages"
    assert [url for url, body in pages.items() if leaked(body)] == []


@pytest.fixture
def chatty_httpx():
    """httpx and httpcore at DEBUG for one test, then back to the quiet levels of settings."""
    loggers = [logging.getLogger(name) for name in ("httpx", "httpcore")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


def test_debug_logs_of_a_gateway_call_do_not_carry_the_secret(world, caplog, chatty_httpx):
    own, _ = world
    with caplog.at_level(logging.DEBUG), respx.mock:
        route = respx.post("https://api.apimart.ai/v1/videos/generations").respond(
            200, json={"code": 200, "data": [{"status": "submitted", "task_id": "task_1"}]}
        )
        providers.get("apimart").submit(CAT, own.credentials())
        respx.post("https://api.apimart.ai/v1/videos/generations").respond(401, json={})
        with pytest.raises(providers.ProviderError):
            providers.get("apimart").submit(CAT, own.credentials())
    assert route.calls.last.request.headers["Authorization"] == f"Bearer {CANARY}"
    assert caplog.records, "DEBUG logging should have captured something"
    assert not leaked(caplog.text)
    assert not any(leaked(repr(record.__dict__)) for record in caplog.records)


@override_settings(DEBUG=False)
def test_an_error_report_from_inside_a_gateway_call_hides_the_secret(rf, world):
    own, _ = world

    def explode(request: httpx.Request):
        raise RuntimeError(f"unexpected failure talking to {request.url.host}")

    client = httpx.Client(transport=httpx.MockTransport(explode))
    request = rf.post("/accounts/keys/add/", {"secret": CANARY, "label": "x"})
    try:
        providers.get("apimart", client=client).submit(CAT, own.credentials())
    except RuntimeError:
        report = ExceptionReporter(request, *sys.exc_info())
        text, page = report.get_traceback_text(), report.get_traceback_html()
    else:
        pytest.fail("the transport should have raised")
    assert "unexpected failure talking to api.apimart.ai" in text
    assert not leaked(text) and not leaked(page)


def test_no_job_table_or_other_column_holds_the_secret_in_clear(world):
    with connection.cursor() as cursor:
        tables = connection.introspection.table_names(cursor)
        for table in tables:
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            for row in cursor.fetchall():
                assert not leaked(repr(row)), f"{table} holds the secret in clear"
    assert "django_q_task" in tables and "django_q_ormq" in tables
