"""The team API under /api/v1/: what a script holding a personal token may do, every refusal
it can meet (as an RFC 9457 problem), and that another member's objects answer 404 on every
route that names one. Gateways are not called: tasks are made through the one submit path and
moved by the services, as the engine would move them."""

import base64
import json
import logging
import uuid
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone

from accounts import ledger
from accounts.models import ApiToken, LedgerEntry, ProviderKey, Quota
from generations.models import ReferenceImage, Result, Run, Task
from generations.services import fail_task
from generations.simulator.media import render_png

FOX = {"model": "apimart/Omni-Flash-Ext", "prompt": "a fox in the snow", "duration": 6}
BANANA = {"model": "omnivideo/nano-banana-2", "prompt": "a banana"}
PROBLEM = "application/problem+json"

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path


def make_key(user, provider="apimart", label=None):
    key = ProviderKey(provider=provider, label=label or f"Mine {provider}", owner=user)
    key.set_secret(f"sk-{provider}-{user.username}-0001")
    key.save()
    return key


@pytest.fixture
def keys(alice, bob, carol):
    ledger.grant(alice, 5000, by=carol, reason="welcome")
    ledger.grant(bob, 5000, by=carol, reason="welcome")
    return {
        "apimart": make_key(alice),
        "omnivideo": make_key(alice, "omnivideo"),
        "bob": make_key(bob),
    }


def bearer(secret):
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


@pytest.fixture
def write(alice, keys):
    return bearer(ApiToken.issue(alice, name="storyboard", scope="write", days=90)[1])


@pytest.fixture
def read(alice, keys):
    return bearer(ApiToken.issue(alice, name="reader", scope="read", days=90)[1])


@pytest.fixture
def bob_token(bob, keys):
    return bearer(ApiToken.issue(bob, name="bob's", scope="write", days=90)[1])


def post(client, url, body=None, **extra):
    return client.post(url, json.dumps(body or {}), content_type="application/json", **extra)


def problem(response, status, code):
    assert response.status_code == status, response.content
    assert response["Content-Type"] == PROBLEM
    body = response.json()
    assert body["status"] == status and body["code"] == code
    assert body["type"] == f"urn:omniweb:problem:{code}" and body["title"] and body["detail"]
    return body


def debits(user):
    return LedgerEntry.objects.filter(user=user, kind=LedgerEntry.Kind.DEBIT).count()


def balance(user):
    return type(user).objects.get(pk=user.pk).credit_balance


def png_uri(width=64, height=64):
    data = base64.b64encode(render_png("ref", width, height)).decode()
    return f"data:image/png;base64,{data}"


def create(client, headers, body=FOX, **extra):
    response = post(client, "/api/v1/tasks", body, **headers, **extra)
    assert response.status_code == 201, response.content
    return response.json()


def succeed(task):
    name = default_storage.save(f"results/{task.code}.mp4", ContentFile(b"mp4 " * 10))
    poster = default_storage.save(f"posters/{task.code}.jpg", ContentFile(b"\xff\xd8\xff"))
    Result.objects.create(
        task=task, file=name, poster=poster, size=40, content_type="video/mp4", width=1280
    )
    Task.objects.filter(pk=task.pk).update(
        state=Task.State.SUCCEEDED, finished_at=timezone.now(), progress=100, next_check_at=None
    )


# --- Tokens -----------------------------------------------------------------------------------


def test_no_token_or_a_bad_one_is_401_with_a_problem(client, alice, keys):
    for headers in (
        {},
        bearer("omw_nothing"),
        {"HTTP_AUTHORIZATION": "Basic abc"},
        bearer("x" * 500),
    ):
        response = client.get("/api/v1/me", **headers)
        problem(response, 401, "not_authenticated")
        assert response["WWW-Authenticate"].startswith("Bearer")


def api_routes():
    from tests.test_accounts import concrete_urls

    return sorted({path for _name, path in concrete_urls() if path.startswith(("/api/", "/v1/"))})


