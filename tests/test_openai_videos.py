"""The OpenAI-compatible videos facade (/v1/videos): what a script written for OpenAI's Videos API
gets from Omniweb. Errors are checked in OpenAI's exact shape; the official `openai` package is
driven against the views in this process through an httpx transport that hands each request to
Django's test client, so the bytes the SDK sends and parses are the ones tested."""

import base64
import json
from datetime import timedelta

import httpx
import openai
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from accounts import ledger
from accounts.models import ApiToken, LedgerEntry, ProviderKey, Quota
from generations.api import openai_videos
from generations.models import ReferenceImage, Result, Task
from generations.providers import GenerationRequest
from generations.services import submit_task
from generations.simulator.media import render_png
from tests.conftest import PASSWORD

pytestmark = [
    pytest.mark.django_db,
    # The SDK marks its video methods deprecated; that is OpenAI's service, not this facade.
    pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning"),
]

GATEWAYS = ("omniakey", "omnivideo", "apimart", "omixa")
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.PUBLIC_URL = ""


def add_key(owner, provider: str) -> ProviderKey:
    key = ProviderKey(
        provider=provider, label=f"{provider} key", owner=owner, base_url="https://gw.example"
    )
    key.set_secret(f"sk-{provider}-0001")
    key.save()
    return key


@pytest.fixture
def member(alice, carol):
    ledger.grant(alice, 100_000, by=carol, reason="tests")
    for gateway in GATEWAYS:
        add_key(alice, gateway)
    return alice


@pytest.fixture
def teammate(bob, carol):
    ledger.grant(bob, 100_000, by=carol, reason="tests")
    for gateway in GATEWAYS:
        add_key(bob, gateway)
    return bob


def secret_for(user, scope: str = "write") -> str:
    return ApiToken.issue(user, name=f"{scope} script", scope=scope, days=30)[1]


class Api:
    """Django's test client with a bearer token, speaking JSON."""

    def __init__(self, secret: str | None):
        self.client = Client()
        self.headers = {"Authorization": f"Bearer {secret}"} if secret else {}

    def post(self, path="/v1/videos", body=None, **headers):
        return self.client.post(
            path,
            json.dumps(body or {}),
            content_type="application/json",
            headers={**self.headers, **headers},
        )

    def form(self, path="/v1/videos", data=None, **headers):
        return self.client.post(path, data or {}, headers={**self.headers, **headers})

    def get(self, path, **query):
        return self.client.get(path, query, headers=self.headers)

    def delete(self, path):
        return self.client.delete(path, headers=self.headers)


@pytest.fixture
def api(member):
    return Api(secret_for(member))


class DjangoTransport(httpx.BaseTransport):
    """Hands each request the SDK makes to Django's test client, and its answer back."""

    def __init__(self):
        self.client = Client()
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        request.read()
        passed = {
            name: value
            for name, value in request.headers.items()
            if name.lower() not in ("content-type", "content-length", "host")
        }
        path = request.url.path
        if request.url.query:
            path += "?" + request.url.query.decode()
        response = self.client.generic(
            request.method,
            path,
            data=request.content,
            content_type=request.headers.get("content-type", ""),
            headers=passed,
        )
        content = b"".join(response.streaming_content) if response.streaming else response.content
        return httpx.Response(response.status_code, headers=dict(response.items()), content=content)


def make_sdk(secret: str, retries: int = 0) -> tuple[openai.OpenAI, DjangoTransport]:
    transport = DjangoTransport()
    client = openai.OpenAI(
        api_key=secret,
        base_url="http://testserver/v1",
        http_client=httpx.Client(transport=transport),
        max_retries=retries,
        # Every answer is validated against the SDK's types, not merely constructed from them.
        _strict_response_validation=True,
    )
    return client, transport


@pytest.fixture
def sdk(member):
    return make_sdk(secret_for(member))[0]


def error_of(response, status: int, param=None, code=None, kind="invalid_request_error") -> str:
    """The error's message, once its shape and fields are what OpenAI's clients expect."""
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == ERROR_KEYS
    assert (error["type"], error["param"], error["code"]) == (kind, param, code)
    assert error["message"]
    return error["message"]


def task_of(video: dict) -> Task:
    return Task.objects.get(code=video["id"])


def video_task(user, model="apimart/Omni-Flash-Ext", prompt="a lighthouse", **fields) -> Task:
    provider, _, name = model.partition("/")
    key = ProviderKey.objects.get(owner=user, provider=provider)
    return submit_task(user, GenerationRequest(provider, name, prompt, **fields), key=key)[0]


