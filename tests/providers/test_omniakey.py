"""OmniaKey contract (document 000)."""

import json

import pytest
import respx

from generations import providers
from generations.providers import Credentials, ErrorKind, GenerationRequest, ProviderError, State

BASE = "https://api.omniakey.com"
KEY = Credentials(api_key="your-omniakey-api-key")
PROMPT = "A golden retriever playing in ocean waves at sunset"

SUBMITTED = {
    "id": "vtask-abc123",
    "status": "processing",
    "created": 1709251200,
    "model": "sora",
    "estimated_time": 60,
}
COMPLETED = {
    "id": "vtask-abc123",
    "status": "completed",
    "created": 1709251200,
    "model": "sora",
    "output": {
        "url": "https://api.omniakey.com/files/video-abc123.mp4",
        "duration": 5,
        "resolution": "1920x1080",
        "format": "mp4",
    },
}


@respx.mock
def test_submit_sends_the_documented_request_and_reads_the_task():
    route = respx.post(f"{BASE}/v1/videos/generations").respond(200, json=SUBMITTED)
    request = GenerationRequest("omniakey", "sora", PROMPT, duration=5, resolution="1080p")
    status = providers.get("omniakey").submit(request, KEY)
    sent = route.calls.last.request
    assert sent.headers["Authorization"] == "Bearer your-omniakey-api-key"
    assert json.loads(sent.content) == {
        "model": "sora",
        "prompt": PROMPT,
        "duration": 5,
        "resolution": "1080p",
    }
    assert status.provider_task_id == "vtask-abc123"
    assert (status.state, status.estimated_seconds) == (State.RUNNING, 60)


@respx.mock
def test_submit_with_a_webhook_and_aspect_ratio_sends_them_by_their_names():
    route = respx.post(f"{BASE}/v1/videos/generations").respond(200, json=SUBMITTED)
    request = GenerationRequest(
        "omniakey",
        "sora",
        PROMPT,
        duration=5,
        aspect_ratio="9:16",
        callback_url="https://your-server.com/webhooks/video-ready",
    )
    providers.get("omniakey").submit(request, KEY)
    assert json.loads(route.calls.last.request.content) == {
        "model": "sora",
        "prompt": PROMPT,
        "duration": 5,
        "aspect_ratio": "9:16",
        "webhook_url": "https://your-server.com/webhooks/video-ready",
    }


@respx.mock
def test_a_completed_task_gives_the_video_and_what_the_gateway_reports_of_it():
    respx.get(f"{BASE}/v1/videos/generations/vtask-abc123").respond(200, json=COMPLETED)
    status = providers.get("omniakey").status("vtask-abc123", KEY)
    assert status.state == State.SUCCEEDED
    assert status.results[0].url == "https://api.omniakey.com/files/video-abc123.mp4"
    assert (status.media_duration, status.media_resolution) == (5.0, "1920x1080")


@pytest.mark.parametrize(
    "raw, state",
    [("pending", State.QUEUED), ("processing", State.RUNNING), ("failed", State.FAILED)],
)
@respx.mock
def test_every_documented_status_maps(raw, state):
    body = {"id": "vtask-abc123", "status": raw, "created": 1709251200, "model": "sora"}
    if raw == "failed":
        body["error"] = {"message": "Content policy violation"}
    respx.get(f"{BASE}/v1/videos/generations/vtask-abc123").respond(200, json=body)
    status = providers.get("omniakey").status("vtask-abc123", KEY)
    assert status.state == state
    assert status.details == ("Content policy violation" if raw == "failed" else None)
    assert status.error == ("OmniaKey reported that the task failed." if raw == "failed" else None)


@respx.mock
def test_the_webhook_payload_parses_like_the_completion_response():
    # The document: "The webhook POST payload is the same as the task completion response".
    status = providers.get("omniakey").parse_status(COMPLETED)
    assert (status.provider_task_id, status.state) == ("vtask-abc123", State.SUCCEEDED)


@respx.mock
def test_a_failure_without_an_error_field_still_says_something():
    body = {"id": "vtask-abc123", "status": "failed"}
    respx.get(f"{BASE}/v1/videos/generations/vtask-abc123").respond(200, json=body)
    status = providers.get("omniakey").status("vtask-abc123", KEY)
    assert status.error == "OmniaKey reported that the task failed without saying why."
    assert status.details is None


@respx.mock
def test_an_unknown_status_is_retried_not_failed():
    body = {"id": "vtask-abc123", "status": "upscaling"}
    respx.get(f"{BASE}/v1/videos/generations/vtask-abc123").respond(200, json=body)
    with pytest.raises(ProviderError) as caught:
        providers.get("omniakey").status("vtask-abc123", KEY)
    assert caught.value.kind == ErrorKind.TRANSIENT and not caught.value.permanent


@respx.mock
def test_a_refused_key_is_an_authentication_error():
    respx.post(f"{BASE}/v1/videos/generations").respond(
        401, json={"error": {"message": "Invalid API key", "type": "invalid_api_key"}}
    )
    with pytest.raises(ProviderError) as caught:
        providers.get("omniakey").submit(GenerationRequest("omniakey", "sora", PROMPT), KEY)
    assert caught.value.kind == ErrorKind.AUTHENTICATION
    assert caught.value.message == (
        "OmniaKey says the key was refused; check or replace it under Keys."
    )
    assert caught.value.details == "Invalid API key"
