"""Signing in and out, passwords, the profile, the layout, and who may open what."""

import re

import pytest
from django.core import mail
from django.core.management import call_command
from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.resolvers import RegexPattern

from tests.conftest import PASSWORD

# Pages anybody may open: signing in, getting back in, the health check, what gateways fetch
# or call (the webhook and uploaded reference images) and shared pages for people outside the
# team; an unguessable token is the credential of each (see tests/test_engine.py,
# tests/test_create.py and tests/test_share_permissions.py).
PUBLIC = {
    "generations-webhook",
    "generations-shared",
    "generations-shared-file",
    "generations-shared-poster",
    "generations-reference",
    "login",
    "password_reset",
    "password_reset_done",
    "password_reset_confirm",
    "password_reset_complete",
    "healthz",
    "admin:login",
}

CONVERTER_SAMPLES = {
    "int": "1",
    "str": "x",
    "slug": "x",
    "path": "x/y",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def concrete_urls(resolver=None, prefix="", namespace=""):
    """Yield (name, path) for every route, with a sample value for each parameter."""
    resolver = resolver or get_resolver()
    for entry in resolver.url_patterns:
        if isinstance(entry.pattern, RegexPattern):
            continue  # regex routes (admin's catch-alls) are covered by their named siblings
        route = str(entry.pattern)
        path = re.sub(r"<(?:(\w+):)?\w+>", lambda m: CONVERTER_SAMPLES[m[1] or "str"], route)
        if isinstance(entry, URLResolver):
            ns = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from concrete_urls(entry, prefix + path, ns)
        elif isinstance(entry, URLPattern):
            yield f"{namespace}{entry.name}", "/" + prefix + path


def private_urls():
    # The simulator plays the gateways: programs call it with bearer keys, not sessions. So
    # do the API's callers, with personal tokens (tests/test_api.py: 401 without one).
    programs = ("/simulator/", "/api/", "/v1/", "/metrics")  # /metrics: a scraper's token
    return sorted(
        {
            path
            for name, path in concrete_urls()
            if name not in PUBLIC and not path.startswith(programs)
        }
    )


def test_the_url_walk_sees_the_whole_site():
    names = {name for name, _ in concrete_urls()}
    assert {"accounts-profile", "password_change", "admin:index", "healthz"} <= names


@pytest.mark.django_db
@pytest.mark.parametrize("path", private_urls())
def test_anonymous_visitors_are_sent_to_log_in(client, path):
    response = client.get(path)
    assert response.status_code == 302, path
    # Admin pages may use the admin's own login form; everything else the site's.
    allowed = ("/accounts/login/?next=", "/admin/login/?next=")
    assert response["Location"].startswith(allowed), path


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["login", "password_reset", "healthz"])
def test_public_pages_open_without_logging_in(client, name):
    paths = dict(concrete_urls())
    assert client.get(paths[name]).status_code == 200


@pytest.mark.django_db
def test_a_member_logs_in_and_lands_on_create(client, alice):
    response = client.post(
        "/accounts/login/", {"username": "alice", "password": PASSWORD}, follow=True
    )
    assert response.redirect_chain[-1][0] == "/create/"
    assert "Signed in as <strong>Alice A.</strong>" in response.content.decode()


