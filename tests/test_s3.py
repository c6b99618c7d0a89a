"""Media on S3-compatible object storage, against a real S3 API (moto's server on loopback).

The bucket is private. Omniweb stores results and posters in it through `default_storage` and
hands a member who may see the task a redirect to a link signed for S3_URL_SECONDS; nobody else
gets a link at all.

What moto checks, verified here rather than assumed: an anonymous, unsigned GET of an object is
refused (403) unless the object's ACL allows public reads (a public-read control object shows
the check is real). Moto does not verify signatures or expiry of signed links, so for those the
tests assert what Omniweb controls: the links it hands out are signed and expire after 300 s.
"""

import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.shortcuts import resolve_url
from django.test import Client, override_settings
from django.utils import timezone
from django.utils.functional import empty

from accounts import ledger
from accounts.models import ProviderKey
from generations.fetch import fetch_result
from generations.models import ReferenceImage, Result, Task
from generations.providers import GenerationRequest
from generations.services import delete_task, submit_task
from tests.conftest import PASSWORD
from tests.s3server import URL_SECONDS, s3_server
from tests.test_engine_live import Worker, fresh_cache, wait_until_finished  # noqa: F401
from tests.test_fetch import MP4, PNG, local_server  # noqa: F401

# Every test touches the database, if only through fresh_cache (the cache may be a table).
pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def s3():
    with s3_server() as server:
        yield server


@pytest.fixture
def on_s3(s3, settings):
    """The default storage is the (empty) bucket for one test; the local folder after."""
    settings.DOWNLOAD_ALLOW_LOOPBACK = True  # the local test server and the simulator
    s3.empty()
    before = type(storage_backend())
    with override_settings(**s3.storage_settings()):
        # Django's override_settings empties the lazily built default storage on the way in and
        # out (django.test.signals); check that, rather than rely on it silently.
        assert type(storage_backend()).__name__ == "S3Storage"
        yield s3
    assert type(storage_backend()) is before


def storage_backend():
    """What `default_storage` stands for now (building it if it was reset)."""
    if default_storage._wrapped is empty:
        default_storage._setup()
    return default_storage._wrapped


def http():
    return httpx.Client(trust_env=False, timeout=10)


def logged_in(user) -> Client:
    client = Client()
    assert client.login(username=user.username, password=PASSWORD)
    return client


def assert_signed_for_300_seconds(url: str, s3) -> dict[str, list[str]]:
    """The link is the bucket's, signed, and stops working 300 s from now."""
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == s3.endpoint
    assert parts.path.startswith(f"/{s3.bucket}/")
    query = parse_qs(parts.query)
    if "X-Amz-Signature" in query:  # Signature Version 4
        assert query["X-Amz-Expires"] == [str(URL_SECONDS)]
        assert query["X-Amz-Credential"][0].startswith("test/")
    else:  # Signature Version 2 (what botocore picks for some regions)
        assert query["Signature"] and query["AWSAccessKeyId"] == ["test"]
        assert abs(int(query["Expires"][0]) - (time.time() + URL_SECONDS)) < 30
    return query


@pytest.fixture
def key(alice, carol):
    ledger.grant(alice, 1000, by=carol, reason="tests")
    key = ProviderKey(provider="apimart", label="Mine", owner=alice)
    key.set_secret("sk-test-0001")
    key.save()
    return key


@pytest.fixture
def stored_task(db, alice, key, on_s3, local_server):  # noqa: F811
    """A private task of alice's, finished, with a real MP4 fetched into the bucket."""
    request = GenerationRequest("apimart", "Omni-Flash-Ext", "a heron", duration=4)
    task = submit_task(alice, request, key=key)[0]
    media = fetch_result(local_server.url("/video.mp4"), kind="video")
    Task.objects.filter(pk=task.pk).update(
        state=Task.State.SUCCEEDED,
        visibility=Task.Visibility.PRIVATE,
        next_check_at=None,
        finished_at=timezone.now(),
    )
    Result.objects.create(
        task=task,
        file=media.name,
        poster=media.poster_name,
        content_type=media.content_type,
        size=media.size,
        width=media.width,
        height=media.height,
        duration=media.duration,
    )
    return task, media


