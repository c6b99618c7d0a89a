"""APIMart contract (documents 002 and 004): requests and answers exactly as documented."""

import json
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest
import respx

from generations import providers
from generations.providers import Credentials, ErrorKind, GenerationRequest, ProviderError, State

BASE = "https://api.apimart.ai"
KEY = Credentials(api_key="sk-apimart-test-0001")
TASK = "task_01KS1H7ZYSJWH1N779S2FSHTKA"

SUBMIT_ANSWER = {"code": 200, "data": [{"status": "submitted", "task_id": TASK}]}
SUCCESS = {
    "code": 200,
    "data": {
        "id": TASK,
        "status": "completed",
        "progress": 100,
        "created": 1779246294,
        "completed": 1779246534,
        "actual_time": 240,
        "estimated_time": 600,
        "cost": 0.4,
        "result": {
            "videos": [
                {"url": ["https://cdn.example.com/videos/abc.mp4"], "expires_at": 1779332760}
            ]
        },
    },
}
FAILURE = {
    "code": 200,
    "data": {
        "id": TASK,
        "status": "failed",
        "progress": 100,
        "created": 1779246294,
        "completed": 1779246534,
        "actual_time": 240,
        "estimated_time": 600,
        "cost": 0,
        "error": {"message": "invalid duration 7, must be one of 4/6/8/10", "code": "task_failed"},
    },
}

# The document's four scenarios, as Omniweb requests and as the JSON the gateway must receive.
SCENARIOS = [
    (
        GenerationRequest(
            "apimart",
            "Omni-Flash-Ext",
            "a beautiful sunset over the ocean with seagulls flying",
            duration=6,
            resolution="720p",
            aspect_ratio="16:9",
        ),
        {
            "model": "Omni-Flash-Ext",
            "prompt": "a beautiful sunset over the ocean with seagulls flying",
            "duration": 6,
            "resolution": "720p",
            "aspect_ratio": "16:9",
        },
    ),
    (
        GenerationRequest(
            "apimart",
            "Omni-Flash-Ext",
            "make the character smile and slowly turn around, cinematic camera motion",
            duration=6,
            resolution="1080p",
            aspect_ratio="9:16",
            reference_images=("https://example.com/character.jpg",),
        ),
        {
            "model": "Omni-Flash-Ext",
            "prompt": "make the character smile and slowly turn around, cinematic camera motion",
            "duration": 6,
            "resolution": "1080p",
            "aspect_ratio": "9:16",
            "image_urls": ["https://example.com/character.jpg"],
        },
    ),
    (
        GenerationRequest(
            "apimart",
            "Omni-Flash-Ext",
            "a creative scene combining these elements with smooth camera motion",
            duration=10,
            resolution="1080p",
            aspect_ratio="9:16",
            reference_images=(
                "https://example.com/scene.jpg",
                "https://example.com/character.jpg",
                "https://example.com/product.jpg",
            ),
        ),
        {
            "model": "Omni-Flash-Ext",
            "prompt": "a creative scene combining these elements with smooth camera motion",
            "duration": 10,
            "resolution": "1080p",
            "aspect_ratio": "9:16",
            "image_urls": [
                "https://example.com/scene.jpg",
                "https://example.com/character.jpg",
                "https://example.com/product.jpg",
            ],
        },
    ),
    (
        GenerationRequest(
            "apimart",
            "Omni-Flash-Ext",
            "close-up of a hummingbird hovering in front of a red flower",
            duration=4,
            resolution="4k",
            aspect_ratio="16:9",
        ),
        {
            "model": "Omni-Flash-Ext",
            "prompt": "close-up of a hummingbird hovering in front of a red flower",
            "duration": 4,
            "resolution": "4k",
            "aspect_ratio": "16:9",
        },
    ),
]


@pytest.mark.parametrize("request_, expected", SCENARIOS)
@respx.mock
def test_submit_sends_the_documented_request_and_reads_the_task_id(request_, expected):
    route = respx.post(f"{BASE}/v1/videos/generations").respond(200, json=SUBMIT_ANSWER)
    status = providers.get("apimart").submit(request_, KEY)
    sent = route.calls.last.request
    assert sent.headers["Authorization"] == "Bearer sk-apimart-test-0001"
    assert sent.headers["Content-Type"] == "application/json"
    assert json.loads(sent.content) == expected
    assert (status.provider_task_id, status.state, status.raw_status) == (
        TASK,
        State.QUEUED,
        "submitted",
    )


@respx.mock
def test_a_completed_task_gives_its_video_expiry_cost_and_estimate():
    route = respx.get(f"{BASE}/v1/tasks/{TASK}").respond(200, json=SUCCESS)
    status = providers.get("apimart").status(TASK, KEY)
    assert route.calls.last.request.headers["Authorization"] == "Bearer sk-apimart-test-0001"
    assert status.state == State.SUCCEEDED and status.progress == 100
    assert [r.url for r in status.results] == ["https://cdn.example.com/videos/abc.mp4"]
    assert status.results[0].expires_at == datetime.fromtimestamp(1779332760, UTC)
    assert status.cost == Decimal("0.4")
    assert status.estimated_seconds == 600