def store_result(task: Task, data: bytes = b"\x00\x00\x00\x18ftypmp42 video bytes") -> Result:
    name = default_storage.save("results/v.mp4", ContentFile(data))
    poster = default_storage.save("posters/v.jpg", ContentFile(b"\xff\xd8\xff\xe0poster"))
    Task.objects.filter(pk=task.pk).update(
        state=Task.State.SUCCEEDED, progress=100, finished_at=timezone.now(), next_check_at=None
    )
    return Result.objects.create(
        task=task,
        file=name,
        poster=poster,
        content_type="video/mp4",
        size=len(data),
        width=1280,
        height=720,
        duration=4.0,
    )


# --- Create ---------------------------------------------------------------------------------


def test_a_created_video_is_charged_and_answered_as_openais_video_object(api, member):
    response = api.post(
        body={
            "prompt": "a red fox in snow",
            "model": "apimart/Omni-Flash-Ext",
            "seconds": "8",
            "size": "1280x720",
        }
    )
    assert response.status_code == 200, response.content
    video = openai.types.Video.model_validate(response.json())  # strict: every field checked
    task = task_of(response.json())
    assert video.id == str(task.code)
    assert (video.object, video.status, video.progress) == ("video", "queued", 0)
    assert (video.model, video.seconds, video.size) == ("apimart/Omni-Flash-Ext", "8", "1280x720")
    assert video.completed_at is None and video.error is None and video.expires_at is None
    assert video.prompt == "a red fox in snow"
    assert abs(video.created_at - timezone.now().timestamp()) < 60
    assert task.params["duration"] == 8
    assert (task.params["resolution"], task.params["aspect_ratio"]) == ("720p", "16:9")
    debit = LedgerEntry.objects.get(task=task, kind=LedgerEntry.Kind.DEBIT)
    member.refresh_from_db()
    assert member.credit_balance == 100_000 + debit.amount  # debits are negative amounts
    assert debit.amount < 0
    assert task.visibility == Task.Visibility.TEAM


def test_the_sdk_creates_a_video_and_parses_the_answer(sdk, member):
    video = sdk.videos.create(
        prompt="waves on a pier", model="omixa/sora", seconds="12", size="1024x1792"
    )
    assert isinstance(video, openai.types.Video)
    task = Task.objects.get(code=video.id, user=member)
    assert (video.seconds, video.size, video.status) == ("12", "1024x1792", "queued")
    assert (task.params["duration"], task.params["resolution"]) == (12, "1024x1792")


def test_the_sdk_uploads_a_reference_image_as_a_file(sdk, member):
    image = render_png("a teapot", 96, 64)
    video = sdk.videos.create(
        prompt="the teapot spins",
        model="apimart/Omni-Flash-Ext",
        seconds="4",
        input_reference=("teapot.png", image, "image/png"),
    )
    task = Task.objects.get(code=video.id)
    reference = ReferenceImage.objects.get(task=task)
    assert (reference.width, reference.height, reference.content_type) == (96, 64, "image/png")


def test_the_sdk_sends_a_reference_address_as_a_form_field(sdk, member):
    address = "https://images.example.org/cat.png"
    video = sdk.videos.create(
        prompt="the cat wakes",
        model="apimart/Omni-Flash-Ext",
        # The SDK takes only files as input_reference; an address goes as an extra field.
        extra_body={"input_reference": address},
    )
    assert Task.objects.get(code=video.id).params["reference_images"] == [address]


@pytest.mark.parametrize(
    "reference",
    [
        "https://images.example.org/a.png",
        {"image_url": "https://images.example.org/a.png"},
    ],
)
def test_json_takes_a_reference_address_plain_or_as_an_object(api, reference):
    response = api.post(
        body={"prompt": "a", "model": "apimart/Omni-Flash-Ext", "input_reference": reference}
    )
    assert response.status_code == 200, response.content
    assert task_of(response.json()).params["reference_images"] == [
        "https://images.example.org/a.png"
    ]


def test_a_form_takes_a_reference_object_as_its_bracketed_field(api):
    address = "https://images.example.org/b.png"
    body = {"prompt": "a", "model": "apimart/Omni-Flash-Ext", "input_reference[image_url]": address}
    response = api.form(data=body)
    assert response.status_code == 200, response.content
    assert task_of(response.json()).params["reference_images"] == [address]
    body = {"prompt": "a", "input_reference[file_id]": "file-1"}
    error_of(api.form(data=body), 400, "input_reference", "unsupported_value")