def test_it_stores_a_fetched_result_in_the_private_bucket(stored_task, on_s3):
    _task, media = stored_task
    s3 = on_s3
    assert media.name.startswith("results/") and media.name.endswith(".mp4")
    assert media.poster_name.startswith("posters/") and media.poster_name.endswith(".jpg")
    assert s3.keys("results/") == [media.name]
    assert s3.keys("posters/") == [media.poster_name]
    head = s3.client().head_object(Bucket=s3.bucket, Key=media.name)
    assert head["ContentLength"] == len(MP4) == media.size
    assert head["ContentType"] == "video/mp4"
    body = s3.client().get_object(Bucket=s3.bucket, Key=media.name)["Body"].read()
    assert body == MP4

    with http() as client:
        for name in (media.name, media.poster_name):
            assert client.get(s3.plain_url(name)).status_code == 403, name


def test_it_only_refuses_anonymous_reads_because_the_objects_are_private(s3):
    """The control for the 403s above: the server does serve an object whose ACL is public."""
    control = "omniweb-control"
    api = s3.client()
    api.create_bucket(Bucket=control)
    try:
        api.put_object(Bucket=control, Key="public.txt", Body=b"open", ACL="public-read")
        api.put_object(Bucket=control, Key="private.txt", Body=b"closed")
        with http() as client:
            assert client.get(f"{s3.endpoint}/{control}/public.txt").content == b"open"
            assert client.get(f"{s3.endpoint}/{control}/private.txt").status_code == 403
    finally:
        for key in ("public.txt", "private.txt"):
            api.delete_object(Bucket=control, Key=key)
        api.delete_bucket(Bucket=control)


def test_the_owner_is_redirected_to_a_signed_link_to_the_same_bytes(stored_task, alice, on_s3):
    task, media = stored_task
    client = logged_in(alice)
    response = client.get(f"/t/{task.code}/file/0")
    assert response.status_code == 302
    assert response["Cache-Control"] == "private, no-store"
    assert_signed_for_300_seconds(response["Location"], on_s3)
    with http() as web:
        video = web.get(response["Location"])
        assert video.status_code == 200
        assert video.content == MP4
        assert video.headers["Content-Type"] == "video/mp4"
        assert "attachment" not in video.headers.get("Content-Disposition", "")

        poster = client.get(f"/t/{task.code}/poster/0")
        assert poster.status_code == 302
        assert poster["Cache-Control"] == "private, no-store"
        assert_signed_for_300_seconds(poster["Location"], on_s3)
        image = web.get(poster["Location"])
        assert image.status_code == 200
        assert image.content.startswith(b"\xff\xd8\xff")
        assert image.headers["Content-Type"] == "image/jpeg"
        stored = on_s3.client().get_object(Bucket=on_s3.bucket, Key=media.poster_name)
        assert image.content == stored["Body"].read()


def test_a_download_link_makes_the_store_send_an_attachment(stored_task, alice, on_s3):
    task, _media = stored_task
    response = logged_in(alice).get(f"/t/{task.code}/file/0?download=1")
    assert response.status_code == 302
    query = assert_signed_for_300_seconds(response["Location"], on_s3)
    filename = f"omniweb-{task.code}-0.mp4"
    expected = f'attachment; filename="{filename}"'
    assert query["response-content-disposition"] == [expected]
    with http() as web:
        download = web.get(response["Location"])
    assert download.status_code == 200
    assert download.headers["Content-Disposition"] == expected
    assert download.content == MP4


def test_another_member_gets_404_and_no_link(stored_task, bob, on_s3):
    task, _media = stored_task
    client = logged_in(bob)
    for path in (f"/t/{task.code}/file/0", f"/t/{task.code}/poster/0"):
        for query in ("", "?download=1"):
            response = client.get(path + query)
            assert response.status_code == 404, path + query
            assert "Location" not in response
            assert on_s3.endpoint not in response.content.decode(errors="replace")
    anonymous = Client().get(f"/t/{task.code}/file/0")
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith(resolve_url("login") + "?next=")


def test_a_teammate_gets_a_link_once_the_task_is_shared_with_the_team(stored_task, bob, on_s3):
    task, _media = stored_task
    Task.objects.filter(pk=task.pk).update(visibility=Task.Visibility.TEAM)
    response = logged_in(bob).get(f"/t/{task.code}/file/0")
    assert response.status_code == 302
    assert_signed_for_300_seconds(response["Location"], on_s3)


