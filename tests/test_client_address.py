"""RELIABILITY 32: behind trusted proxies the client's address is the forwarded one, for login
throttling, the webhook limit and the logs, and only as many hops as configured are believed."""

import logging
import runpy
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from axes.models import AccessAttempt
from django.conf import settings as django_settings
from django.core.cache import cache
from django.test import Client

from omniweb.clientip import believed_address
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"
PROXY = "10.0.0.2"  # the reverse proxy: every request's REMOTE_ADDR behind it
A, B = "203.0.113.7", "198.51.100.9"


@pytest.fixture(autouse=True)
def fresh_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def one_proxy(settings):
    settings.TRUSTED_PROXY_COUNT = 1


def log_in(client, forwarded: str | None, password: str = PASSWORD, remote: str = PROXY):
    headers = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        headers["HTTP_X_FORWARDED_FOR"] = forwarded
    return client.post(LOGIN, {"username": "alice", "password": password}, **headers)


def fail_until_locked(client, forwarded):
    """Wrong passwords up to the limit; `forwarded` may be a function of the attempt number."""
    for attempt in range(django_settings.AXES_FAILURE_LIMIT):
        header = forwarded(attempt) if callable(forwarded) else forwarded
        response = log_in(client, header, password="not-the-password")
    return response


# --- the rule ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "proxies, forwarded, believed",
    [
        (0, None, PROXY),
        (0, A, PROXY),  # nobody is trusted to say who the client is
        (1, A, A),
        (1, f"{B}, {A}", A),  # B is whatever the client sent; A is what our proxy saw
        (2, f"192.0.2.1, {A}, {B}", A),  # A reached the outer proxy, which forwarded via B
        (1, None, PROXY),
        (1, "", PROXY),
        (2, A, PROXY),  # fewer entries than proxies: the header is not ours
        (1, "not-an-address", PROXY),
        (1, f"{A}:443", PROXY),
        (2, f"{A}, garbage", PROXY),  # every believed entry must be an address
        (1, f"{A},", PROXY),
        (1, " 2001:DB8::0:1 ", "2001:db8::1"),
        (1, "::ffff:203.0.113.7", A),
    ],
)
def test_exactly_the_configured_hops_of_x_forwarded_for_are_believed(proxies, forwarded, believed):
    meta = {"REMOTE_ADDR": PROXY}
    if forwarded is not None:
        meta["HTTP_X_FORWARDED_FOR"] = forwarded
    assert believed_address(meta, proxies) == believed


@pytest.mark.parametrize("remote", ["", "unix:/run/omniweb.sock", None])
def test_without_an_address_of_its_own_a_connection_is_the_unspecified_address(remote):
    meta = {} if remote is None else {"REMOTE_ADDR": remote}
    assert believed_address(meta, 0) == "0.0.0.0"
    assert believed_address({**meta, "HTTP_X_FORWARDED_FOR": "junk"}, 1) == "0.0.0.0"


def test_a_long_forged_header_costs_nothing_and_proves_nothing():
    forged = ", ".join(f"192.0.2.{n % 250}" for n in range(5000))
    meta = {"REMOTE_ADDR": PROXY, "HTTP_X_FORWARDED_FOR": f"{forged}, {A}"}
    assert believed_address(meta, 1) == A


# --- login throttling ----------------------------------------------------------------------------


def test_behind_one_proxy_a_lockout_holds_only_for_the_forwarded_address(alice, one_proxy):
    attacker = Client()
    assert fail_until_locked(attacker, A).status_code == 429
    assert log_in(attacker, A).status_code == 429
    # Alice, elsewhere behind the same proxy, logs in with her password.
    member = Client()
    response = log_in(member, B)
    assert response.status_code == 302
    assert member.get("/accounts/profile/").status_code == 200
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {A}


def test_behind_one_proxy_forging_more_hops_does_not_escape_the_lockout(alice, one_proxy):
    # The attacker makes up a new leftmost entry each time; the proxy still appends A.
    attacker = Client()
    assert fail_until_locked(attacker, lambda n: f"192.0.2.{n}, {A}").status_code == 429
    assert log_in(attacker, f"192.0.2.99, {A}").status_code == 429
    assert log_in(Client(), f"{A}, {B}").status_code == 302


def test_without_trusted_proxies_a_forged_x_forwarded_for_is_ignored(alice, settings):
    settings.TRUSTED_PROXY_COUNT = 0
    attacker = Client()
    assert fail_until_locked(attacker, lambda n: f"192.0.2.{n}").status_code == 429
    # A forged header neither escapes the lockout nor picks whom it falls on.
    assert log_in(attacker, B).status_code == 429
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {PROXY}
    assert log_in(Client(), None, remote="10.9.9.9").status_code == 302


# --- the webhook limit and the logs --------------------------------------------------------------


def test_the_webhook_limit_counts_each_forwarded_client_on_its_own(client, one_proxy, settings):
    settings.WEBHOOK_RATE_PER_MINUTE = 2

    def call(forwarded):
        return client.post(
            "/hooks/" + "y" * 43, REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=forwarded
        ).status_code

    assert [call(A) for _ in range(3)] == [404, 404, 429]
    assert call(B) == 404
    assert call(f"{B}, {A}") == 429  # a forged hop does not make A someone else


def test_our_log_lines_name_the_forwarded_client(client, one_proxy, settings, caplog):
    settings.WEBHOOK_RATE_PER_MINUTE = 1
    caplog.set_level(logging.WARNING, logger="omniweb.engine")
    for _ in range(3):
        client.post("/hooks/" + "y" * 43, REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=f"{B}, {A}")
    refusals = [r.getMessage() for r in caplog.records if "webhook_rate_limited" in r.getMessage()]
    assert refusals == [f"event=webhook_rate_limited client={A}"]  # once per window, not per call


def access_line(environ: dict) -> str:
    """One gunicorn access-log line, written by the logger gunicorn.conf.py configures."""
    from gunicorn.config import Config

    config = runpy.run_path(str(Path(django_settings.BASE_DIR) / "gunicorn.conf.py"))
    logger = config["RedactingLogger"](Config())
    environ = {
        "REQUEST_METHOD": "GET",
        "RAW_URI": "/healthz",
        "PATH_INFO": "/healthz",
        "SERVER_PROTOCOL": "HTTP/1.1",
        **environ,
    }
    response = SimpleNamespace(status="200 OK", sent=2, headers=[])
    request = SimpleNamespace(headers=[])
    atoms = logger.atoms(response, request, environ, timedelta(milliseconds=3))
    return config["access_log_format"] % logger.atoms_wrapper_class(atoms)


def test_the_access_log_shows_the_proxy_and_the_believed_client(one_proxy):
    line = access_line({"REMOTE_ADDR": PROXY, "HTTP_X_FORWARDED_FOR": f"{B}, {A}"})
    assert line.startswith(f"{PROXY} {A} ")
    assert B not in line


def test_without_trusted_proxies_the_access_log_ignores_a_forged_header(settings):
    settings.TRUSTED_PROXY_COUNT = 0
    line = access_line({"REMOTE_ADDR": PROXY, "HTTP_X_FORWARDED_FOR": A})
    assert line.startswith(f"{PROXY} {PROXY} ")
    assert A not in line
