"""RELIABILITY 33: rate limits use fixed windows that a flood cannot extend, and password-reset
emails are throttled per account and per client address without telling anyone which
addresses have accounts."""

import logging
import re
from datetime import timedelta

import pytest
from django.core import mail
from django.core.cache import cache, caches
from django.core.cache.backends.db import DatabaseCache
from django.test import Client
from django.utils import timezone

from omniweb import ratelimit

pytestmark = pytest.mark.django_db

RESET = "/accounts/password_reset/"
DONE = "/accounts/password_reset/done/"
HOOK = "/hooks/" + "y" * 43  # no task has this token: an admitted call answers 404
# The start of a clock hour (so of a minute too): windows line up with the test's own steps.
START = 1_800_000_000 - 1_800_000_000 % 3600


class Clock:
    """Stands in for the `time` module inside omniweb.ratelimit."""

    def __init__(self, now: float):
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    cache.clear()
    clock = Clock(START)
    monkeypatch.setattr(ratelimit, "time", clock)
    yield clock
    cache.clear()


# --- the fixed window ----------------------------------------------------------------------------


def test_a_webhook_flood_does_not_keep_the_window_shut(client, clock, settings):
    settings.WEBHOOK_RATE_PER_MINUTE = 3
    codes = []
    # A call every ten seconds: a window restarted by each call, or one sliding over the last
    # minute, would still be shut at 61 s and 65 s.
    for second in (0, 10, 20, 30, 40, 50, 61, 65, 70, 75, 80):
        clock.now = START + second
        codes.append(client.post(HOOK).status_code)
    assert codes == [404, 404, 404, 429, 429, 429, 404, 404, 404, 429, 429]


def test_each_window_counts_from_zero_and_only_its_own_calls(clock):
    assert [ratelimit.hit("x", 60) for _ in range(3)] == [1, 2, 3]
    assert ratelimit.hit("y", 60) == 1
    clock.now = START + 59.9
    assert ratelimit.hit("x", 60) == 4
    clock.now = START + 60
    assert ratelimit.hit("x", 60) == 1


@pytest.mark.skipif(
    not isinstance(caches["default"], DatabaseCache),
    reason="the database cache's own expiry is the subject",
)
def test_an_hour_long_count_outlives_the_database_caches_default_expiry(clock, monkeypatch):
    # The database cache rewrites a count on incr with its default expiry (five minutes).
    for _ in range(3):
        ratelimit.hit("reset", ratelimit.HOUR)
    later = timezone.now() + timedelta(minutes=20)
    monkeypatch.setattr("django.core.cache.backends.db.tz_now", lambda: later)
    clock.now = START + 20 * 60
    assert ratelimit.hit("reset", ratelimit.HOUR) == 4


# --- password resets -----------------------------------------------------------------------------


def ask_reset(email: str, address: str = "127.0.0.1", **headers):
    response = Client().post(RESET, {"email": email}, REMOTE_ADDR=address, **headers)
    assert response.status_code == 302 and response["Location"] == DONE
    return response


def test_an_account_gets_at_most_three_reset_emails_an_hour(alice, clock, caplog):
    caplog.set_level(logging.WARNING, logger="omniweb.accounts")
    for n in range(5):
        ask_reset("alice@example.com", address=f"192.0.2.{n}")
    assert [m.to for m in mail.outbox] == [["alice@example.com"]] * 3
    assert [r.getMessage() for r in caplog.records] == [
        f"event=password_reset_throttled limit=account user={alice.pk} client=192.0.2.3"
    ]
    # The next hour she can ask again.
    clock.now = START + 3600
    ask_reset("alice@example.com")
    assert len(mail.outbox) == 4


def test_one_address_may_ask_ten_times_an_hour_whatever_the_accounts(alice, bob, clock, caplog):
    caplog.set_level(logging.WARNING, logger="omniweb.accounts")
    for n in range(10):
        ask_reset(f"nobody{n}@example.com", address="192.0.2.50")
    ask_reset("bob@example.com", address="192.0.2.50")
    ask_reset("alice@example.com", address="192.0.2.50")
    assert mail.outbox == []
    assert [r.getMessage() for r in caplog.records] == [
        "event=password_reset_throttled limit=address client=192.0.2.50"
    ]
    # Another address is not held back, and the refused requests used none of bob's allowance.
    for _ in range(3):
        ask_reset("bob@example.com", address="192.0.2.51")
    assert [m.to for m in mail.outbox] == [["bob@example.com"]] * 3


def test_behind_a_proxy_the_address_limit_counts_the_forwarded_client(alice, clock, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    for n in range(10):
        ask_reset(f"nobody{n}@example.com", address="10.0.0.2", HTTP_X_FORWARDED_FOR="192.0.2.7")
    ask_reset("alice@example.com", address="10.0.0.2", HTTP_X_FORWARDED_FOR="192.0.2.7")
    assert mail.outbox == []
    ask_reset("alice@example.com", address="10.0.0.2", HTTP_X_FORWARDED_FOR="192.0.2.8")
    assert len(mail.outbox) == 1


def test_a_throttled_reset_looks_like_any_other(alice, clock, settings):
    settings.PASSWORD_RESETS_PER_ACCOUNT_PER_HOUR = 1
    ask_reset("alice@example.com")
    sent = Client().post(RESET, {"email": "alice@example.com"}, follow=True)
    unknown = Client().post(RESET, {"email": "nobody@example.com"}, follow=True)
    assert len(mail.outbox) == 1
    assert sent.redirect_chain == unknown.redirect_chain == [(DONE, 302)]
    assert "If an account uses that address" in sent.content.decode()
    assert without_csrf_tokens(sent.content) == without_csrf_tokens(unknown.content)


def without_csrf_tokens(html: bytes) -> bytes:
    """The page, bar the CSRF token that differs for every visitor and every page."""
    return re.sub(rb"[A-Za-z0-9]{64}", b"-", html)