def test_json_takes_a_reference_image_as_a_data_uri(api):
    data = base64.b64encode(render_png("x", 64, 64)).decode()
    response = api.post(
        body={
            "prompt": "a",
            "model": "apimart/Omni-Flash-Ext",
            "input_reference": f"data:image/png;base64,{data}",
        }
    )
    assert response.status_code == 200, response.content
    assert ReferenceImage.objects.filter(task=task_of(response.json())).count() == 1


# Every video model of every gateway: what an OpenAI seconds/size pair becomes, and what the
# Video object reports back.
MAPPING = [
    # model, seconds, size -> duration, resolution, aspect ratio
    ("omixa/sora", "4", "1280x720", 4, "1280x720", None),
    ("omixa/sora", "8", "720x1280", 8, "720x1280", None),
    ("omixa/sora", 12, "1792x1024", 12, "1792x1024", None),
    ("omixa/sora", "12", "1024x1792", 12, "1024x1792", None),
    ("apimart/Omni-Flash-Ext", "4", "1280x720", 4, "720p", "16:9"),
    ("apimart/Omni-Flash-Ext", "6", "720x1280", 6, "720p", "9:16"),
    ("apimart/Omni-Flash-Ext", "8", "1920x1080", 8, "1080p", "16:9"),
    ("apimart/Omni-Flash-Ext", "10", "1080x1920", 10, "1080p", "9:16"),
    ("apimart/Omni-Flash-Ext", "4", "3840x2160", 4, "4k", "16:9"),
    ("apimart/Omni-Flash-Ext", "4", "2160x3840", 4, "4k", "9:16"),
    ("omniakey/sora", "15", "1920x1080", 15, "1080p", "16:9"),
    ("omniakey/runway-gen3", "10", "1080x1920", 10, "1080p", "9:16"),
    ("omniakey/kling-1.5", "3", "720x720", 3, "720p", "1:1"),
    ("omniakey/pika-1.5", "5", "1080x1080", 5, "1080p", "1:1"),
    ("omnivideo/seedance-2", None, "1280x720", None, None, "16:9"),
    ("omnivideo/seedance-2", None, "720x1280", None, None, "9:16"),
    ("omnivideo/seedance-2", None, "720x720", None, None, "1:1"),
]


@pytest.mark.parametrize(("model", "seconds", "size", "duration", "resolution", "ratio"), MAPPING)
def test_seconds_and_size_become_the_models_own_settings(
    api, model, seconds, size, duration, resolution, ratio
):
    body = {"prompt": "a kite", "model": model, "size": size}
    if seconds is not None:
        body["seconds"] = seconds
    response = api.post(body=body)
    assert response.status_code == 200, response.content
    params = task_of(response.json()).params
    assert params.get("duration") == duration
    assert (params.get("resolution"), params.get("aspect_ratio")) == (resolution, ratio)
    video = response.json()
    assert video["size"] == size
    assert video["seconds"] == (str(seconds) if seconds is not None else "0")


@pytest.mark.parametrize(
    ("model", "seconds", "size"),
    [
        ("apimart/Omni-Flash-Ext", "6", "1280x720"),
        ("omixa/sora", "8", "1280x720"),
        ("omniakey/sora", "5", "1920x1080"),
    ],
)
def test_left_out_seconds_and_size_are_the_models_defaults(api, model, seconds, size):
    response = api.post(body={"prompt": "a kite", "model": model})
    assert response.status_code == 200, response.content
    assert (response.json()["seconds"], response.json()["size"]) == (seconds, size)


def test_a_video_a_gateway_times_reports_its_stored_length(api, member):
    task = video_task(member, "omnivideo/seedance-2")
    store_result(task)
    assert api.get(f"/v1/videos/{task.code}").json()["seconds"] == "4"