OPEN_API_ROUTES = {"/api/v1/docs", "/api/v1/openapi.json", "/api/v1/"}


@pytest.mark.parametrize("path", api_routes())
def test_every_api_route_but_the_docs_needs_a_token(client, path):
    """Every route, read from the URL configuration itself, so a new one cannot forget."""
    answers = {client.get(path).status_code, client.post(path).status_code} - {405}
    if path in OPEN_API_ROUTES:
        assert answers <= {200, 404}
    else:
        assert answers == {401}, path


def test_a_browser_session_does_not_open_the_api(client, alice, keys):
    client.force_login(alice)
    problem(client.get("/api/v1/me"), 401, "not_authenticated")
    problem(post(client, "/api/v1/tasks", FOX), 401, "not_authenticated")
    assert debits(alice) == 0


def test_a_token_does_not_open_the_pages(client, write):
    response = client.get("/tasks/", **write)
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_revoked_expired_and_inactive_members_tokens_are_refused(client, alice, keys):
    token, secret = ApiToken.issue(alice, name="old", scope="write", days=1)
    assert client.get("/api/v1/me", **bearer(secret)).status_code == 200
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    problem(client.get("/api/v1/me", **bearer(secret)), 401, "not_authenticated")
    token, secret = ApiToken.issue(alice, name="new", scope="write", days=1)
    assert token.revoke() and not token.revoke()
    problem(client.get("/api/v1/me", **bearer(secret)), 401, "not_authenticated")
    token, secret = ApiToken.issue(alice, name="third", scope="write", days=1)
    type(alice).objects.filter(pk=alice.pk).update(is_active=False)
    problem(client.get("/api/v1/me", **bearer(secret)), 401, "not_authenticated")


def test_only_the_hash_is_stored_and_last_use_is_recorded(client, alice, keys):
    token, secret = ApiToken.issue(alice, name="cli", scope="read", days=90)
    assert secret.startswith("omw_") and len(secret) > 40
    assert secret not in token.token_hash and token.hint == secret[:10]
    assert token.last_used_at is None
    client.get("/api/v1/me", **bearer(secret))
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_read_only_token_reads_but_never_writes(client, alice, read, write):
    task = create(client, write)
    before = balance(alice)
    assert client.get("/api/v1/tasks", **read).status_code == 200
    assert client.get(f"/api/v1/tasks/{task['id']}", **read).status_code == 200
    problem(post(client, "/api/v1/tasks", FOX, **read), 403, "read_only_token")
    problem(post(client, "/api/v1/runs", {"items": [FOX]}, **read), 403, "read_only_token")
    problem(post(client, f"/api/v1/tasks/{task['id']}/cancel", **read), 403, "read_only_token")
    problem(post(client, f"/api/v1/tasks/{task['id']}/retry", **read), 403, "read_only_token")
    assert balance(alice) == before and Task.objects.get(code=task["id"]).state == "queued"


def test_each_token_has_its_own_rate_on_top_of_the_members(
    client, alice, keys, settings, monkeypatch
):
    settings.API_RATE_PER_MINUTE = 3
    # Pinned to the middle of a clock minute, so the calls never straddle two windows.
    now = 1_800_000_030.0
    monkeypatch.setattr("omniweb.ratelimit.time.time", lambda: now)
    monkeypatch.setattr("generations.api.auth.time.time", lambda: now)
    cache.clear()  # a shared cache (Redis) may hold this window's count from another test
    first = bearer(ApiToken.issue(alice, name="a", scope="read", days=1)[1])
    second = bearer(ApiToken.issue(alice, name="b", scope="read", days=1)[1])
    for _ in range(3):
        assert client.get("/api/v1/me", **first).status_code == 200
    response = client.get("/api/v1/me", **first)
    problem(response, 429, "token_rate_limited")
    assert response["Retry-After"] == "30"
    assert client.get("/api/v1/me", **second).status_code == 200


