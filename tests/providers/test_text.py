"""RELIABILITY 28: what a gateway says reaches people only as bounded, redacted text.

A ProviderError's `message` and a ProviderStatus's `error` are our own words; the gateway's
words travel in `details`, taken only from its documented error fields, cut to 300 characters
and with our key (and anything shaped like a credential) replaced, as are the answer kept for
admins (`ProviderError.body`, `ProviderStatus.raw`).
"""

import json

import pytest
import respx

from generations import providers
from generations.providers import Credentials, ErrorKind, GenerationRequest, ProviderError, State
from generations.providers.text import DETAILS_CHARS, REDACTED, bounded_details, redact

SECRET = "sk-live-Z9y8X7w6V5u4T3s2R1q0"
KEYS = {
    "omniakey": Credentials(api_key=SECRET),
    "omnivideo": Credentials(api_key=SECRET, base_url="https://your-site.com"),
    "apimart": Credentials(api_key=SECRET),
    "omixa": Credentials(api_key=SECRET),
}
REQUESTS = {
    "omniakey": GenerationRequest("omniakey", "sora", "waves", duration=5),
    "omnivideo": GenerationRequest("omnivideo", "gpt-image-2", "a zen garden"),
    "apimart": GenerationRequest("apimart", "Omni-Flash-Ext", "a cat", duration=6),
    "omixa": GenerationRequest("omixa", "sora", "a desk", duration=8, resolution="1280x720"),
}
GATEWAYS = sorted(KEYS)

# Each gateway's error answer in the shape its document (or, for Omixa, its adapter) gives,
# carrying `words` where the gateway puts its reason.


def error_body(gateway: str, words: str) -> dict:
    if gateway == "omnivideo":
        return {"code": 400, "msg": words}
    if gateway == "omixa":
        return {"error": {"code": "bad_request", "message": words}}
    return {"error": {"type": "invalid_request_error", "message": words}}


def failed_task(gateway: str, words: str) -> dict:
    """A status answer for a failed task with `words` as the documented reason."""
    if gateway == "omniakey":
        return {"id": "vtask-1", "status": "failed", "error": {"message": words}}
    if gateway == "omnivideo":
        return {"code": 200, "msg": words, "data": {"task_id": "t1", "task_status": 4}}
    if gateway == "apimart":
        return {
            "code": 200,
            "data": {"id": "t1", "status": "failed", "error": {"message": words, "code": "x"}},
        }
    return {"id": "t1", "status": "failed", "error": {"message": words}}


def refused(gateway: str, status: int, **answer) -> ProviderError:
    respx.route().respond(status, **answer)
    with pytest.raises(ProviderError) as caught:
        providers.get(gateway).submit(REQUESTS[gateway], KEYS[gateway])
    return caught.value


def polled(gateway: str, body: dict):
    respx.route().respond(200, json=body)
    return providers.get(gateway).status("t1", KEYS[gateway])


def everything_shown(error_or_status) -> str:
    """Every text that leaves the provider layer, as one string to search."""
    parts = [
        getattr(error_or_status, name, None)
        for name in ("message", "error", "details", "code", "error_code")
    ]
    parts += [repr(error_or_status), str(getattr(error_or_status, "args", ""))]
    parts += [json.dumps(getattr(error_or_status, attr, None), default=str) for attr in ("body",)]
    parts += [json.dumps(getattr(error_or_status, "raw", None), default=str)]
    return " ".join(str(p) for p in parts)


# --- pages, empty answers and other bodies that are not JSON ------------------------------------

HTML_PAGE = (
    "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>"
    "<h1>internal-billing.corp.local</h1><pre>Traceback: db password=hunter2hunter2</pre>"
    "</body></html>"
)


@pytest.mark.parametrize("gateway", GATEWAYS)
@respx.mock
def test_an_html_error_page_is_named_never_shown(gateway):
    """RELIABILITY 28"""
    error = refused(gateway, 500, text=HTML_PAGE, headers={"Content-Type": "text/html"})
    assert error.kind == ErrorKind.TRANSIENT and error.status_code == 500
    assert error.details == "an HTML page (HTTP 500)"
    for text in (error.message, error.details):
        assert "<" not in text and "corp.local" not in text and "hunter2" not in text