REFUSED = [
    # body changes, param, code, words in the message
    ({"model": "omixa/sora", "size": "1920x1080"}, "size", "invalid_value", "1280x720"),
    ({"model": "apimart/Omni-Flash-Ext", "size": "720x720"}, "size", "invalid_value", "1280x720"),
    (
        {"model": "apimart/Omni-Flash-Ext", "size": "1792x1024"},
        "size",
        "invalid_value",
        "3840x2160",
    ),
    ({"model": "omniakey/sora", "size": "big"}, "size", "invalid_value", "1920x1080"),
    ({"model": "omniakey/sora", "size": 1280}, "size", "invalid_value", "WIDTHxHEIGHT"),
    ({"model": "omnivideo/seedance-2", "size": "1920x1080"}, "size", "invalid_value", "720x720"),
    ({"model": "apimart/Omni-Flash-Ext", "seconds": "5"}, "seconds", "invalid_value", "4, 6"),
    ({"model": "omixa/sora", "seconds": 10}, "seconds", "invalid_value", "4, 8 or 12"),
    ({"model": "omniakey/pika-1.5", "seconds": "8"}, "seconds", "invalid_value", "3 to 5"),
    ({"model": "omnivideo/seedance-2", "seconds": "4"}, "seconds", "invalid_value", "duration"),
    ({"model": "omixa/sora", "seconds": "four"}, "seconds", "invalid_value", "whole number"),
    ({"model": "omixa/sora", "seconds": 4.5}, "seconds", "invalid_value", "whole number"),
    ({"model": "omnivideo/nano-banana-2"}, "model", "model_not_video", "/api/v1/tasks"),
    ({"model": "omnivideo/gpt-image-2"}, "model", "model_not_video", "images"),
    ({"model": "sora-2"}, "model", "model_not_found", "<gateway>/<model>"),
    ({"model": "apimart/nope"}, "model", "model_not_found", "apimart/nope"),
    ({"prompt": ""}, "prompt", "missing", "prompt"),
    ({"prompt": None}, "prompt", "missing", "prompt"),
    ({"prompt": "x" * 4001}, "prompt", "invalid_value", "4,000"),
    ({"visibility": "public"}, "visibility", "invalid_value", "team or private"),
    (
        {"model": "omixa/sora", "input_reference": "https://images.example.org/a.png"},
        "input_reference",
        "invalid_value",
        "no reference images",
    ),
    (
        {"input_reference": "http://plain.example/a.png"},
        "input_reference",
        "invalid_value",
        "https",
    ),
    ({"input_reference": {"file_id": "file-1"}}, "input_reference", "unsupported_value", "files"),
    ({"input_reference": 7}, "input_reference", "invalid_value", "https"),
]


@pytest.mark.parametrize(("changes", "param", "code", "words"), REFUSED)
def test_a_value_the_model_does_not_allow_is_refused_in_openais_shape(
    api, member, changes, param, code, words
):
    body = {"prompt": "a kite", "model": "apimart/Omni-Flash-Ext", **changes}
    message = error_of(api.post(body=body), 400, param, code)
    assert words in message
    assert not Task.objects.exists()
    member.refresh_from_db()
    assert member.credit_balance == 100_000


def test_a_body_that_is_not_json_is_refused(api):
    response = api.client.post(
        "/v1/videos", "{not json", content_type="application/json", headers=api.headers
    )
    error_of(response, 400, None, "invalid_json")
    response = api.post(body=None)
    error_of(response, 400, "prompt", "missing")


def test_an_uploaded_file_that_is_not_an_image_is_refused(api):
    upload = SimpleUploadedFile("a.png", b"not a picture", content_type="image/png")
    response = api.form(
        data={"prompt": "a", "model": "apimart/Omni-Flash-Ext", "input_reference": upload}
    )
    assert "PNG, JPEG or WebP" in error_of(response, 400, "input_reference", "invalid_value")
    assert not Task.objects.exists()


def test_an_upload_for_a_gateway_that_fetches_images_needs_the_public_address(api, settings):
    upload = SimpleUploadedFile("a.png", render_png("x", 64, 64), content_type="image/png")
    body = {"prompt": "a", "model": "omnivideo/seedance-2", "input_reference": upload}
    message = error_of(api.form(data=body), 400, "input_reference", "unsupported_value")
    assert "https address" in message
    settings.PUBLIC_URL = "https://studio.example.com"
    upload.seek(0)
    assert api.form(data=body).status_code == 200


def test_without_a_model_the_member_gets_sora_through_omixa(api):
    response = api.post(body={"prompt": "a kite"})
    assert response.status_code == 200, response.content
    assert response.json()["model"] == "omixa/sora"


def test_without_a_model_a_member_without_an_omixa_key_gets_another_video_model(alice, carol):
    ledger.grant(alice, 1_000, by=carol, reason="tests")
    add_key(alice, "apimart")
    response = Api(secret_for(alice)).post(body={"prompt": "a kite"})
    assert response.status_code == 200, response.content
    assert response.json()["model"] == "apimart/Omni-Flash-Ext"


