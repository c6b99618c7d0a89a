"""Production hardening: the Content-Security-Policy and other headers on every page, templates
without inline code, login throttling, the per-member submit limit, and session lifetime."""

import re
from datetime import timedelta
from pathlib import Path

import pytest
from axes.models import AccessAttempt
from django.conf import settings as django_settings
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone

from accounts import ledger
from generations.models import ModelPrice, Task
from tests.conftest import PASSWORD
from tests.test_accounts import CONVERTER_SAMPLES, PUBLIC, concrete_urls
from tests.test_create import charged, form_data, make_key

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"
CREATE = "/create/"
TEMPLATES = Path(django_settings.BASE_DIR) / "templates"


# --- Content-Security-Policy and the other headers --------------------------------------------


def policy(response) -> dict[str, list[str]]:
    """The Content-Security-Policy header as {directive: [sources]}."""
    header = response.headers.get("Content-Security-Policy", "")
    directives = {}
    for part in header.split(";"):
        name, *sources = part.split()
        directives[name] = sources
    return directives


@pytest.fixture
def task_and_key(alice, carol):
    """One real task and key of alice's, so the walk opens real pages as well as 404s."""
    ledger.grant(alice, 1000, by=carol, reason="welcome")
    key = make_key(alice)
    client = Client()
    client.force_login(alice)
    response = client.post(CREATE, form_data(key))
    assert response.status_code == 302
    return Task.objects.get(user=alice), key


def site_pages(task, key) -> list[str]:
    """Every route of the site (bar the gateway-facing ones), with alice's task and key where a
    route takes one, and with a made-up code (a 404) as well."""
    sample = CONVERTER_SAMPLES["uuid"]
    paths = set()
    for name, path in concrete_urls():
        if name in PUBLIC or path.startswith("/simulator/"):
            continue
        paths.add(path)
        if sample in path:
            real = key.code if name.startswith("accounts-key") else task.code
            paths.add(path.replace(sample, str(real)))
    return sorted(paths) + [LOGIN, "/accounts/password_reset/", "/healthz"]


def admin_pages(task, key) -> list[str]:
    """The admin's forms for real objects (the walk's made-up ids only reach redirects)."""
    price = ModelPrice.objects.first()
    return [
        f"/admin/generations/task/{task.pk}/change/",
        f"/admin/generations/modelprice/{price.pk}/change/",
        f"/admin/accounts/user/{task.user_id}/change/",
        f"/admin/accounts/user/{task.user_id}/password/",
        f"/admin/accounts/providerkey/{key.pk}/change/",
    ]


def assert_hardened(response, path):
    directives = policy(response)
    assert directives, f"{path}: no Content-Security-Policy"
    header = response.headers["Content-Security-Policy"]
    assert "'unsafe-inline'" not in header and "'unsafe-eval'" not in header, path
    if response.headers.get("Content-Type", "").startswith("text/html"):
        assert directives["script-src"] == ["'self'"], path
        assert directives["style-src"] == ["'self'"], path
        assert directives["object-src"] == ["'none'"], path
        assert directives["frame-ancestors"] == ["'none'"], path
    assert response.headers["X-Content-Type-Options"] == "nosniff", path
    assert response.headers["Referrer-Policy"] == "same-origin", path


@pytest.mark.parametrize("who", ["alice", "carol"])
def test_every_page_carries_the_policy_and_the_safety_headers(request, who, task_and_key):
    user = request.getfixturevalue(who)
    client = Client()
    client.force_login(user)
    statuses = {}
    for path in site_pages(*task_and_key):
        response = client.get(path)
        statuses[path] = response.status_code
        assert_hardened(response, path)
    # The walk saw real pages, not only refusals: the studio's and, for the admin, the admin's.
    task, _ = task_and_key
    assert statuses["/create/"] == statuses["/gallery/"] == statuses["/tasks/"] == 200
    assert statuses[f"/t/{task.code}/"] == 200
    assert statuses["/admin/"] == (200 if user.is_staff else 302)
    assert statuses["/admin/generations/task/"] == (200 if user.is_staff else 302)
    for path in admin_pages(*task_and_key):
        response = client.get(path)
        assert response.status_code == (200 if user.is_staff else 302), path
        assert_hardened(response, path)
    # The admin's own form for granting credits (an action on the member list).
    response = client.post(
        "/admin/accounts/user/",
        {"action": "grant_credits", "_selected_action": [task.user_id]},
    )
    assert response.status_code == (200 if user.is_staff else 302)
    assert_hardened(response, "grant credits")