@pytest.mark.parametrize("gateway", GATEWAYS)
@respx.mock
def test_a_success_status_with_an_html_page_is_named_never_shown(gateway):
    """RELIABILITY 28"""
    respx.route().respond(200, text=HTML_PAGE)
    with pytest.raises(ProviderError) as caught:
        providers.get(gateway).status("t1", KEYS[gateway])
    assert caught.value.code == "malformed_body"
    assert caught.value.details == "an HTML page (HTTP 200)"
    assert "corp.local" not in caught.value.message


@pytest.mark.parametrize(
    "answer, details",
    [
        ({"content": b""}, "an empty answer (HTTP 502)"),
        ({"content": b"   \n"}, "an empty answer (HTTP 502)"),
        ({"content": b"x" * 1234}, "a non-JSON answer of 1,234 bytes (HTTP 502)"),
        ({"text": "<html><body>down</body></html>"}, "an HTML page (HTTP 502)"),
    ],
)
@respx.mock
def test_other_answers_that_are_not_json_are_named_by_kind_and_size(answer, details):
    """RELIABILITY 28"""
    assert refused("apimart", 502, **answer).details == details


# --- the gateway's words: only documented fields, as written, bounded ---------------------------


@respx.mock
def test_apimart_documented_failure_example_gives_its_error_message_as_details():
    """RELIABILITY 28: document 002's "Failed Result Example"."""
    body = {
        "code": 200,
        "data": {
            "id": "task_01KS1H7ZYSJWH1N779S2FSHTKA",
            "status": "failed",
            "progress": 100,
            "created": 1779246294,
            "completed": 1779246534,
            "actual_time": 240,
            "estimated_time": 600,
            "cost": 0,
            "error": {
                "message": "invalid duration 7, must be one of 4/6/8/10",
                "code": "task_failed",
            },
        },
    }
    status = polled("apimart", body)
    assert status.state == State.FAILED
    assert status.details == "invalid duration 7, must be one of 4/6/8/10"
    assert status.error == "APIMart reported that the task failed."
    assert status.error_code == "task_failed"


@pytest.mark.parametrize(
    "http_status, error_type",
    [
        (400, "invalid_duration"),
        (400, "invalid_resolution"),
        (400, "unsupported_image_count"),
        (401, "authentication_error"),
        (402, "payment_required"),
        (429, "rate_limit_error"),
    ],
)
@respx.mock
def test_apimart_documented_error_types_give_their_message_as_details(http_status, error_type):
    """RELIABILITY 28: document 002's error table; the words are the gateway's, the message ours."""
    error = refused(
        "apimart",
        http_status,
        json={"error": {"type": error_type, "message": "Rate limit exceeded"}},
    )
    assert error.code == error_type
    assert error.details == "Rate limit exceeded"
    assert error.message.startswith("APIMart ") and "Rate limit exceeded" not in error.message


@respx.mock
def test_omnivideo_business_failure_keeps_its_chinese_msg_verbatim():
    """RELIABILITY 28: document 001, "code: 0 — Business failure (see msg field for details)"."""
    error = refused("omnivideo", 200, json={"code": 0, "msg": "积分不足,请充值", "data": None})
    assert error.kind == ErrorKind.BUSINESS and error.code == "0"
    assert error.details == "积分不足,请充值"
    assert error.message == "Omni Video reported a business failure."


@respx.mock
def test_omnivideo_failed_task_gives_the_envelope_msg_as_details():
    """RELIABILITY 28"""
    status = polled("omnivideo", failed_task("omnivideo", "生成失败: 内容违规"))
    assert status.state == State.FAILED
    assert status.details == "生成失败: 内容违规"
    assert status.error == "Omni Video reported that the task failed."