def test_every_call_is_logged_by_token_name_never_its_secret(client, alice, keys, caplog):
    token, secret = ApiToken.issue(alice, name="nightly job", scope="read", days=1)
    with caplog.at_level(logging.INFO, logger="omniweb.api"):
        client.get("/api/v1/me", **bearer(secret))
        client.get("/api/v1/me", **bearer(secret + "x"))
    lines = [r.getMessage() for r in caplog.records if r.name == "omniweb.api"]
    assert any("token='nightly job'" in line and "status=200" in line for line in lines)
    assert any("status=401" in line for line in lines)
    assert all(secret not in line and secret[4:20] not in line for line in lines)


# --- Catalog, quote and the member ------------------------------------------------------------


def test_models_lists_the_catalog_with_prices_and_what_the_quota_allows(client, alice, read):
    Quota.objects.create(user=alice, allowed_models=["apimart/*"])
    models = {m["id"]: m for m in client.get("/api/v1/models", **read).json()}
    fox = models["apimart/Omni-Flash-Ext"]
    assert fox["durations"] == [4, 6, 8, 10] and fox["reference_image_counts"] == [0, 1, 3]
    assert fox["price"]["unit"] == "second" and fox["price"]["credits_per_unit"] > 0
    assert fox["allowed"] and not models["omniakey/sora"]["allowed"]
    assert models["omixa/sora"]["resolutions"][0] == "1280x720"


def test_quote_prices_a_request_and_a_run_and_charges_nothing(client, alice, read, write):
    one = post(client, "/api/v1/quote", {"items": [FOX]}, **write).json()
    assert one["items"][0]["units"] == 6 and one["total"] == one["items"][0]["credits"]
    assert one["balance_after"] == 5000 - one["total"]
    run = post(client, "/api/v1/quote", {"items": [FOX, BANANA, FOX]}, **read).json()
    assert [line["model"] for line in run["items"]] == [
        "apimart/Omni-Flash-Ext",
        "omnivideo/nano-banana-2",
        "apimart/Omni-Flash-Ext",
    ]
    assert run["total"] == sum(line["credits"] for line in run["items"])
    assert debits(alice) == 0 and Task.objects.count() == 0


def test_quote_names_each_items_problems(client, read):
    body = {"items": [FOX, {**FOX, "duration": 5}, {**BANANA, "aspect_ratio": "4:3"}]}
    errors = problem(post(client, "/api/v1/quote", body, **read), 422, "invalid")["errors"]
    assert errors["items[1].duration"] == [
        "Omni Flash Ext accepts 4, 6, 8 or 10 seconds; 5 s is not possible."
    ]
    assert "items[2].aspect_ratio" in errors and "items[0].duration" not in errors
    body = {"items": [FOX, {"model": "nope/x", "prompt": "y"}]}
    errors = problem(post(client, "/api/v1/quote", body, **read), 422, "invalid")["errors"]
    assert list(errors) == ["items[1].model"]


def test_quote_counts_reference_images_against_the_model(client, read):
    body = {"items": [FOX], "reference_images": 2}
    errors = problem(post(client, "/api/v1/quote", body, **read), 422, "invalid")["errors"]
    assert any("image" in message for messages in errors.values() for message in messages)


def test_quote_says_when_the_balance_is_short(client, alice, read, carol):
    ledger.deduct(alice, 4990, by=carol, reason="spent")
    body = problem(post(client, "/api/v1/quote", {"items": [FOX]}, **read), 402, "balance")
    assert "your balance is 10" in body["detail"]


def test_me_shows_balance_spending_limits_and_models(client, alice, write):
    Quota.objects.create(user=alice, max_credits_per_day=500, allowed_models=["apimart/*"])
    task = create(client, write)
    me = client.get("/api/v1/me", **write).json()
    assert me["balance"] == 5000 - task["credits_charged"]
    assert me["spent_today"] == task["credits_charged"] and me["active_tasks"] == 1
    assert me["limits"]["max_credits_per_day"] == 500
    assert me["allowed_models"] == ["apimart/Omni-Flash-Ext"]
    assert me["token"] == "storyboard" and me["scope"] == "write"