def test_without_a_model_or_a_key_the_member_is_told_to_name_one(alice):
    message = error_of(
        Api(secret_for(alice)).post(body={"prompt": "a"}), 400, "model", "model_not_found"
    )
    assert "<gateway>/<model>" in message


def test_a_model_without_a_usable_key_is_refused(alice, carol):
    ledger.grant(alice, 1_000, by=carol, reason="tests")
    body = {"prompt": "a", "model": "omniakey/sora"}
    message = error_of(Api(secret_for(alice)).post(body=body), 400, "model", "no_usable_key")
    assert "omniakey" in message


def test_a_model_outside_the_members_quota_is_forbidden(api, member):
    Quota.objects.create(user=member, allowed_models=["omixa/*"])
    body = {"prompt": "a", "model": "apimart/Omni-Flash-Ext"}
    error_of(api.post(body=body), 403, None, "model_not_allowed", kind="permission_error")
    assert not Task.objects.exists()


def test_not_enough_credits_is_insufficient_quota_and_the_sdk_does_not_retry(alice, carol):
    ledger.grant(alice, 1, by=carol, reason="tests")
    add_key(alice, "omixa")
    secret = secret_for(alice)
    response = Api(secret).post(body={"prompt": "a", "model": "omixa/sora"})
    error_of(response, 429, None, "insufficient_quota", kind="insufficient_quota")
    assert response["x-should-retry"] == "false"
    client, transport = make_sdk(secret, retries=2)
    with pytest.raises(openai.RateLimitError) as caught:
        client.videos.create(prompt="a", model="omixa/sora")
    assert caught.value.code == "insufficient_quota"
    assert len(transport.requests) == 1
    assert not Task.objects.exists()


def test_the_submit_rate_answers_429_with_retry_after(api, settings):
    settings.SUBMIT_RATE_PER_MINUTE = 1
    assert api.post(body={"prompt": "a", "model": "omixa/sora"}).status_code == 200
    response = api.post(body={"prompt": "b", "model": "omixa/sora"})
    error_of(response, 429, None, "rate_limit_exceeded", kind="rate_limit_error")
    assert 1 <= int(response["Retry-After"]) <= 60
    assert Task.objects.count() == 1


def test_the_active_task_limit_answers_429_with_retry_after(api, member):
    Quota.objects.create(user=member, max_active_tasks=1)
    assert api.post(body={"prompt": "a", "model": "omixa/sora"}).status_code == 200
    response = api.post(body={"prompt": "b", "model": "omixa/sora"})
    assert "active tasks" in error_of(
        response, 429, None, "quota_exceeded", kind="rate_limit_error"
    )
    assert int(response["Retry-After"]) > 0


def test_a_days_spending_limit_is_not_worth_retrying(api, member):
    Quota.objects.create(user=member, max_credits_per_day=1)
    response = api.post(body={"prompt": "a", "model": "omixa/sora"})
    error_of(response, 429, None, "quota_exceeded", kind="rate_limit_error")
    assert int(response["Retry-After"]) > 60
    assert response["x-should-retry"] == "false"


def test_the_tokens_own_rate_answers_429_on_every_route(api, settings):
    settings.API_RATE_PER_MINUTE = 2
    assert api.get("/v1/videos").status_code == 200
    assert api.get("/v1/videos").status_code == 200
    response = api.get("/v1/videos")
    error_of(response, 429, None, "rate_limit_exceeded", kind="rate_limit_error")
    assert int(response["Retry-After"]) >= 1
    error_of(
        api.post(body={"prompt": "a"}), 429, None, "rate_limit_exceeded", kind="rate_limit_error"
    )


# --- Idempotency ----------------------------------------------------------------------------


def test_the_same_idempotency_key_returns_the_first_video_and_charges_once(api, member):
    body = {"prompt": "a", "model": "omixa/sora"}
    first = api.post(body=body, **{"Idempotency-Key": "nightly-42"})
    again = api.post(body=body, **{"Idempotency-Key": "nightly-42"})
    other = api.post(body=body, **{"Idempotency-Key": "nightly-43"})
    assert first.status_code == again.status_code == other.status_code == 200
    assert first.json()["id"] == again.json()["id"] != other.json()["id"]
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.DEBIT).count() == 2