def test_deleting_the_task_removes_its_objects_from_the_bucket(stored_task, alice, on_s3):
    task, media = stored_task
    assert on_s3.keys("results/") == [media.name]
    assert delete_task(Task.objects.get(pk=task.pk))
    assert on_s3.keys("results/") == []
    assert on_s3.keys("posters/") == []
    assert logged_in(alice).get(f"/t/{task.code}/file/0").status_code == 404


def test_a_reference_image_is_a_signed_redirect_for_the_gateway(alice, key, on_s3):
    token = "r" * 43
    name = default_storage.save(f"references/{token}.png", ContentFile(PNG))
    request = GenerationRequest("apimart", "Omni-Flash-Ext", "a heron", duration=4)
    ReferenceImage.objects.create(
        user=alice,
        task=submit_task(alice, request, key=key)[0],  # active: its gateway may fetch it
        token=token,
        file=name,
        content_type="image/png",
        width=200,
        height=120,
        size=len(PNG),
    )
    assert on_s3.keys("references/") == [name]
    response = Client().get(f"/ref/{token}")  # anonymous, like a gateway
    assert response.status_code == 302
    assert response["Cache-Control"] == "private, no-store"
    assert_signed_for_300_seconds(response["Location"], on_s3)
    with http() as web:
        image = web.get(response["Location"])
        assert image.status_code == 200
        assert image.content == PNG
        assert image.headers["Content-Type"] == "image/png"
        assert web.get(on_s3.plain_url(name)).status_code == 403
    assert Client().get("/ref/not-a-token").status_code == 404
    default_storage.delete(name)


# --- end to end: submit, a real worker stores the result in the bucket, the owner gets it -----


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_submitted_task_ends_in_the_bucket_and_is_served_to_its_owner_only(
    live_server, alice, bob, carol, on_s3, settings, tmp_path
):
    s3 = on_s3
    settings.SIMULATOR_SECONDS = 2
    settings.MEDIA_ROOT = tmp_path
    ledger.grant(alice, 1000, by=carol, reason="tests")
    key = ProviderKey(
        provider="apimart",
        label="Simulator",
        owner=alice,
        base_url=f"{live_server.url}/simulator/apimart",
    )
    key.set_secret("sk-live-test-0001")
    key.save()
    request = GenerationRequest("apimart", "Omni-Flash-Ext", "a heron over the lake", duration=4)
    task = submit_task(alice, request, key=key)[0]
    Task.objects.filter(pk=task.pk).update(visibility=Task.Visibility.PRIVATE)

    worker = Worker(tmp_path, **s3.environment())
    try:
        (done,) = wait_until_finished([task], 120).values()
        assert done.state == Task.State.SUCCEEDED, (done.message, worker.output()[-3000:])
    finally:
        # Its dispatcher would work on for DISPATCH_SECONDS after a SIGTERM; nothing is left
        # to do, so end the whole process group at once.
        if worker.process.poll() is None:
            worker.kill()
        else:
            worker.stop()

    result = Result.objects.get(task=task)
    assert result.file.name.startswith("results/")
    assert result.file.name in s3.keys("results/")
    assert result.poster.name in s3.keys("posters/")
    head = s3.client().head_object(Bucket=s3.bucket, Key=result.file.name)
    assert head["ContentLength"] == result.size
    assert not (tmp_path / "results").exists()
    assert not (tmp_path / "posters").exists()

    response = logged_in(alice).get(f"/t/{task.code}/file/0")
    assert response.status_code == 302
    assert_signed_for_300_seconds(response["Location"], s3)
    with http() as web:
        video = web.get(response["Location"])
        assert web.get(s3.plain_url(result.file.name)).status_code == 403
    assert video.status_code == 200
    assert video.headers["Content-Type"] == "video/mp4"
    assert video.content[4:8] == b"ftyp"
    assert len(video.content) == result.size
    stored = s3.client().get_object(Bucket=s3.bucket, Key=result.file.name)["Body"].read()
    assert video.content == stored

    stranger = logged_in(bob)
    for path in (f"/t/{task.code}/file/0", f"/t/{task.code}/poster/0"):
        response = stranger.get(path)
        assert response.status_code == 404
        assert "Location" not in response