# --- Starting tasks ---------------------------------------------------------------------------


def test_a_task_is_charged_once_and_shows_like_a_browser_task(client, alice, bob, write):
    task = create(client, write)
    stored = Task.objects.get(code=task["id"])
    assert stored.user == alice and stored.key.owner == alice and stored.visibility == "team"
    assert task["state"] == "queued" and task["credits_charged"] == stored.credits_charged
    assert task["model"] == "apimart/Omni-Flash-Ext" and task["duration"] == 6
    assert task["web_url"].endswith(f"/t/{task['id']}/") and task["web_url"].startswith("http")
    assert debits(alice) == 1 and balance(alice) == 5000 - stored.credits_charged
    assert stored.events.get().actor == "api"
    client.force_login(bob)
    assert client.get(f"/t/{task['id']}/").status_code == 200


def test_an_idempotency_key_returns_the_first_task_and_charges_once(client, alice, bob, write):
    first = post(client, "/api/v1/tasks", FOX, HTTP_IDEMPOTENCY_KEY="scene-1", **write)
    again = post(client, "/api/v1/tasks", FOX, HTTP_IDEMPOTENCY_KEY="scene-1", **write)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"] and debits(alice) == 1
    other = post(client, "/api/v1/tasks", FOX, HTTP_IDEMPOTENCY_KEY="scene-2", **write)
    assert other.status_code == 201 and debits(alice) == 2
    long = post(client, "/api/v1/tasks", FOX, HTTP_IDEMPOTENCY_KEY="k" * 256, **write)
    problem(long, 422, "invalid")


def test_the_same_idempotency_key_of_two_members_makes_two_tasks(
    client, alice, bob, write, bob_token
):
    mine = post(client, "/api/v1/tasks", FOX, HTTP_IDEMPOTENCY_KEY="same", **write).json()
    theirs = post(client, "/api/v1/tasks", FOX, HTTP_IDEMPOTENCY_KEY="same", **bob_token).json()
    assert mine["id"] != theirs["id"] and debits(alice) == debits(bob) == 1


def test_reference_images_as_data_uris_and_https_addresses(client, alice, write):
    body = {**FOX, "reference_images": [png_uri()]}
    task = create(client, write, body)
    stored = Task.objects.get(code=task["id"])
    reference = ReferenceImage.objects.get(task=stored)
    assert reference.width == 64 and reference.content_type == "image/png"
    assert stored.params["reference_images"][0].startswith("data:image/png;base64,")
    url = "https://images.example.com/a.png"
    task = create(client, write, {**BANANA, "reference_images": [url]})
    assert Task.objects.get(code=task["id"]).params["reference_images"] == [url]


def test_uploads_to_a_gateway_that_fetches_them_need_the_public_address(client, write, settings):
    body = {**BANANA, "reference_images": [png_uri()]}
    settings.PUBLIC_URL = ""
    errors = problem(post(client, "/api/v1/tasks", body, **write), 422, "invalid")["errors"]
    assert "public address" in errors["reference_images"][0]
    settings.PUBLIC_URL = "https://studio.example.com"
    task = Task.objects.get(code=create(client, write, body)["id"])
    sent = task.params["reference_images"][0]
    assert sent.startswith("https://studio.example.com/") and task.references.count() == 1


@pytest.mark.parametrize(
    ("images", "words"),
    [
        (["http://images.example.com/a.png"], "must be an https:// address"),
        (["data:image/png;base64,!!!"], "not valid base64"),
        ([f"data:image/png;base64,{base64.b64encode(b'not an image').decode()}"], "not a PNG"),
        (["ftp://x"], "must be an https:// address"),
    ],
)
def test_bad_reference_images_are_refused_and_nothing_is_charged(
    client, alice, write, images, words
):
    body = problem(
        post(client, "/api/v1/tasks", {**FOX, "reference_images": images}, **write), 422, "invalid"
    )
    assert any(words in message for message in body["errors"]["reference_images"])
    assert debits(alice) == 0 and Task.objects.count() == 0