@pytest.mark.django_db
def test_a_wrong_password_is_refused_with_a_message(client, alice):
    response = client.post("/accounts/login/", {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.content.decode()
    assert client.get("/accounts/profile/").status_code == 302


@pytest.mark.django_db
def test_login_returns_to_the_page_that_asked_for_it(client, alice):
    response = client.post(
        "/accounts/login/?next=/accounts/password_change/",
        {"username": "alice", "password": PASSWORD, "next": "/accounts/password_change/"},
    )
    assert response["Location"] == "/accounts/password_change/"


@pytest.mark.django_db
def test_logging_out_takes_a_post_and_ends_the_session(client, alice):
    client.force_login(alice)
    assert client.get("/accounts/logout/").status_code == 405
    response = client.post("/accounts/logout/")
    assert response["Location"] == "/accounts/login/"
    assert client.get("/accounts/profile/").status_code == 302


@pytest.mark.django_db
def test_a_member_changes_their_password(client, alice):
    client.force_login(alice)
    response = client.post(
        "/accounts/password_change/",
        {
            "old_password": PASSWORD,
            "new_password1": "a-much-better-passphrase-42",
            "new_password2": "a-much-better-passphrase-42",
        },
    )
    assert response["Location"] == "/accounts/password_change/done/"
    client.logout()
    assert client.login(username="alice", password="a-much-better-passphrase-42")
    assert not client.login(username="alice", password=PASSWORD)


@pytest.mark.django_db
def test_a_password_change_with_the_wrong_old_password_says_so(client, alice):
    client.force_login(alice)
    response = client.post(
        "/accounts/password_change/",
        {"old_password": "wrong", "new_password1": "x-Yz-123456", "new_password2": "x-Yz-123456"},
    )
    assert response.status_code == 200
    assert "Your old password was entered incorrectly" in response.content.decode()


@pytest.mark.django_db
def test_a_forgotten_password_is_reset_through_the_emailed_link(client, alice):
    response = client.post("/accounts/password_reset/", {"email": "alice@example.com"})
    assert response["Location"] == "/accounts/password_reset/done/"
    assert len(mail.outbox) == 1
    link = re.search(r"http://testserver(/accounts/reset/\S+/)", mail.outbox[0].body)[1]
    form_page = client.get(link, follow=True)
    assert "Choose a new password" in form_page.content.decode()
    response = client.post(
        form_page.redirect_chain[-1][0],
        {"new_password1": "fresh-start-passphrase-7", "new_password2": "fresh-start-passphrase-7"},
    )
    assert response["Location"] == "/accounts/reset/done/"
    assert client.login(username="alice", password="fresh-start-passphrase-7")


@pytest.mark.django_db
def test_a_member_edits_their_display_name(client, alice):
    client.force_login(alice)
    response = client.post(
        "/accounts/profile/",
        {"display_name": "Alice in Studio", "email": "alice@example.com"},
        follow=True,
    )
    assert "Your profile was saved." in response.content.decode()
    alice.refresh_from_db()
    assert alice.display_name == "Alice in Studio"


@pytest.mark.django_db
def test_a_bad_email_is_shown_beside_the_field_and_nothing_is_saved(client, alice):
    client.force_login(alice)
    response = client.post("/accounts/profile/", {"display_name": "X", "email": "not-an-email"})
    assert "Enter a valid email address." in response.content.decode()
    alice.refresh_from_db()
    assert alice.display_name == "Alice A."


@pytest.mark.django_db
def test_only_staff_see_the_admin_link_and_open_the_admin(client, alice, carol):
    client.force_login(alice)
    assert "/admin/" not in client.get("/accounts/profile/").content.decode()
    assert client.get("/admin/")["Location"].startswith("/admin/login/")
    client.force_login(carol)
    assert 'href="/admin/"' in client.get("/accounts/profile/").content.decode()
    assert "Site administration" in client.get("/admin/").content.decode()


@pytest.mark.django_db
def test_layout_serves_htmx_locally_and_sends_csrf_on_htmx_requests(client, alice):
    client.force_login(alice)
    page = client.get("/accounts/profile/").content.decode()
    assert re.search(r'<script src="/static/django_htmx/htmx[\w.-]*\.js"', page)
    assert "https://" not in page  # nothing from a CDN
    token = re.search(r"hx-headers='\{\"x-csrftoken\": \"(\w+)\"\}'", page)[1]
    assert len(token) >= 32
    for landmark in ("<header", '<nav aria-label="Main"', "<main", "<footer"):
        assert landmark in page


@pytest.mark.django_db
def test_unknown_pages_get_the_friendly_not_found_page(client, alice):
    client.force_login(alice)
    response = client.get("/no/such/page/")
    assert response.status_code == 404
    assert "We couldn't find that page" in response.content.decode()


@pytest.mark.django_db
def test_ensure_admin_creates_one_admin_and_shows_its_password_once(django_user_model, capsys):
    call_command("ensure_admin")
    first = capsys.readouterr().out
    password = re.search(r"password '([^']+)'", first)[1]
    admin = django_user_model.objects.get(username="admin")
    assert admin.is_superuser and admin.check_password(password)
    call_command("ensure_admin")
    second = capsys.readouterr().out
    assert password not in second and "already exists" in second
    assert django_user_model.objects.filter(is_superuser=True).count() == 1


@pytest.mark.django_db
def test_an_admin_creates_a_member_who_can_then_log_in(client, carol, django_user_model):
    client.force_login(carol)
    response = client.post(
        "/admin/accounts/user/add/",
        {
            "username": "dave",
            "display_name": "Dave D.",
            "email": "dave@example.com",
            "password1": "dave-first-passphrase-9",
            "password2": "dave-first-passphrase-9",
            "usable_password": "true",
            "_save": "Save",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    dave = django_user_model.objects.get(username="dave")
    assert (dave.display_name, dave.is_staff) == ("Dave D.", False)
    client.logout()
    assert client.login(username="dave", password="dave-first-passphrase-9")


@pytest.mark.django_db
def test_there_is_no_public_sign_up(client):
    assert "/accounts/signup/" not in {path for _, path in concrete_urls()}
    assert "Accounts are created by your team's admin." in client.get("/accounts/login/").text


@pytest.mark.django_db
def test_forbidden_and_server_error_pages_are_friendly(rf, alice):
    from django.core.exceptions import PermissionDenied
    from django.views.defaults import permission_denied, server_error

    request = rf.get("/somewhere/")
    request.user = alice
    forbidden = permission_denied(request, PermissionDenied())
    assert forbidden.status_code == 403
    assert "You can't do that here" in forbidden.content.decode()
    broken = server_error(rf.get("/somewhere/"))
    assert broken.status_code == 500
    assert "Something went wrong on our side" in broken.content.decode()