def test_the_login_page_and_the_lockout_page_carry_the_policy_too(client, alice):
    assert_hardened(client.get(LOGIN), LOGIN)
    for _ in range(django_settings.AXES_FAILURE_LIMIT):
        response = client.post(LOGIN, {"username": "alice", "password": "wrong"})
    assert response.status_code == 429
    assert_hardened(response, "lockout")


def test_the_policy_allows_no_inline_code_and_no_other_sites():
    directives = django_settings.CONTENT_SECURITY_POLICY["DIRECTIVES"]
    assert directives["script-src"] == ["'self'"]
    assert directives["default-src"] == ["'self'"]
    for sources in directives.values():
        assert "'unsafe-inline'" not in sources and "'unsafe-eval'" not in sources
        assert "*" not in sources


INLINE_CODE = {
    "an inline <script>": re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I),
    "an event handler attribute": re.compile(r"<[^>]*\son[a-z]+\s*=", re.I),
    "a style attribute": re.compile(r"<[^>]*\sstyle\s*=", re.I),
    "a <style> element": re.compile(r"<style[\s>]", re.I),
    "an hx-on attribute (needs eval)": re.compile(r"\s(?:data-)?hx-on", re.I),
    "a javascript: address": re.compile(r"javascript:", re.I),
    "a js: value (needs eval)": re.compile(r"""hx-(?:vals|vars)\s*=\s*["']\s*js:""", re.I),
}


def test_no_template_has_inline_code_or_styles():
    found = []
    for template in sorted(TEMPLATES.rglob("*.html")):
        source = template.read_text()
        for what, pattern in INLINE_CODE.items():
            found += [f"{template.relative_to(TEMPLATES)}: {what}" for _ in pattern.findall(source)]
    assert found == []


def test_htmx_is_told_not_to_add_its_inline_indicator_styles(client, alice):
    client.force_login(alice)
    html = client.get("/accounts/profile/").content.decode()
    config = html.index('<meta name="htmx-config" content=\'{"includeIndicatorStyles": false}\'>')
    assert config < html.index("/static/django_htmx/htmx-2")
    css = (Path(django_settings.BASE_DIR) / "static/css/omniweb.css").read_text()
    assert ".htmx-indicator { opacity: 0; visibility: hidden; }" in css


# --- login throttling --------------------------------------------------------------------------


def log_in(client, username="alice", password=PASSWORD, address="127.0.0.1"):
    return client.post(LOGIN, {"username": username, "password": password}, REMOTE_ADDR=address)


def signed_in(client) -> bool:
    return client.get("/accounts/profile/").status_code == 200


def fail_until_locked(client, username="alice", address="127.0.0.1"):
    """Wrong passwords up to the limit: the form says so each time, the last one locks."""
    limit = django_settings.AXES_FAILURE_LIMIT
    for attempt in range(1, limit + 1):
        response = log_in(client, username, "not-the-password", address)
        if attempt < limit:
            assert response.status_code == 200
            assert "Please enter a correct username and password" in response.content.decode()
    return response


