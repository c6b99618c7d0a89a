"""Every adapter against the simulator over real HTTP: submit, poll, result, playable media;
and the prompt words and keys that make the simulator misbehave."""

import io
import json
import subprocess
import sys
import time
from datetime import UTC, datetime

import av
import httpx
import pytest
from django.conf import settings
from PIL import Image

from accounts.models import ProviderKey
from generations import providers
from generations import views as generations_views
from generations.providers import (
    Credentials,
    ErrorKind,
    GenerationRequest,
    ProviderError,
    ProviderStatus,
    State,
)
from tests.helpers import production_environment

pytestmark = pytest.mark.django_db(transaction=True)

REQUESTS = {
    "omniakey": GenerationRequest(
        "omniakey", "pika-1.5", "a red fox in snow", duration=3, resolution="720p"
    ),
    "omnivideo": GenerationRequest(
        "omnivideo", "seedance-2", "waves on a pier", aspect_ratio="9:16"
    ),
    "apimart": GenerationRequest(
        "apimart",
        "Omni-Flash-Ext",
        "a girl is dancing happily in a sunny garden",
        duration=4,
        resolution="720p",
        aspect_ratio="16:9",
        reference_images=("https://example.com/character.jpg",),
    ),
    "omixa": GenerationRequest(
        "omixa", "sora", "a product reveal on a white desk", duration=4, resolution="1280x720"
    ),
}


@pytest.fixture(autouse=True)
def quick_simulator(settings, live_server):
    settings.SIMULATOR_SECONDS = 0.6
    # The simulator's own address (this site's), which gateway calls may reach while it is on.
    settings.PUBLIC_URL = live_server.url


def key(live_server, gateway: str, secret: str = "sk-demo-0001") -> Credentials:
    """A key stored on this site and pointed at the simulator: the only kind it lets in."""
    base_url = f"{live_server.url}/simulator/{gateway}"
    stored = ProviderKey(provider=gateway, label=f"Simulator {gateway}", base_url=base_url)
    stored.set_secret(secret)
    stored.save()
    return Credentials(api_key=secret, base_url=base_url)


def run_to_end(gateway: str, request: GenerationRequest, credentials) -> ProviderStatus:
    adapter = providers.get(gateway)
    status = adapter.submit(request, credentials)
    deadline = time.monotonic() + 20
    while not status.finished and time.monotonic() < deadline:
        time.sleep(0.2)
        status = adapter.status(status.provider_task_id, credentials)
    return status


def with_prompt(gateway: str, prompt: str) -> GenerationRequest:
    base = REQUESTS[gateway]
    return GenerationRequest(**{**base.__dict__, "prompt": prompt})


def assert_playable_video(data: bytes, seconds: float) -> None:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert abs(float(container.duration / av.time_base) - seconds) < 0.5
        assert next(container.decode(stream)) is not None


@pytest.mark.parametrize("gateway", sorted(REQUESTS))
def test_each_gateway_runs_to_a_playable_video(live_server, gateway):
    status = run_to_end(gateway, REQUESTS[gateway], key(live_server, gateway))
    assert status.state == State.SUCCEEDED, status
    response = httpx.get(status.results[0].url)
    assert response.status_code == 200 and response.headers["content-type"] == "video/mp4"
    assert_playable_video(response.content, REQUESTS[gateway].duration or 5)


def test_an_image_model_runs_to_a_png(live_server):
    request = GenerationRequest("omnivideo", "gpt-image-2", "a zen garden", aspect_ratio="1:1")
    status = run_to_end("omnivideo", request, key(live_server, "omnivideo"))
    assert status.state == State.SUCCEEDED and status.cost == 10
    response = httpx.get(status.results[0].url)
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG" and image.size[0] == image.size[1]


def test_tasks_move_through_queued_and_running_with_progress(live_server, settings):
    settings.SIMULATOR_SECONDS = 3
    adapter, credentials = providers.get("apimart"), key(live_server, "apimart")
    first = adapter.submit(REQUESTS["apimart"], credentials)
    assert first.state == State.QUEUED
    time.sleep(1.2)
    middle = adapter.status(first.provider_task_id, credentials)
    assert middle.state == State.RUNNING and 20 <= middle.progress < 100
    assert middle.estimated_seconds == 3


def test_omixa_answers_a_finished_job_when_it_fits_in_wait_seconds(live_server):
    status = providers.get("omixa").submit(REQUESTS["omixa"], key(live_server, "omixa"))
    assert status.state == State.SUCCEEDED and status.results


@pytest.mark.parametrize("gateway", sorted(REQUESTS))
def test_the_word_fail_makes_the_task_fail_with_a_reason(live_server, gateway):
    request = with_prompt(gateway, "please fail this one")
    status = run_to_end(gateway, request, key(live_server, gateway))
    assert status.state == State.FAILED and status.results == ()
    expected = "生成失败: 模拟器按要求失败" if gateway == "omnivideo" else "asked to fail"
    assert expected in status.details


def test_the_word_slow_takes_five_times_longer(live_server, settings):
    settings.SIMULATOR_SECONDS = 1
    adapter, credentials = providers.get("apimart"), key(live_server, "apimart")
    task = adapter.submit(with_prompt("apimart", "a slow sunrise"), credentials)
    time.sleep(1.5)
    assert adapter.status(task.provider_task_id, credentials).state == State.RUNNING