def test_too_many_reference_images_and_a_too_large_one_are_refused(client, alice, write):
    body = {**FOX, "reference_images": [png_uri()] * 4}
    problem(post(client, "/api/v1/tasks", body, **write), 422, "invalid")
    two = {**FOX, "reference_images": [png_uri(), png_uri()]}
    errors = problem(post(client, "/api/v1/tasks", two, **write), 422, "invalid")["errors"]
    assert errors and debits(alice) == 0 and ReferenceImage.objects.count() == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**FOX, "model": "apimart/nope"}, "model"),
        ({**FOX, "duration": 7}, "duration"),
        ({**FOX, "resolution": "8k"}, "resolution"),
        ({**FOX, "prompt": ""}, "prompt"),
        ({**FOX, "prompt": "x" * 5000}, "prompt"),
        ({**FOX, "visibility": "public"}, "visibility"),
        ({"prompt": "no model"}, "model"),
        ({**FOX, "key": "not-a-uuid"}, "key"),
    ],
)
def test_invalid_fields_are_named(client, alice, write, body, field):
    errors = problem(post(client, "/api/v1/tasks", body, **write), 422, "invalid")["errors"]
    assert field in errors and errors[field][0]
    assert debits(alice) == 0


def test_a_body_that_is_not_json_is_refused(client, alice, write):
    response = client.post("/api/v1/tasks", "{not json", content_type="application/json", **write)
    assert response.status_code in (400, 422) and response["Content-Type"] == PROBLEM


def test_keys_another_member_or_no_key_or_a_disabled_key(client, alice, keys, write):
    body = {**FOX, "key": str(keys["bob"].code)}
    errors = problem(post(client, "/api/v1/tasks", body, **write), 422, "key")["errors"]
    assert errors["key"]
    problem(post(client, "/api/v1/tasks", {**FOX, "key": str(uuid.uuid4())}, **write), 422, "key")
    ProviderKey.objects.filter(pk=keys["apimart"].pk).update(is_disabled=True)
    body = problem(post(client, "/api/v1/tasks", FOX, **write), 422, "key")
    assert "no usable key for apimart" in body["detail"]
    assert debits(alice) == 0


def test_a_chosen_key_pays(client, alice, keys, write):
    second = make_key(alice, label="Second")
    task = create(client, write, {**FOX, "key": str(second.code)})
    assert Task.objects.get(code=task["id"]).key == second


def test_limits_answer_429_with_retry_after(client, alice, write, settings):
    settings.SUBMIT_RATE_PER_MINUTE = 2
    create(client, write)
    create(client, write)
    response = post(client, "/api/v1/tasks", FOX, **write)
    problem(response, 429, "rate_limited")
    assert 1 <= int(response["Retry-After"]) <= 60
    settings.SUBMIT_RATE_PER_MINUTE = 100
    Quota.objects.create(user=alice, max_credits_per_day=100)
    response = post(client, "/api/v1/tasks", FOX, **write)
    body = problem(response, 429, "quota")
    assert "for today" in body["detail"] and 1 <= int(response["Retry-After"]) <= 86400 + 3600
    assert debits(alice) == 2


def test_a_model_outside_the_quota_is_403_and_a_short_balance_402(client, alice, carol, write):
    Quota.objects.create(user=alice, allowed_models=["omnivideo/*"])
    problem(post(client, "/api/v1/tasks", FOX, **write), 403, "not_allowed")
    Quota.objects.filter(user=alice).update(allowed_models=[])
    ledger.deduct(alice, 4990, by=carol, reason="spent")
    problem(post(client, "/api/v1/tasks", FOX, **write), 402, "balance")
    assert debits(alice) == 0


# --- Reading tasks ----------------------------------------------------------------------------


