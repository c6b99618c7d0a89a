"""The fixed cast every test uses: alice (member), bob (teammate), carol (admin)."""

import pytest
from django.db import connections

PASSWORD = "correct-horse-battery-staple"


def pytest_report_header(config):
    from django.conf import settings

    broker = "redis" if settings.REDIS_URL else "orm"
    return f"omniweb: database {settings.DATABASES['default']['ENGINE']}, broker {broker}"


@pytest.fixture(autouse=True)
def quick_passwords(settings):
    """The cast logs in thousands of times; slow password hashing would only slow the suite.
    (Hashing itself is Django's and untouched in production.)"""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user(
        "alice", email="alice@example.com", password=PASSWORD, display_name="Alice A."
    )


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user(
        "bob", email="bob@example.com", password=PASSWORD, display_name="Bob B."
    )


@pytest.fixture
def carol(django_user_model):
    return django_user_model.objects.create_user(
        "carol", email="carol@example.com", password=PASSWORD, is_staff=True, is_superuser=True
    )


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture
def page(live_server):
    """A Playwright page in headless Chromium (Debian's package; never a downloaded browser).

    Skipped where Chromium is missing, except when OMNIWEB_REQUIRE_BROWSER=1 (CI), where a
    missing browser is a failure.
    """
    import os
    from pathlib import Path

    if not Path(CHROMIUM).exists():
        if os.environ.get("OMNIWEB_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} is required (OMNIWEB_REQUIRE_BROWSER=1)")
        pytest.skip(f"browser tests need {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls the fixtures make
    # around it are still plain synchronous calls.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(base_url=live_server.url)
        page = context.new_page()
        page.set_default_timeout(10_000)
        yield page
        browser.close()
        # ORM calls made while Playwright's loop runs get connections of their own context;
        # close them here or they keep the test database from being dropped.
        connections.close_all()
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


@pytest.fixture(autouse=True)
def empty_page_caches():
    """Rendered tiles and filters, ended cards, the gallery's members and typical durations
    are kept in each process's memory; a test starts without what an earlier test's pages
    left there."""
    from generations import cards, gallery

    for kept in (
        gallery.TILE_CACHE,
        gallery.MEMBER_CACHE,
        gallery.FILTER_CACHE,
        cards.CARD_CACHE,
        cards.TYPICAL_CACHE,
    ):
        kept.clear()


@pytest.fixture(autouse=True)
def seeded_prices(request):
    """Transactional tests empty every table when they end, the prices a migration seeded
    included: any test that uses the database starts with them in place."""
    marker = request.node.get_closest_marker("django_db")
    names = set(request.fixturenames)
    if not marker and not {"db", "transactional_db", "live_server"} & names:
        return
    transactional = bool(marker and marker.kwargs.get("transaction")) or bool(
        {"transactional_db", "live_server"} & names
    )
    # Make sure database access is set up before this fixture touches it.
    request.getfixturevalue("transactional_db" if transactional else "db")
    import importlib

    from django.apps import apps

    from generations.models import ModelPrice

    if not ModelPrice.objects.exists():
        importlib.import_module("generations.migrations.0002_seed_prices").seed(apps, None)
