"""Omni Video open API contract (document 001): the {code, msg, data} envelope."""

import json
from decimal import Decimal

import pytest
import respx

from generations import providers
from generations.providers import Credentials, ErrorKind, GenerationRequest, ProviderError, State

SITE = "https://your-site.com"
KEY = Credentials(api_key="sk-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", base_url=SITE)

CREATED = {
    "code": 200,
    "msg": "提交成功,等待生成",
    "data": {"task_id": "abcdef123456", "request_id": "kie_xxxxxxxxxxxx", "credits": 15},
}
DONE = {
    "code": 200,
    "msg": "ok",
    "data": {
        "task_id": "abcdef123456",
        "task_status": 3,
        "task_type": "image",
        "model_id": "gpt-image-2",
        "image_url": "https://your-cdn.com/result.png",
        "video_url": None,
        "audio_url": None,
        "credits": 15,
        "created_at": 1730000000,
    },
}


@respx.mock
def test_submit_sends_the_documented_body_and_reads_the_envelope():
    route = respx.post(f"{SITE}/api/v1/tasks/create").respond(200, json=CREATED)
    request = GenerationRequest(
        "omnivideo",
        "gpt-image-2",
        "a serene zen garden at sunrise, ultra detailed",
        aspect_ratio="16:9",
    )
    status = providers.get("omnivideo").submit(request, KEY)
    sent = route.calls.last.request
    assert sent.headers["Authorization"] == "Bearer sk-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
    assert json.loads(sent.content) == {
        "model_id": "gpt-image-2",
        "prompt": "a serene zen garden at sunrise, ultra detailed",
        "image_urls": [],
        "aspect_ratio": "16:9",
    }
    assert (status.provider_task_id, status.state, status.cost) == (
        "abcdef123456",
        State.QUEUED,
        Decimal("15"),
    )


@respx.mock
def test_no_duration_or_resolution_is_ever_sent():
    route = respx.post(f"{SITE}/api/v1/tasks/create").respond(200, json=CREATED)
    request = GenerationRequest(
        "omnivideo",
        "seedance-2",
        "waves",
        duration=5,
        resolution="1080p",
        reference_images=("https://example.com/a.jpg",),
    )
    providers.get("omnivideo").submit(request, KEY)
    body = json.loads(route.calls.last.request.content)
    assert set(body) == {"model_id", "prompt", "image_urls"}
    assert body["image_urls"] == ["https://example.com/a.jpg"]


@respx.mock
def test_a_finished_image_task_gives_its_url_and_credits():
    respx.get(f"{SITE}/api/v1/tasks/abcdef123456").respond(200, json=DONE)
    status = providers.get("omnivideo").status("abcdef123456", KEY)
    assert status.state == State.SUCCEEDED
    assert status.results[0].url == "https://your-cdn.com/result.png"
    assert status.cost == Decimal("15")


@respx.mock
def test_a_finished_video_task_gives_its_video_url():
    body = {
        "code": 200,
        "msg": "ok",
        "data": {
            **DONE["data"],
            "task_type": "video",
            "model_id": "seedance-2",
            "image_url": None,
            "video_url": "https://your-cdn.com/v.mp4",
        },
    }
    respx.get(f"{SITE}/api/v1/tasks/abcdef123456").respond(200, json=body)
    assert providers.get("omnivideo").status("abcdef123456", KEY).results[0].url.endswith("v.mp4")


@pytest.mark.parametrize(
    "task_status, state",
    [(1, State.QUEUED), (2, State.RUNNING), (3, State.SUCCEEDED), (4, State.FAILED)],
)
@respx.mock
def test_every_documented_task_status_maps(task_status, state):
    body = {"code": 200, "msg": "ok", "data": {**DONE["data"], "task_status": task_status}}
    respx.get(f"{SITE}/api/v1/tasks/abcdef123456").respond(200, json=body)
    assert providers.get("omnivideo").status("abcdef123456", KEY).state == state


@respx.mock
def test_an_unknown_task_status_is_retried_not_failed():
    body = {"code": 200, "msg": "ok", "data": {**DONE["data"], "task_status": 9}}
    respx.get(f"{SITE}/api/v1/tasks/abcdef123456").respond(200, json=body)
    with pytest.raises(ProviderError) as caught:
        providers.get("omnivideo").status("abcdef123456", KEY)
    assert caught.value.kind == ErrorKind.TRANSIENT


@respx.mock
def test_code_zero_is_a_business_failure_with_the_message_kept_as_written():
    respx.post(f"{SITE}/api/v1/tasks/create").respond(
        200, json={"code": 0, "msg": "积分不足,请充值", "data": None}
    )
    with pytest.raises(ProviderError) as caught:
        providers.get("omnivideo").submit(GenerationRequest("omnivideo", "gpt-image-2", "x"), KEY)
    error = caught.value
    assert (error.kind, error.code, error.status_code) == (ErrorKind.BUSINESS, "0", 200)
    assert error.message == "Omni Video reported a business failure." and error.permanent
    assert error.details == "积分不足,请充值"


@respx.mock
def test_an_invalid_key_is_an_authentication_error():
    respx.post(f"{SITE}/api/v1/tasks/create").respond(401, json={"code": 401, "msg": "无效的key"})
    with pytest.raises(ProviderError) as caught:
        providers.get("omnivideo").submit(GenerationRequest("omnivideo", "gpt-image-2", "x"), KEY)
    assert caught.value.kind == ErrorKind.AUTHENTICATION
    assert caught.value.message == (
        "Omni Video says the key was refused; check or replace it under Keys."
    )
    assert caught.value.details == "无效的key"


def test_a_key_without_its_sites_address_is_refused_before_sending():
    with pytest.raises(ProviderError) as caught:
        providers.get("omnivideo").submit(
            GenerationRequest("omnivideo", "gpt-image-2", "x"), Credentials(api_key="sk-1")
        )
    assert caught.value.code == "missing_base_url" and caught.value.request_sent is False


@respx.mock
def test_unknown_fields_are_ignored():
    body = {"code": 200, "msg": "ok", "extra": 1, "data": {**DONE["data"], "new_field": [1]}}
    respx.get(f"{SITE}/api/v1/tasks/abcdef123456").respond(200, json=body)
    assert providers.get("omnivideo").status("abcdef123456", KEY).state == State.SUCCEEDED