@respx.mock
def test_omnivideo_invalid_key_gives_its_msg_as_details():
    """RELIABILITY 28: document 001, "HTTP 401 — Invalid or missing API key"."""
    error = refused("omnivideo", 401, json={"code": 401, "msg": "无效的key"})
    assert error.kind == ErrorKind.AUTHENTICATION
    assert error.details == "无效的key"
    assert "无效" not in error.message


@respx.mock
def test_omniakey_documented_failure_gives_error_message_as_details():
    """RELIABILITY 28: document 000, `result['error']['message']` of a failed task."""
    status = polled("omniakey", failed_task("omniakey", "Content policy violation"))
    assert status.state == State.FAILED
    assert status.details == "Content policy violation"
    assert status.error == "OmniaKey reported that the task failed."


@pytest.mark.parametrize(
    "body",
    [
        {"error": {"code": "quota", "message": "Quota exhausted"}},
        {"error": "Quota exhausted"},
        {"message": "Quota exhausted"},
        {"detail": "Quota exhausted"},
    ],
)
@respx.mock
def test_omixa_error_reason_is_read_tolerantly_into_details(body):
    """RELIABILITY 28: document 003 shows no error answer; the adapter reads the common shapes."""
    error = refused("omixa", 402, json=body)
    assert error.kind == ErrorKind.PAYMENT
    assert error.details == "Quota exhausted"
    assert "Quota" not in error.message


@respx.mock
def test_undocumented_fields_never_reach_details():
    """RELIABILITY 28: a field the document does not name is not read, whatever it says."""
    error = refused("apimart", 400, json={"debug": "SELECT * FROM keys", "error": {"type": "x"}})
    assert error.details is None and "SELECT" not in error.message


@pytest.mark.parametrize("gateway", GATEWAYS)
@respx.mock
def test_a_long_error_message_is_cut_to_300_characters(gateway):
    """RELIABILITY 28"""
    words = "The upstream model refused this prompt. " * 50  # 2 KB
    error = refused(gateway, 400, json=error_body(gateway, words))
    assert len(error.details) == DETAILS_CHARS == 300
    assert error.details.endswith("…")
    assert words.startswith(error.details[:-1])
    status = polled(gateway, failed_task(gateway, words))
    assert len(status.details) == 300 and status.details.endswith("…")


@pytest.mark.parametrize("gateway", GATEWAYS)
@respx.mock
def test_control_and_direction_characters_are_removed(gateway):
    """RELIABILITY 28"""
    words = "bad\x00 \x1b prompt\u202e\r\nsecond line\u2066"
    error = refused(gateway, 400, json=error_body(gateway, words))
    assert error.details == "bad prompt second line"


@respx.mock
def test_an_unknown_status_is_described_by_us_and_shown_only_as_details():
    """RELIABILITY 28"""
    body = {"code": 200, "data": {"id": "t1", "status": "<b>moderating</b>"}}
    respx.route().respond(200, json=body)
    with pytest.raises(ProviderError) as caught:
        providers.get("apimart").status("t1", KEYS["apimart"])
    assert caught.value.message == "APIMart reported a task status Omniweb does not know."
    assert caught.value.details == "'<b>moderating</b>'"


# --- our key, and anything like a key, is redacted ----------------------------------------------


@pytest.mark.parametrize("gateway", GATEWAYS)
@respx.mock
def test_an_error_echoing_our_key_has_it_replaced_in_details_and_body(gateway):
    """RELIABILITY 28"""
    words = f"Key {SECRET} is not allowed to use this model"
    error = refused(gateway, 400, json=error_body(gateway, words))
    assert error.details == f"Key {REDACTED} is not allowed to use this model"
    assert SECRET not in everything_shown(error)
    assert REDACTED in json.dumps(error.body, ensure_ascii=False)


@pytest.mark.parametrize("gateway", GATEWAYS)
@respx.mock
def test_a_failed_task_echoing_our_key_has_it_replaced_in_details_and_raw(gateway):
    """RELIABILITY 28"""
    status = polled(gateway, failed_task(gateway, f"denied for Bearer {SECRET}"))
    assert status.details == f"denied for Bearer {REDACTED}"
    assert SECRET not in everything_shown(status)


