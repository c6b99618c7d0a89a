"""Omixa contract (document 003, request only; the answer's shape is assumed and read
tolerantly, as the adapter's docstring says)."""

import json

import pytest
import respx

from generations import providers
from generations.providers import Credentials, ErrorKind, GenerationRequest, ProviderError, State

BASE = "http://omixa.cloud"
KEY = Credentials(api_key="omx_live_xxx")
PROMPT = "A cinematic product reveal of an AI API gateway on a clean white desk."
REQUEST = GenerationRequest("omixa", "sora", PROMPT, duration=8, resolution="1280x720")


@respx.mock
def test_submit_sends_the_documented_request():
    route = respx.post(f"{BASE}/api/v1/videos/jobs").respond(
        200, json={"id": "job_1", "status": "queued"}
    )
    status = providers.get("omixa").submit(REQUEST, KEY)
    sent = route.calls.last.request
    assert sent.headers["Authorization"] == "Bearer omx_live_xxx"
    assert json.loads(sent.content) == {
        "model": "sora",
        "prompt": PROMPT,
        "video_operation": "text_to_video",
        "seconds": 8,
        "size": "1280x720",
        "wait_seconds": 3,
        "poll_interval_seconds": 2,
    }
    assert (status.provider_task_id, status.state) == ("job_1", State.QUEUED)


@respx.mock
def test_a_submit_held_by_wait_seconds_may_come_back_finished():
    respx.post(f"{BASE}/api/v1/videos/jobs").respond(
        200,
        json={"job_id": "job_2", "status": "completed", "video_url": "https://cdn.omixa/v.mp4"},
    )
    status = providers.get("omixa").submit(REQUEST, KEY)
    assert status.state == State.SUCCEEDED
    assert status.results[0].url == "https://cdn.omixa/v.mp4"


@pytest.mark.parametrize(
    "job",
    [
        {"id": "j", "status": "succeeded", "url": "https://x/v.mp4"},
        {"id": "j", "status": "completed", "output": {"url": "https://x/v.mp4"}},
        {"id": "j", "status": "COMPLETED", "result": {"url": "https://x/v.mp4"}},
        {"data": {"job_id": "j", "status": "completed", "video_url": "https://x/v.mp4"}},
        {"job": {"id": "j", "status": "completed", "video_url": "https://x/v.mp4"}},
    ],
)
@respx.mock
def test_the_result_url_is_found_wherever_the_job_keeps_it(job):
    respx.get(f"{BASE}/api/v1/videos/jobs/j").respond(200, json=job)
    status = providers.get("omixa").status("j", KEY)
    assert (status.state, status.results[0].url) == (State.SUCCEEDED, "https://x/v.mp4")


@pytest.mark.parametrize(
    "raw, state",
    [
        ("queued", State.QUEUED),
        ("in_progress", State.RUNNING),
        ("processing", State.RUNNING),
        ("failed", State.FAILED),
    ],
)
@respx.mock
def test_in_flight_and_failed_statuses_map(raw, state):
    body = {"id": "j", "status": raw, "progress": 40, "error": {"message": "moderation"}}
    respx.get(f"{BASE}/api/v1/videos/jobs/j").respond(200, json=body)
    status = providers.get("omixa").status("j", KEY)
    assert status.state == state
    if state == State.FAILED:
        assert (status.error, status.details) == (
            "Omixa reported that the task failed.",
            "moderation",
        )
    else:
        assert status.progress == 40


@respx.mock
def test_an_unknown_status_is_retried_not_failed():
    respx.get(f"{BASE}/api/v1/videos/jobs/j").respond(200, json={"id": "j", "status": "weird"})
    with pytest.raises(ProviderError) as caught:
        providers.get("omixa").status("j", KEY)
    assert caught.value.kind == ErrorKind.TRANSIENT


@respx.mock
def test_the_read_timeout_leaves_room_for_wait_seconds():
    route = respx.post(f"{BASE}/api/v1/videos/jobs").respond(
        200, json={"id": "j", "status": "queued"}
    )
    providers.get("omixa").submit(REQUEST, KEY)
    timeout = route.calls.last.request.extensions["timeout"]
    assert timeout["read"] >= 30 + 3