@respx.mock
def test_a_failed_task_gives_the_gateways_reason():
    respx.get(f"{BASE}/v1/tasks/{TASK}").respond(200, json=FAILURE)
    status = providers.get("apimart").status(TASK, KEY)
    assert status.state == State.FAILED
    assert status.error == "APIMart reported that the task failed."
    assert status.details == "invalid duration 7, must be one of 4/6/8/10"
    assert status.error_code == "task_failed"
    assert status.cost == Decimal("0") and status.results == ()


@pytest.mark.parametrize(
    "raw, state",
    [
        ("submitted", State.QUEUED),
        ("pending", State.QUEUED),
        ("processing", State.RUNNING),
        ("in_progress", State.RUNNING),
    ],
)
@respx.mock
def test_in_flight_statuses_map_with_their_progress(raw, state):
    body = {"code": 200, "data": {"id": TASK, "status": raw, "progress": 35}}
    respx.get(f"{BASE}/v1/tasks/{TASK}").respond(200, json=body)
    status = providers.get("apimart").status(TASK, KEY)
    assert (status.state, status.progress, status.raw_status) == (state, 35, raw)


@respx.mock
def test_an_unknown_status_is_a_transient_error_not_a_failure():
    body = {"code": 200, "data": {"id": TASK, "status": "moderating"}}
    respx.get(f"{BASE}/v1/tasks/{TASK}").respond(200, json=body)
    with pytest.raises(ProviderError) as caught:
        providers.get("apimart").status(TASK, KEY)
    assert caught.value.kind == ErrorKind.TRANSIENT and caught.value.code == "unknown_status"
    assert not caught.value.permanent


@respx.mock
def test_unknown_fields_are_ignored_and_optional_ones_may_be_missing():
    body = {
        "code": 200,
        "trace": "x",
        "data": {
            "id": TASK,
            "status": "completed",
            "brand_new_field": {"a": 1},
            "result": {"videos": [{"url": ["https://cdn.example.com/v.mp4"]}]},
        },
    }
    respx.get(f"{BASE}/v1/tasks/{TASK}").respond(200, json=body)
    status = providers.get("apimart").status(TASK, KEY)
    assert status.state == State.SUCCEEDED
    assert status.results[0].expires_at is None
    assert (status.progress, status.cost, status.estimated_seconds) == (None, None, None)


@pytest.mark.parametrize(
    "http_status, error_type, kind",
    [
        (400, "invalid_request_error", ErrorKind.INVALID_REQUEST),
        (400, "invalid_duration", ErrorKind.INVALID_REQUEST),
        (400, "invalid_resolution", ErrorKind.INVALID_REQUEST),
        (400, "unsupported_image_count", ErrorKind.INVALID_REQUEST),
        (401, "authentication_error", ErrorKind.AUTHENTICATION),
        (402, "payment_required", ErrorKind.PAYMENT),
        (429, "rate_limit_error", ErrorKind.RATE_LIMIT),
    ],
)
@respx.mock
def test_every_documented_error_is_typed_with_its_code(http_status, error_type, kind):
    body = {"error": {"type": error_type, "message": f"{error_type} happened"}}
    headers = {"Retry-After": "7"} if http_status == 429 else {}
    respx.post(f"{BASE}/v1/videos/generations").respond(http_status, json=body, headers=headers)
    with pytest.raises(ProviderError) as caught:
        providers.get("apimart").submit(SCENARIOS[0][0], KEY)
    error = caught.value
    assert (error.kind, error.code, error.status_code) == (kind, error_type, http_status)
    assert error.message.startswith("APIMart ") and "happened" not in error.message
    assert error.details == f"{error_type} happened"
    assert error.permanent == (http_status != 429)
    assert error.retry_after == (7.0 if http_status == 429 else None)


@respx.mock
def test_a_key_with_its_own_base_url_is_sent_there(settings):
    # A relay on this machine, as an administrator may allow one (RELIABILITY 27).
    settings.GATEWAY_ALLOWED_HOSTS = ["127.0.0.1"]
    route = respx.post("http://127.0.0.1:9999/relay/v1/videos/generations").respond(
        200, json=SUBMIT_ANSWER
    )
    key = Credentials(api_key="sk-x", base_url="http://127.0.0.1:9999/relay/")
    providers.get("apimart").submit(SCENARIOS[0][0], key)
    assert route.called


@respx.mock
def test_a_submit_answer_without_a_task_id_is_malformed():
    respx.post(f"{BASE}/v1/videos/generations").respond(200, json={"code": 200, "data": []})
    with pytest.raises(ProviderError) as caught:
        providers.get("apimart").submit(SCENARIOS[0][0], KEY)
    assert (caught.value.kind, caught.value.code) == (ErrorKind.TRANSIENT, "malformed_body")


def test_a_client_can_be_injected_for_tests():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=SUBMIT_ANSWER)

    client = httpx.Client(transport=httpx.MockTransport(handler))
    status = providers.get("apimart", client=client).submit(SCENARIOS[0][0], KEY)
    assert status.provider_task_id == TASK