def test_the_sdk_passes_an_idempotency_key_through(member):
    client, _transport = make_sdk(secret_for(member))
    first = client.videos.create(
        prompt="a", model="omixa/sora", extra_headers={"Idempotency-Key": "k1"}
    )
    again = client.videos.create(
        prompt="a", model="omixa/sora", extra_headers={"Idempotency-Key": "k1"}
    )
    assert first.id == again.id
    assert Task.objects.count() == 1


def test_two_members_idempotency_keys_never_meet(api, teammate):
    body = {"prompt": "a", "model": "omixa/sora"}
    mine = api.post(body=body, **{"Idempotency-Key": "same"})
    theirs = Api(secret_for(teammate)).post(body=body, **{"Idempotency-Key": "same"})
    assert mine.json()["id"] != theirs.json()["id"]
    assert task_of(theirs.json()).user == teammate


def test_one_idempotency_key_on_both_apis_makes_two_tasks(api, member):
    """A key first used on /api/v1 (for an image, say) is not the same request on /v1/videos."""
    headers = {"HTTP_AUTHORIZATION": f"Bearer {secret_for(member)}", "HTTP_IDEMPOTENCY_KEY": "k7"}
    body = {"model": "omnivideo/nano-banana-2", "prompt": "a"}
    image = Client().post(
        "/api/v1/tasks", json.dumps(body), content_type="application/json", **headers
    )
    video = api.post(body={"prompt": "a", "model": "omixa/sora"}, **{"Idempotency-Key": "k7"})
    assert image.status_code == 201 and video.status_code == 200
    assert video.json()["id"] != image.json()["id"] and task_of(video.json()).kind == "video"
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.DEBIT).count() == 2


def test_an_overlong_idempotency_key_is_refused(api):
    response = api.post(body={"prompt": "a"}, **{"Idempotency-Key": "k" * 256})
    error_of(response, 400, "Idempotency-Key", "invalid_value")


# --- Retrieve and status --------------------------------------------------------------------


EXPECTED_STATUS = {
    Task.State.QUEUED: ("queued", 0),
    Task.State.SUBMITTED: ("in_progress", 0),
    Task.State.RUNNING: ("in_progress", 40),
    Task.State.FETCHING: ("in_progress", 95),
    Task.State.NEEDS_REVIEW: ("in_progress", 40),
    Task.State.SUCCEEDED: ("completed", 100),
    Task.State.FAILED: ("failed", 40),
    Task.State.CANCELED: ("failed", 40),
}


def test_every_omniweb_state_has_an_openai_status():
    assert set(openai_videos.STATUS) == set(Task.State.values)


@pytest.mark.parametrize(("state", "expected"), EXPECTED_STATUS.items())
def test_a_tasks_state_is_shown_as_openais_status(sdk, member, state, expected):
    task = video_task(member, "omixa/sora", duration=4)
    progress = {Task.State.QUEUED: None, Task.State.SUBMITTED: None, Task.State.FETCHING: 95}
    finished = timezone.now() if state in Task.TERMINAL_STATES else None
    Task.objects.filter(pk=task.pk).update(
        state=state,
        progress=progress.get(state, 40),
        finished_at=finished,
        message="The gateway refused the prompt." if state == Task.State.FAILED else "",
    )
    video = sdk.videos.retrieve(str(task.code))
    assert (video.status, video.progress) == expected
    assert (video.seconds, video.size, video.model) == ("4", "1280x720", "omixa/sora")
    if expected[0] in ("completed", "failed"):
        assert video.completed_at == int(finished.timestamp())
    else:
        assert video.completed_at is None
    if state == Task.State.FAILED:
        assert (video.error.code, video.error.message) == (
            "generation_failed",
            "The gateway refused the prompt.",
        )
    elif state == Task.State.CANCELED:
        assert video.error.code == "canceled"
    else:
        assert video.error is None


# --- Content --------------------------------------------------------------------------------


def test_the_content_is_the_stored_video_and_the_thumbnail_its_poster(sdk, member):
    task = video_task(member, "omixa/sora")
    store_result(task, b"the video's own bytes")
    assert sdk.videos.download_content(str(task.code)).content == b"the video's own bytes"
    poster = sdk.videos.download_content(str(task.code), variant="thumbnail")
    assert poster.content == b"\xff\xd8\xff\xe0poster"


def test_the_content_of_an_unfinished_video_is_not_found(api, member):
    task = video_task(member, "omixa/sora")
    message = error_of(api.get(f"/v1/videos/{task.code}/content"), 404, None, "not_found")
    assert "queued" in message


