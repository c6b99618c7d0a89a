"""How every gateway failure is classified (shared by all adapters): one row per case."""

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
import respx

from generations import providers
from generations.providers import Credentials, ErrorKind, GenerationRequest, ProviderError
from generations.providers.base import parse_retry_after

KEY = Credentials(api_key="sk-test-1234", base_url="https://gw.example")
REQUEST = GenerationRequest("apimart", "Omni-Flash-Ext", "a cat", duration=6)
URL = "https://gw.example/v1/videos/generations"

# status, kind, permanent
TABLE = [
    (400, ErrorKind.INVALID_REQUEST, True),
    (401, ErrorKind.AUTHENTICATION, True),
    (402, ErrorKind.PAYMENT, True),
    (403, ErrorKind.INVALID_REQUEST, True),
    (404, ErrorKind.NOT_FOUND, False),
    (409, ErrorKind.INVALID_REQUEST, True),
    (422, ErrorKind.INVALID_REQUEST, True),
    (429, ErrorKind.RATE_LIMIT, False),
    (500, ErrorKind.TRANSIENT, False),
    (502, ErrorKind.TRANSIENT, False),
    (503, ErrorKind.TRANSIENT, False),
    (504, ErrorKind.TRANSIENT, False),
]


@pytest.mark.parametrize("status, kind, permanent", TABLE)
@pytest.mark.parametrize("gateway", ["omniakey", "omnivideo", "apimart", "omixa"])
@respx.mock
def test_http_errors_are_classified_the_same_for_every_gateway(gateway, status, kind, permanent):
    respx.route().respond(status, text="<html>upstream trouble</html>")
    adapter = providers.get(gateway)
    with pytest.raises(ProviderError) as caught:
        adapter.status("task-1", KEY)
    error = caught.value
    assert (error.kind, error.permanent, error.status_code) == (kind, permanent, status)
    assert error.message.startswith(f"{adapter.name} ")
    assert "<html>" not in error.message  # a gateway's HTML error page is never shown
    assert error.details == f"an HTML page (HTTP {status})"


@respx.mock
def test_retry_after_in_seconds_is_honoured():
    respx.post(URL).respond(429, headers={"Retry-After": "12"})
    with pytest.raises(ProviderError) as caught:
        providers.get("apimart").submit(REQUEST, KEY)
    assert caught.value.retry_after == 12.0


@respx.mock
def test_retry_after_as_an_http_date_is_honoured():
    when = datetime.now(UTC) + timedelta(seconds=90)
    respx.post(URL).respond(429, headers={"Retry-After": format_datetime(when, usegmt=True)})
    with pytest.raises(ProviderError) as caught:
        providers.get("apimart").submit(REQUEST, KEY)
    assert 85 <= caught.value.retry_after <= 90


def test_retry_after_nonsense_is_ignored_and_the_past_is_zero():
    assert parse_retry_after("soon") is None
    assert parse_retry_after("") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@pytest.mark.parametrize(
    "exception, code, sent",
    [
        (httpx.ConnectError("refused"), "connect_failed", False),
        (httpx.ConnectTimeout("slow dns"), "connect_failed", False),
        (httpx.PoolTimeout("busy"), "connect_failed", False),
        (httpx.ReadTimeout("no answer"), "timeout", True),
        (httpx.WriteTimeout("stuck"), "timeout", True),
        (httpx.RemoteProtocolError("dropped"), "connection_error", True),
    ],
)
@respx.mock
def test_network_failures_say_whether_the_gateway_may_have_the_request(exception, code, sent):
    respx.post(URL).mock(side_effect=exception)
    with pytest.raises(ProviderError) as caught:
        providers.get("apimart").submit(REQUEST, KEY)
    error = caught.value
    assert (error.kind, error.code, error.request_sent) == (ErrorKind.TRANSIENT, code, sent)
    assert not error.permanent


@pytest.mark.parametrize("gateway", ["omniakey", "omnivideo", "apimart", "omixa"])
@respx.mock
def test_a_success_status_with_a_body_that_is_not_json_is_transient(gateway):
    respx.route().respond(200, text="<!doctype html><p>maintenance</p>")
    with pytest.raises(ProviderError) as caught:
        providers.get(gateway).status("task-1", KEY)
    assert (caught.value.kind, caught.value.code) == (ErrorKind.TRANSIENT, "malformed_body")


def test_credentials_never_show_the_secret():
    key = Credentials(api_key="sk-canary-SECRET-9876", base_url="https://gw.example")
    assert "SECRET" not in repr(key) and "SECRET" not in str(key)
    assert "9876" in repr(key)


def test_every_gateway_is_registered_under_its_id():
    assert sorted(providers.REGISTRY) == ["apimart", "omixa", "omniakey", "omnivideo"]
    with pytest.raises(KeyError):
        providers.get("nonexistent")