@respx.mock
def test_our_key_is_replaced_deep_inside_the_raw_answer_and_its_keys():
    """RELIABILITY 28: nested dicts and lists, dictionary keys, and JSON-escaped text."""
    body = {
        "code": 200,
        "data": {
            "id": "t1",
            "status": "processing",
            "echo": [{"headers": {"authorization": f"Bearer {SECRET}"}}, [[SECRET]]],
            SECRET: "as a key",
            "as_text": json.dumps({"api_key": SECRET}),
            "quoted": SECRET.replace("-", "%2D"),
        },
    }
    status = polled("apimart", body)
    text = json.dumps(status.raw)
    assert SECRET not in text and SECRET[:12] not in text
    assert status.raw["data"]["id"] == "t1" and status.raw["data"]["status"] == "processing"


@respx.mock
def test_our_key_in_a_page_that_is_not_json_is_replaced_in_the_body_kept_for_admins():
    """RELIABILITY 28"""
    page = f"<pre>upstream rejected Authorization: Bearer {SECRET}"
    error = refused("apimart", 500, text=page)
    assert SECRET not in error.body and REDACTED in error.body
    assert error.details == f"a non-JSON answer of {len(page)} bytes (HTTP 500)"


@respx.mock
def test_a_long_message_cut_at_our_key_leaves_no_piece_of_it():
    """RELIABILITY 28: redaction comes before the cut."""
    words = "x " * 140 + SECRET.replace("-", "") + " and more"
    key = Credentials(api_key=SECRET.replace("-", ""))
    respx.route().respond(400, json=error_body("apimart", words))
    with pytest.raises(ProviderError) as caught:
        providers.get("apimart").submit(REQUESTS["apimart"], key)
    assert SECRET.replace("-", "")[:6] not in caught.value.details


@respx.mock
def test_a_truncated_echo_of_our_key_is_replaced():
    """RELIABILITY 28: a gateway that echoes most of the key gives most of it away."""
    error = refused("apimart", 401, json=error_body("apimart", f"unknown key {SECRET[:18]}..."))
    assert SECRET[:12] not in error.details and REDACTED in error.details


@pytest.mark.parametrize(
    "text, shown",
    [
        ("sent Authorization: Bearer abc.def-123_456", "sent Authorization: Bearer [redacted]"),
        ("bad key sk-proj-AbCdEfGh1234567890xyz", "bad key [redacted]"),
        ("token omx_live_abcdef0123456789 expired", "token [redacted] expired"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl", "jwt [redacted]"),
        ("GET /v1?api_key=abc123def456&x=1", "GET /v1?api_key=[redacted]&x=1"),
        ('{"access_token": "ya29.a0AfH6SMB"}', '{"access_token": "[redacted]"}'),
        # Prose that only looks near a credential stays readable.
        ("Check the Bearer Token", "Check the Bearer Token"),
        ("Missing Bearer authentication.", "Missing Bearer authentication."),
        ("Invalid token: expired", "Invalid token: expired"),
        ("task_01KS1H7ZYSJWH1N779S2FSHTKA not found", "task_01KS1H7ZYSJWH1N779S2FSHTKA not found"),
    ],
)
def test_credential_shaped_strings_are_redacted_even_when_not_our_key(text, shown):
    """RELIABILITY 28"""
    assert redact(text, None) == shown


def test_the_public_helpers_bound_and_redact_for_reuse():
    """RELIABILITY 28: the engine reuses these for its own texts."""
    assert bounded_details(None) is None and bounded_details({"a": 1}) is None
    assert bounded_details("  \x00 ") is None
    assert bounded_details(f"echo {SECRET}", SECRET) == f"echo {REDACTED}"
    assert bounded_details("y" * 50, limit=10) == "y" * 9 + "…"
    escaped = json.dumps({"k": 'sk-a/b"c-0123456789'})  # escaped quote and slash
    assert "0123456789" not in redact(escaped.replace("/", "\\/"), 'sk-a/b"c-0123456789')