def test_there_is_no_spritesheet_and_no_other_variant(api, member):
    task = video_task(member, "omixa/sora")
    store_result(task)
    path = f"/v1/videos/{task.code}/content"
    error_of(api.get(path, variant="spritesheet"), 404, None, "not_found")
    error_of(api.get(path, variant="gif"), 400, "variant", "invalid_value")


def test_the_content_is_never_sent_as_an_attachment(api, member):
    task = video_task(member, "omixa/sora")
    store_result(task)
    response = api.get(f"/v1/videos/{task.code}/content", download="1")
    assert response.status_code == 200
    assert "attachment" not in response.get("Content-Disposition", "")
    assert response["Content-Type"] == "video/mp4"


# --- List -----------------------------------------------------------------------------------


def test_the_list_pages_through_the_members_videos_only(sdk, api, member, teammate):
    made = [video_task(member, "omixa/sora", prompt=f"video {n}") for n in range(3)]
    video_task(member, "omnivideo/nano-banana-2", prompt="an image")  # not a video
    video_task(teammate, "omixa/sora", prompt="bob's team video")
    newest_first = [str(t.code) for t in reversed(made)]

    page = api.get("/v1/videos", limit=2).json()
    assert [v["id"] for v in page["data"]] == newest_first[:2]
    assert (page["object"], page["has_more"]) == ("list", True)
    assert (page["first_id"], page["last_id"]) == (newest_first[0], newest_first[1])
    rest = api.get("/v1/videos", limit=2, after=page["last_id"]).json()
    assert [v["id"] for v in rest["data"]] == newest_first[2:]
    assert rest["has_more"] is False

    assert [v.id for v in sdk.videos.list(limit=1)] == newest_first  # the SDK's auto-paging
    assert [v.id for v in sdk.videos.list(order="asc")] == newest_first[::-1]


def test_an_empty_list_has_no_first_or_last_id(api):
    page = api.get("/v1/videos").json()
    assert page == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"order": "up"}, "order"),
    ],
)
def test_a_bad_list_parameter_is_refused(api, query, param):
    error_of(api.get("/v1/videos", **query), 400, param, "invalid_value")


def test_after_must_name_one_of_the_members_videos(api, teammate):
    theirs = video_task(teammate, "omixa/sora")
    error_of(api.get("/v1/videos", after=str(theirs.code)), 400, "after", "invalid_value")


# --- Delete ---------------------------------------------------------------------------------


def test_a_finished_video_can_be_deleted_and_is_then_gone(sdk, api, member):
    task = video_task(member, "omixa/sora")
    store_result(task)
    deleted = sdk.videos.delete(str(task.code))
    assert (deleted.id, deleted.deleted, deleted.object) == (str(task.code), True, "video.deleted")
    error_of(api.get(f"/v1/videos/{task.code}"), 404, None, "not_found")
    assert not Result.objects.filter(task=task).exists()


def test_a_video_being_made_cannot_be_deleted(api, member):
    task = video_task(member, "omixa/sora")
    message = error_of(api.delete(f"/v1/videos/{task.code}"), 400, "video_id", "video_not_finished")
    assert "cancel" in message
    task.refresh_from_db()
    assert task.deleted_at is None


# --- Who may do what ------------------------------------------------------------------------


def routes(code) -> list[tuple[str, str]]:
    return [
        ("get", "/v1/videos"),
        ("post", "/v1/videos"),
        ("get", f"/v1/videos/{code}"),
        ("delete", f"/v1/videos/{code}"),
        ("get", f"/v1/videos/{code}/content"),
    ]


def call(api: Api, method: str, path: str):
    if method == "post":
        return api.post(path, {"prompt": "a", "model": "omixa/sora"})
    return getattr(api, method)(path)


@pytest.mark.parametrize("secret", [None, "omw_not-a-real-token", "x" * 200])
def test_every_route_needs_a_valid_token(member, secret):
    task = video_task(member, "omixa/sora")
    for method, path in routes(task.code):
        response = call(Api(secret), method, path)
        error_of(response, 401, None, "invalid_api_key")
        assert response["WWW-Authenticate"].startswith("Bearer")
    assert Task.objects.count() == 1


def test_a_signed_in_browser_without_a_token_is_not_let_in(client, member):
    client.login(username="alice", password=PASSWORD)
    error_of(client.get("/v1/videos"), 401, None, "invalid_api_key")
    response = client.post("/v1/videos", {"prompt": "a"})
    error_of(response, 401, None, "invalid_api_key")