def test_task_list_pages_by_cursor_and_filters(client, alice, bob, write, bob_token, settings):
    settings.SUBMIT_RATE_PER_MINUTE = 100
    made = [create(client, write, {**FOX, "prompt": f"scene {n}"})["id"] for n in range(25)]
    create(client, bob_token)
    seen, cursor = [], None
    while True:
        query = {"limit": 10} | ({"cursor": cursor} if cursor else {})
        page = client.get("/api/v1/tasks", query, **write).json()
        seen += [task["id"] for task in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == made[::-1]
    fail_task(Task.objects.get(code=made[3]), actor="test", reason="boom")
    failed = client.get("/api/v1/tasks", {"state": "failed"}, **write).json()["data"]
    assert [task["id"] for task in failed] == [made[3]]
    assert failed[0]["credits_refunded"] == failed[0]["credits_charged"]
    assert failed[0]["error"] == "boom" and page["data"][0]["error"] is None
    run = Task.objects.get(code=made[0]).run.code
    in_run = client.get("/api/v1/tasks", {"run": str(run)}, **write).json()["data"]
    assert [task["id"] for task in in_run] == [made[0]]
    assert client.get("/api/v1/tasks", {"gateway": "omnivideo"}, **write).json()["data"] == []
    found = client.get("/api/v1/tasks", {"q": "Scene 24"}, **write).json()["data"]
    assert [task["id"] for task in found] == [made[24]]


def test_bad_list_parameters_are_refused(client, write):
    problem(client.get("/api/v1/tasks", {"cursor": "garbage"}, **write), 422, "invalid")
    problem(client.get("/api/v1/tasks", {"limit": 0}, **write), 422, "invalid")
    problem(client.get("/api/v1/tasks", {"limit": 101}, **write), 422, "invalid")
    problem(client.get("/api/v1/tasks", {"state": "done"}, **write), 422, "invalid")
    words = " ".join(f"w{n}" for n in range(30))
    problem(client.get("/api/v1/tasks", {"q": words}, **write), 422, "invalid")


def test_a_teammates_team_task_is_readable_but_not_theirs_to_change(
    client, alice, bob, write, bob_token
):
    team = create(client, bob_token)
    assert client.get(f"/api/v1/tasks/{team['id']}", **write).json()["id"] == team["id"]
    problem(post(client, f"/api/v1/tasks/{team['id']}/cancel", **write), 404, "not_found")
    assert Task.objects.get(code=team["id"]).state == "queued"


def other_members_private_task(client, bob_token):
    task = create(client, bob_token, {**FOX, "visibility": "private"})
    stored = Task.objects.get(code=task["id"])
    succeed(stored)
    return stored


ROUTES_NAMING_A_TASK = [
    ("get", "/api/v1/tasks/{code}"),
    ("post", "/api/v1/tasks/{code}/cancel"),
    ("post", "/api/v1/tasks/{code}/retry"),
    ("get", "/api/v1/tasks/{code}/results/0"),
    ("get", "/api/v1/tasks/{code}/results/0/poster"),
]


@pytest.mark.parametrize(("method", "route"), ROUTES_NAMING_A_TASK)
def test_another_members_private_task_is_404_on_every_route(
    client, alice, write, bob_token, method, route
):
    task = other_members_private_task(client, bob_token)
    before = balance(alice)
    response = getattr(client, method)(route.format(code=task.code), **write)
    problem(response, 404, "not_found")
    assert balance(alice) == before


@pytest.mark.parametrize(("method", "route"), ROUTES_NAMING_A_TASK)
def test_a_code_that_is_no_task_is_404(client, write, method, route):
    for code in (uuid.uuid4(), "not-a-code"):
        problem(getattr(client, method)(route.format(code=code), **write), 404, "not_found")


def test_another_members_private_run_is_404(client, write, bob_token):
    task = other_members_private_task(client, bob_token)
    problem(client.get(f"/api/v1/runs/{task.run.code}", **write), 404, "not_found")
    problem(client.get(f"/api/v1/runs/{uuid.uuid4()}", **write), 404, "not_found")
    problem(client.get("/api/v1/runs/nope", **write), 404, "not_found")


def test_result_files_through_the_same_check_as_the_gallery(client, alice, bob, write, bob_token):
    mine = Task.objects.get(code=create(client, write)["id"])
    succeed(mine)
    task = client.get(f"/api/v1/tasks/{mine.code}", **write).json()
    assert task["state"] == "succeeded" and len(task["results"]) == 1
    result = task["results"][0]
    assert result["url"].startswith("http") and result["content_type"] == "video/mp4"
    response = client.get(result["url"].split("testserver", 1)[1], **write)
    assert response.status_code == 200 and b"".join(response.streaming_content) == b"mp4 " * 10
    download = client.get(f"/api/v1/tasks/{mine.code}/results/0", {"download": "true"}, **write)
    assert "attachment" in download["Content-Disposition"]
    poster = client.get(result["poster_url"].split("testserver", 1)[1], **write)
    assert b"".join(poster.streaming_content) == b"\xff\xd8\xff"
    problem(client.get(f"/api/v1/tasks/{mine.code}/results/1", **write), 404, "not_found")
    # A teammate's token reads a team result too.
    assert client.get(f"/api/v1/tasks/{mine.code}/results/0", **bob_token).status_code == 200


def test_result_files_redirect_to_a_signed_link_on_object_storage(
    client, write, monkeypatch, settings
):
    from generations import views

    mine = Task.objects.get(code=create(client, write)["id"])
    succeed(mine)
    settings.S3_BUCKET = "media"
    seen = {}

    def signed(stored, *, content_type, attachment=None):
        seen.update(name=stored.name, content_type=content_type)
        from django.http import HttpResponseRedirect

        return HttpResponseRedirect("https://store.example.com/signed?X-Amz-Expires=300")

    monkeypatch.setattr(views, "signed_redirect", signed)
    response = client.get(f"/api/v1/tasks/{mine.code}/results/0", **write)
    assert response.status_code == 302 and "X-Amz-Expires" in response["Location"]
    assert seen["content_type"] == "video/mp4"


# --- Changing tasks ---------------------------------------------------------------------------


def test_cancel_refunds_once_and_a_finished_task_cannot_be_canceled(client, alice, write):
    task = create(client, write)
    first = post(client, f"/api/v1/tasks/{task['id']}/cancel", **write).json()
    assert first["state"] == "canceled" and first["credits_refunded"] == task["credits_charged"]
    again = post(client, f"/api/v1/tasks/{task['id']}/cancel", **write)
    assert again.status_code == 200 and balance(alice) == 5000
    assert LedgerEntry.objects.filter(kind="refund").count() == 1
    done = Task.objects.get(code=create(client, write)["id"])
    succeed(done)
    body = problem(post(client, f"/api/v1/tasks/{done.code}/cancel", **write), 409, "state")
    assert "succeeded" in body["detail"]


def test_retry_makes_a_new_task_in_the_same_run_once(client, alice, write):
    task = create(client, write)
    problem(post(client, f"/api/v1/tasks/{task['id']}/retry", **write), 409, "state")
    fail_task(Task.objects.get(code=task["id"]), actor="test", reason="the gateway said no")
    first = post(client, f"/api/v1/tasks/{task['id']}/retry", HTTP_IDEMPOTENCY_KEY="r1", **write)
    again = post(client, f"/api/v1/tasks/{task['id']}/retry", HTTP_IDEMPOTENCY_KEY="r1", **write)
    assert (first.status_code, again.status_code) == (201, 200)
    new = first.json()
    assert (
        new["retry_of"] == task["id"]
        and new["run"] == task["run"]
        and new["id"] == again.json()["id"]
    )
    assert debits(alice) == 2


# --- Runs -------------------------------------------------------------------------------------


def test_a_run_is_one_order_with_one_debit_per_task(client, alice, bob, write):
    body = {"name": "storyboard 7", "items": [FOX, BANANA, {**FOX, "prompt": "a wolf"}]}
    response = post(client, "/api/v1/runs", body, HTTP_IDEMPOTENCY_KEY="sb7", **write)
    assert response.status_code == 201
    run = response.json()
    assert run["name"] == "storyboard 7" and run["counts"]["total"] == 3
    assert run["counts"]["active"] == 3 and len(run["tasks"]) == 3
    assert run["credits_charged"] == sum(task["credits_charged"] for task in run["tasks"])
    assert Run.objects.get(code=run["id"]).tasks.count() == 3 and debits(alice) == 3
    again = post(client, "/api/v1/runs", body, HTTP_IDEMPOTENCY_KEY="sb7", **write)
    assert again.status_code == 200 and again.json()["id"] == run["id"] and debits(alice) == 3
    assert client.get(f"/api/v1/runs/{run['id']}", **write).json()["counts"]["total"] == 3


def test_a_run_is_all_or_nothing(client, alice, write, settings):
    body = {"items": [FOX, {**BANANA, "aspect_ratio": "4:3"}]}
    errors = problem(post(client, "/api/v1/runs", body, **write), 422, "invalid")["errors"]
    assert list(errors) == ["items[1].aspect_ratio"]
    assert debits(alice) == 0 and Run.objects.count() == 0


def test_a_run_over_the_teams_cap_is_refused(client, alice, write):
    from accounts.models import TeamQuota

    TeamQuota.objects.update_or_create(singleton=1, defaults={"max_tasks_per_run": 2})
    body = problem(post(client, "/api/v1/runs", {"items": [FOX] * 3}, **write), 422, "too_many")
    assert "at most 2" in body["detail"] and debits(alice) == 0
    problem(post(client, "/api/v1/runs", {"items": [FOX] * 251}, **write), 422, "invalid")
    problem(post(client, "/api/v1/runs", {"items": []}, **write), 422, "invalid")


def test_a_teammate_sees_a_team_run_with_only_the_tasks_they_may_see(
    client, alice, write, bob_token
):
    run = post(client, "/api/v1/runs", {"items": [FOX, FOX]}, **write).json()
    Task.objects.filter(code=run["tasks"][1]["id"]).update(visibility="private")
    seen = client.get(f"/api/v1/runs/{run['id']}", **bob_token).json()
    assert [task["id"] for task in seen["tasks"]] == [run["tasks"][0]["id"]]


# --- The schema and its docs ------------------------------------------------------------------


def test_the_openapi_schema_declares_problems_and_the_token(client):
    schema = client.get("/api/v1/openapi.json").json()
    assert schema["openapi"].startswith("3.") and schema["info"]["title"] == "Omniweb API"
    create = schema["paths"]["/api/v1/tasks"]["post"]
    assert "application/problem+json" in create["responses"]["422"]["content"]
    assert "application/json" in create["responses"]["201"]["content"]
    assert any(p["name"] == "Idempotency-Key" for p in create["parameters"])
    assert schema["components"]["securitySchemes"]["TokenBearer"]["scheme"] == "bearer"


def test_the_docs_page_is_served_from_this_site(client):
    response = client.get("/api/v1/docs")
    page = response.content.decode()
    assert response.status_code == 200 and "/static/ninja/swagger-ui-bundle.js" in page
    assert "cdn" not in page.lower() and "https://" not in page
    assert "script-src 'self'" in response["Content-Security-Policy"]


def test_a_request_over_the_size_limit_is_413_and_charges_nothing(client, alice, write):
    image = "data:image/png;base64," + "A" * (11 * 1024 * 1024)
    response = post(client, "/api/v1/tasks", {**FOX, "reference_images": [image]}, **write)
    assert "at most 10 MB" in problem(response, 413, "too_large")["detail"]
    assert debits(alice) == 0