@pytest.mark.parametrize("gateway", sorted(REQUESTS))
def test_rate_limit_answers_429_with_retry_after_then_recovers(live_server, gateway):
    adapter, credentials = providers.get(gateway), key(live_server, gateway)
    task = adapter.submit(with_prompt(gateway, "cats rate-limit dogs"), credentials)
    if task.finished:  # Omixa may hold the submit until the job is done
        task = ProviderStatus(task.provider_task_id, State.RUNNING, "held")
    for _ in range(2):
        with pytest.raises(ProviderError) as caught:
            adapter.status(task.provider_task_id, credentials)
        assert caught.value.kind == ErrorKind.RATE_LIMIT and caught.value.retry_after == 1.0
    time.sleep(0.7)
    assert adapter.status(task.provider_task_id, credentials).state == State.SUCCEEDED


@pytest.mark.parametrize("word, code", [("server-error", None), ("malformed", "malformed_body")])
def test_server_errors_and_broken_bodies_are_transient_then_recover(live_server, word, code):
    adapter, credentials = providers.get("apimart"), key(live_server, "apimart")
    task = adapter.submit(with_prompt("apimart", f"a {word} test"), credentials)
    for _ in range(2):
        with pytest.raises(ProviderError) as caught:
            adapter.status(task.provider_task_id, credentials)
        assert caught.value.kind == ErrorKind.TRANSIENT and not caught.value.permanent
        if code:
            assert caught.value.code == code
    time.sleep(0.7)
    assert adapter.status(task.provider_task_id, credentials).state == State.SUCCEEDED


def test_expired_results_have_a_past_expiry_and_a_refusing_link(live_server):
    status = run_to_end(
        "apimart", with_prompt("apimart", "expired link"), key(live_server, "apimart")
    )
    assert status.state == State.SUCCEEDED
    assert status.results[0].expires_at < datetime.now(UTC)
    assert httpx.get(status.results[0].url).status_code == 403


@pytest.mark.parametrize("gateway", sorted(REQUESTS))
def test_a_refused_key_is_an_authentication_error(live_server, gateway):
    with pytest.raises(ProviderError) as caught:
        providers.get(gateway).submit(
            REQUESTS[gateway], key(live_server, gateway, "sk-invalid-0000")
        )
    assert caught.value.kind == ErrorKind.AUTHENTICATION and caught.value.status_code == 401


@pytest.mark.parametrize(
    "gateway, kind",
    [
        ("omniakey", ErrorKind.PAYMENT),
        ("omnivideo", ErrorKind.BUSINESS),
        ("apimart", ErrorKind.PAYMENT),
        ("omixa", ErrorKind.PAYMENT),
    ],
)
def test_an_empty_account_is_refused_in_each_dialect(live_server, gateway, kind):
    with pytest.raises(ProviderError) as caught:
        providers.get(gateway).submit(REQUESTS[gateway], key(live_server, gateway, "sk-broke-1"))
    assert caught.value.kind == kind and caught.value.permanent
    if gateway == "omnivideo":
        assert caught.value.details == "积分不足,请充值"


@pytest.mark.parametrize(
    "fields, code",
    [
        ({"duration": 7}, "invalid_duration"),
        ({"resolution": "480p"}, "invalid_resolution"),
        (
            {"reference_images": ("https://example.com/a.jpg", "https://example.com/b.jpg")},
            "unsupported_image_count",
        ),
        ({"model": "Omni-Flash-Pro"}, "invalid_request_error"),
    ],
)
def test_apimart_refuses_what_its_document_refuses(live_server, fields, code):
    request = GenerationRequest(**{**REQUESTS["apimart"].__dict__, **fields})
    with pytest.raises(ProviderError) as caught:
        providers.get("apimart").submit(request, key(live_server, "apimart"))
    assert (caught.value.kind, caught.value.code, caught.value.status_code) == (
        ErrorKind.INVALID_REQUEST,
        code,
        400,
    )


def test_omnivideo_refuses_an_unknown_model_with_code_zero(live_server):
    request = GenerationRequest("omnivideo", "sora", "x")
    with pytest.raises(ProviderError) as caught:
        providers.get("omnivideo").submit(request, key(live_server, "omnivideo"))
    assert caught.value.kind == ErrorKind.BUSINESS and "不支持的模型" in caught.value.details


def test_an_unknown_task_is_not_found(live_server):
    with pytest.raises(ProviderError) as caught:
        providers.get("apimart").status("task_missing", key(live_server, "apimart"))
    assert caught.value.kind == ErrorKind.NOT_FOUND


def test_omniakey_posts_the_completion_response_to_this_sites_webhook(
    live_server, settings, monkeypatch
):
    # The simulator calls back only this site's own webhook (RELIABILITY 34; a foreign address
    # is tests/test_simulator_guard.py's), so what reaches the webhook view is recorded there.
    settings.PUBLIC_URL = live_server.url
    received: list[tuple[str, dict]] = []

    def recording(request):
        received.append((request.path, json.loads(request.body)))
        return False

    monkeypatch.setattr(generations_views, "_rate_limited", recording)
    token = "t" * 43
    request = GenerationRequest(
        **{**REQUESTS["omniakey"].__dict__, "callback_url": f"{live_server.url}/hooks/{token}"}
    )
    task = providers.get("omniakey").submit(request, key(live_server, "omniakey"))
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline:
        time.sleep(0.1)
    assert received, "no webhook arrived"
    path, body = received[0]
    assert path == f"/hooks/{token}"
    status = providers.get("omniakey").parse_status(body)
    assert (status.provider_task_id, status.state) == (task.provider_task_id, State.SUCCEEDED)
    assert httpx.get(status.results[0].url).status_code == 200


def test_the_simulator_is_not_mounted_in_production():
    code = (
        "from django.urls import resolve, Resolver404\n"
        "try:\n resolve('/simulator/apimart/v1/tasks/x'); print('mounted')\n"
        "except Resolver404:\n print('absent')"
    )
    env = production_environment()
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "--no-imports", "-c", code],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == "absent", result.stderr