def test_a_revoked_or_expired_token_is_refused(member):
    revoked, secret = ApiToken.issue(member, name="old", scope="write", days=30)
    revoked.revoke()
    error_of(Api(secret).get("/v1/videos"), 401, None, "invalid_api_key")
    expired, secret = ApiToken.issue(member, name="older", scope="write", days=30)
    ApiToken.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    error_of(Api(secret).get("/v1/videos"), 401, None, "invalid_api_key")


def test_the_sdk_raises_its_authentication_error(member):
    client, _ = make_sdk("omw_wrong")
    with pytest.raises(openai.AuthenticationError) as caught:
        client.videos.list()
    assert caught.value.code == "invalid_api_key"


def test_a_read_only_token_reads_but_cannot_create_or_delete(member):
    task = video_task(member, "omixa/sora")
    store_result(task)
    reader = Api(secret_for(member, "read"))
    assert reader.get("/v1/videos").status_code == 200
    assert reader.get(f"/v1/videos/{task.code}").status_code == 200
    assert reader.get(f"/v1/videos/{task.code}/content").status_code == 200
    response = reader.post(body={"prompt": "a", "model": "omixa/sora"})
    error_of(response, 403, None, "read_only_token", kind="permission_error")
    error_of(
        reader.delete(f"/v1/videos/{task.code}"),
        403,
        None,
        "read_only_token",
        kind="permission_error",
    )
    assert Task.objects.count() == 1
    client, _ = make_sdk(secret_for(member, "read"))
    with pytest.raises(openai.PermissionDeniedError):
        client.videos.create(prompt="a", model="omixa/sora")


@pytest.mark.parametrize("visibility", [Task.Visibility.TEAM, Task.Visibility.PRIVATE])
def test_another_members_video_is_not_found_on_every_route(api, teammate, visibility):
    theirs = video_task(teammate, "omixa/sora")
    store_result(theirs)
    Task.objects.filter(pk=theirs.pk).update(visibility=visibility)
    for method, path in routes(theirs.code)[2:]:
        error_of(call(api, method, path), 404, None, "not_found")
    theirs.refresh_from_db()
    assert theirs.deleted_at is None
    assert api.get("/v1/videos").json()["data"] == []


@pytest.mark.parametrize("code", ["00000000-0000-0000-0000-000000000000", "not-a-uuid", "1"])
def test_a_missing_video_is_not_found_on_every_route(api, code):
    for method, path in routes(code)[2:]:
        error_of(call(api, method, path), 404, None, "not_found")


def test_an_image_task_is_not_a_video(api, member):
    image = video_task(member, "omnivideo/nano-banana-2", prompt="an image")
    error_of(api.get(f"/v1/videos/{image.code}"), 404, None, "not_found")


def test_a_deleted_video_is_not_found(api, member):
    task = video_task(member, "omixa/sora")
    Task.objects.filter(pk=task.pk).update(state=Task.State.FAILED, deleted_at=timezone.now())
    error_of(api.get(f"/v1/videos/{task.code}"), 404, None, "not_found")


def test_an_unsupported_method_is_refused_in_openais_shape(api):
    response = api.client.put("/v1/videos", headers=api.headers)
    assert "GET, POST" in error_of(response, 405, None, "method_not_allowed")


def test_each_call_is_logged_by_token_name_without_its_secret(member, caplog):
    secret = secret_for(member)
    with caplog.at_level("INFO", logger="omniweb.api"):
        Api(secret).get("/v1/videos")
    lines = [r.getMessage() for r in caplog.records if "event=api_call" in r.getMessage()]
    assert len(lines) == 1
    assert "path=/v1/videos status=200 token='write script'" in lines[0]
    assert secret not in caplog.text


def test_a_token_needs_no_csrf_token_to_create_or_delete(member):
    secret = secret_for(member)
    strict = Client(enforce_csrf_checks=True)
    headers = {"Authorization": f"Bearer {secret}"}
    body = json.dumps({"prompt": "a", "model": "omixa/sora"})
    response = strict.post("/v1/videos", body, content_type="application/json", headers=headers)
    assert response.status_code == 200, response.content
    task = task_of(response.json())
    store_result(task)
    assert strict.delete(f"/v1/videos/{task.code}", headers=headers).status_code == 200


def test_a_body_over_the_upload_limit_is_refused_as_too_large(api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    response = api.post(body={"prompt": "a" * 2000, "model": "omixa/sora"})
    assert "upload a large image as a file" in error_of(response, 413, None, "request_too_large")
    assert not Task.objects.exists()