def test_too_many_wrong_passwords_pause_logging_in_from_that_address(client, alice):
    limit = django_settings.AXES_FAILURE_LIMIT
    minutes = int(django_settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    # The attempt that reaches the limit is already answered with the pause.
    locked = fail_until_locked(client)
    assert locked.status_code == 429
    # Even the right password is refused now, with the page that explains why.
    response = log_in(client)
    assert response.status_code == 429
    # The login form was rendered first; axes' middleware put this page, in the layout, instead.
    names = [t.name for t in response.templates]
    assert "registration/locked_out.html" in names and "base.html" in names
    html = response.content.decode()
    assert "Logging in is paused" in html
    text = " ".join(html.split())
    assert (
        f"There were {limit} wrong passwords in a row for <strong>alice</strong> from your "
        f"address, so logging in to it from here is paused for {minutes} minutes." in text
    )
    assert "Other accounts, and this account from other addresses, can still log in." in text
    assert not signed_in(client)


def test_the_pause_follows_the_cool_off_setting(client, alice, settings):
    settings.AXES_COOLOFF_TIME = timedelta(minutes=1)
    settings.AXES_FAILURE_LIMIT = 2
    response = fail_until_locked(client)
    text = " ".join(response.content.decode().split())
    assert "There were 2 wrong passwords in a row" in text
    assert "is paused for 1 minute." in text


def test_the_same_member_can_still_log_in_from_another_address(client, alice):
    fail_until_locked(client, address="127.0.0.1")
    elsewhere = Client()
    response = log_in(elsewhere, address="10.0.0.9")
    assert response.status_code == 302
    assert signed_in(elsewhere)


def test_another_member_can_still_log_in_from_the_same_address(client, alice, bob):
    fail_until_locked(client, username="alice")
    colleague = Client()
    response = log_in(colleague, username="bob")
    assert response.status_code == 302
    assert signed_in(colleague)


def test_after_the_cool_off_the_member_logs_in_again(client, alice):
    fail_until_locked(client)
    assert log_in(client).status_code == 429
    # The attempts are now older than the cool-off, as if the time had passed.
    past = timezone.now() - django_settings.AXES_COOLOFF_TIME - timedelta(seconds=1)
    assert AccessAttempt.objects.filter(username="alice").update(attempt_time=past) == 1
    response = log_in(client)
    assert response.status_code == 302
    assert signed_in(client)


def test_a_successful_login_resets_the_count_of_failures(client, alice):
    limit = django_settings.AXES_FAILURE_LIMIT
    for _ in range(limit - 1):
        assert log_in(client, password="wrong").status_code == 200
    assert log_in(client).status_code == 302
    assert not AccessAttempt.objects.filter(username="alice").exists()
    client.post("/accounts/logout/")
    # A full allowance again: limit - 1 more failures still leave the form open.
    for _ in range(limit - 1):
        assert log_in(client, password="wrong").status_code == 200
    assert log_in(client).status_code == 302


def test_the_admin_login_is_throttled_the_same_way(client, carol):
    for _ in range(django_settings.AXES_FAILURE_LIMIT):
        response = client.post("/admin/login/", {"username": "carol", "password": "wrong"})
    assert response.status_code == 429
    response = client.post("/admin/login/", {"username": "carol", "password": PASSWORD})
    assert response.status_code == 429
    assert "Logging in is paused" in response.content.decode()


# --- the submit limit --------------------------------------------------------------------------

LIMIT_MESSAGE = (
    "You have submitted 2 times in the last minute, the limit; wait a moment and submit again."
)


@pytest.fixture
def members(alice, bob, carol, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.SUBMIT_RATE_PER_MINUTE = 2
    keys = {}
    for member in (alice, bob):
        ledger.grant(member, 1000, by=carol, reason="welcome")
        keys[member.username] = make_key(member)
    return keys


def as_member(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_member_over_the_submit_limit_is_refused_and_not_charged(alice, members):
    client = as_member(alice)
    for _ in range(2):
        assert client.post(CREATE, form_data(members["alice"])).status_code == 302
    before = charged(alice)
    response = client.post(CREATE, form_data(members["alice"], prompt="A third one"))
    assert response.status_code == 200
    html = response.content.decode()
    # At the top of the form, where a refusal is explained.
    assert re.search(r'id="create-summary"[^>]*>\s*<p>' + re.escape(LIMIT_MESSAGE), html)
    assert "A third one</textarea>" in html  # what was typed is kept
    assert charged(alice) == before
    assert Task.objects.filter(user=alice).count() == 2


def test_the_limit_is_explained_in_the_htmx_form_too(alice, members):
    client = as_member(alice)
    for _ in range(2):
        client.post(CREATE, form_data(members["alice"]), HTTP_HX_REQUEST="true")
    response = client.post(CREATE, form_data(members["alice"]), HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert html.lstrip().startswith('<form id="create-form"')
    assert LIMIT_MESSAGE in html
    assert "hx-swap-oob" not in html
    assert Task.objects.filter(user=alice).count() == 2


def test_the_limit_is_per_member(alice, bob, members):
    client = as_member(alice)
    for _ in range(3):
        client.post(CREATE, form_data(members["alice"]))
    assert Task.objects.filter(user=alice).count() == 2
    teammate = as_member(bob)
    for _ in range(2):
        assert teammate.post(CREATE, form_data(members["bob"])).status_code == 302
    assert Task.objects.filter(user=bob).count() == 2


def test_a_resent_form_is_not_a_new_submit(alice, members):
    client = as_member(alice)
    first = form_data(members["alice"])
    response = client.post(CREATE, first)
    client.post(CREATE, form_data(members["alice"]))
    before = charged(alice)
    # At the limit, the first form sent again still answers with its own task, for free.
    again = client.post(CREATE, first)
    assert again.status_code == 302
    assert again["Location"] == response["Location"]
    assert charged(alice) == before
    assert Task.objects.filter(user=alice).count() == 2


def test_refused_submits_do_not_use_up_the_limit(alice, members):
    client = as_member(alice)
    for _ in range(3):
        response = client.post(CREATE, form_data(members["alice"], duration="7"))
        assert "accepts 4, 6, 8 or 10 seconds" in response.content.decode()
    for _ in range(2):
        assert client.post(CREATE, form_data(members["alice"])).status_code == 302


def test_the_window_rolls_a_minute_behind_now(alice, members):
    client = as_member(alice)
    for _ in range(2):
        client.post(CREATE, form_data(members["alice"]))
    oldest = Task.objects.filter(user=alice).order_by("created_at").first()
    Task.objects.filter(pk=oldest.pk).update(created_at=timezone.now() - timedelta(seconds=61))
    assert client.post(CREATE, form_data(members["alice"])).status_code == 302
    assert LIMIT_MESSAGE in client.post(CREATE, form_data(members["alice"])).content.decode()
    assert Task.objects.filter(user=alice).count() == 3


# --- sessions ----------------------------------------------------------------------------------


def test_sessions_last_a_finite_time_set_on_the_cookie_at_login(client, alice):
    age = django_settings.SESSION_COOKIE_AGE
    assert 0 < age <= 90 * 86_400
    assert django_settings.SESSION_COOKIE_HTTPONLY
    response = log_in(client)
    assert response.status_code == 302
    cookie = response.cookies[django_settings.SESSION_COOKIE_NAME]
    assert int(cookie["max-age"]) == age
    session = Session.objects.get(session_key=cookie.value)
    expected = timezone.now() + timedelta(seconds=age)
    assert abs((session.expire_date - expected).total_seconds()) < 60


def test_logging_out_ends_the_session_on_the_server(client, alice):
    log_in(client)
    key = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    assert Session.objects.filter(session_key=key).exists()
    response = client.post("/accounts/logout/")
    assert response.status_code == 302
    assert not Session.objects.filter(session_key=key).exists()
    assert response.cookies[django_settings.SESSION_COOKIE_NAME].value == ""
    # The old cookie, kept and sent again, opens nothing.
    stale = Client()
    stale.cookies[django_settings.SESSION_COOKIE_NAME] = key
    assert stale.get("/accounts/profile/").status_code == 302


def test_behind_a_named_proxy_throttling_reads_the_forwarded_client_address():
    import subprocess
    import sys

    from django.conf import settings as django_settings

    from tests.helpers import child_environment

    code = (
        "import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'omniweb.settings');"
        "django.setup(); from django.conf import settings as s;"
        "print(s.TRUSTED_PROXY_COUNT, s.AXES_CLIENT_IP_CALLABLE)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=django_settings.BASE_DIR,
        env=child_environment(OMNIWEB_TRUSTED_PROXY_COUNT="1"),
        capture_output=True,
        text=True,
    )
    # What django-axes then sees is tests/test_client_address.py's (RELIABILITY 32).
    assert result.stdout.split() == ["1", "omniweb.clientip.client_address"], result.stderr[-1000:]
