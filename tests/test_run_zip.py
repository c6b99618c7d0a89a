"""Download all: a run's results as one ZIP, streamed as it is written, holding exactly the
files the viewer may see, under safe and unique names; from local storage and from S3."""

import io
import re
import uuid
import zipfile
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.http import StreamingHttpResponse
from django.test import override_settings
from django.utils import timezone

from generations import zipstream
from generations.models import Result, Run, Task
from generations.runs import archive_names
from generations.zipstream import ZipEntry, zip_chunks
from tests.s3server import s3_server

NAME = re.compile(r"^\d{2,}-[a-z0-9-]+-[0-9a-f]{8}(-\d+)?\.[a-z0-9]{1,5}$")


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path


def make_task(user, run, model="Omni-Flash-Ext", *, state=Task.State.SUCCEEDED, **fields):
    now = timezone.now()
    return Task.objects.create(
        user=user,
        run=run,
        provider="apimart",
        model=model,
        kind="video",
        prompt="a fox",
        params={"duration": 4},
        key_label="Mine",
        state=state,
        price_unit="task",
        price_credits_per_unit=10,
        price_units=1,
        price_multiplier=Decimal(1),
        credits_charged=10,
        created_at=now - timedelta(minutes=2),
        finished_at=now if state in Task.TERMINAL_STATES else None,
        **fields,
    )


def store(task, data: bytes, *, position=0, extension="mp4", content_type="video/mp4"):
    name = default_storage.save(f"results/{task.code}-{position}.{extension}", ContentFile(data))
    return Result.objects.create(
        task=task, position=position, file=name, content_type=content_type, size=len(data)
    )


def download(client, run) -> tuple[StreamingHttpResponse, list[bytes]]:
    response = client.get(f"/run/{run.code}/download")
    assert response.status_code == 200
    assert isinstance(response, StreamingHttpResponse)
    return response, list(response.streaming_content)


def archive(chunks: list[bytes]) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(b"".join(chunks))) as opened:
        assert opened.testzip() is None  # every member's checksum holds
        return {info.filename: opened.read(info) for info in opened.infolist()}


def test_the_zip_holds_every_finished_file_with_its_bytes(client, alice):
    run = Run.objects.create(user=alice, name="Foxes: the best of")
    first = make_task(alice, run)
    second = make_task(alice, run, model="nano-banana-2")
    make_task(alice, run, state=Task.State.FAILED)
    running = make_task(alice, run, state=Task.State.RUNNING)
    files = {
        store(first, b"first video " * 1000): b"first video " * 1000,
        store(second, b"\x89PNG one", extension="png", content_type="image/png"): b"\x89PNG one",
        store(second, b"\x89PNG two", position=1, extension="png", content_type="image/png"): (
            b"\x89PNG two"
        ),
    }
    store(running, b"not finished yet")  # a task still running: not in the archive
    client.force_login(alice)

    response, chunks = download(client, run)
    assert response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"] == (
        f'attachment; filename="omniweb-foxes-the-best-of-{run.code.hex[:8]}.zip"'
    )
    assert response["Cache-Control"] == "private, no-store"
    assert "Content-Length" not in response
    got = archive(chunks)
    assert list(got) == [
        f"01-omni-flash-ext-{first.code.hex[:8]}.mp4",
        f"02-nano-banana-2-{second.code.hex[:8]}.png",
        f"02-nano-banana-2-{second.code.hex[:8]}-2.png",
    ]
    assert list(got.values()) == list(files.values())
    with zipfile.ZipFile(io.BytesIO(b"".join(chunks))) as opened:
        assert {info.compress_type for info in opened.infolist()} == {zipfile.ZIP_STORED}


def test_the_zip_is_streamed_a_piece_at_a_time(client, alice, monkeypatch):
    """Several files of several pieces each: the response is a stream of many chunks, none
    much larger than one piece, far smaller than the archive."""
    monkeypatch.setattr(zipstream, "CHUNK_BYTES", 64 * 1024)
    run = Run.objects.create(user=alice, name="Big foxes")
    sizes = [300_000, 200_000, 150_000]
    stored = []
    for index, size in enumerate(sizes):
        task = make_task(alice, run)
        data = bytes([index + 1]) * size
        store(task, data)
        stored.append(data)
    client.force_login(alice)

    _response, chunks = download(client, run)
    total = sum(len(chunk) for chunk in chunks)
    assert len(chunks) >= sum(-(-size // (64 * 1024)) for size in sizes)  # a chunk per piece
    assert max(len(chunk) for chunk in chunks) <= 64 * 1024 + 1024  # a piece and a header
    assert max(len(chunk) for chunk in chunks) < total / 5
    assert list(archive(chunks).values()) == stored


def test_the_archive_is_written_only_as_it_is_read(alice):
    """Nothing is opened before the first chunk is asked for, and each file only when the
    archive reaches it."""
    opened = []

    def opener(name, data):
        def open_it():
            opened.append(name)
            return io.BytesIO(data)

        return open_it

    entries = [ZipEntry(f"{i}.bin", opener(f"{i}.bin", b"x" * 10), 10) for i in range(3)]
    chunks = zip_chunks(entries)
    assert opened == []
    next(chunks)
    assert opened == ["0.bin"]
    rest = list(chunks)
    assert opened == ["0.bin", "1.bin", "2.bin"] and rest


def test_a_teammate_downloads_only_the_results_shared_with_the_team(client, alice, bob):
    run = Run.objects.create(user=alice, name="Shared")
    shared = make_task(alice, run)
    private = make_task(alice, run, visibility=Task.Visibility.PRIVATE)
    deleted = make_task(alice, run)
    store(shared, b"shared")
    store(private, b"private")
    store(deleted, b"deleted")
    Task.objects.filter(pk=deleted.pk).update(deleted_at=timezone.now())
    client.force_login(bob)
    _response, chunks = download(client, run)
    assert list(archive(chunks).values()) == [b"shared"]
    client.force_login(alice)
    _response, chunks = download(client, run)
    assert list(archive(chunks).values()) == [b"shared", b"private"]


def test_another_member_gets_404_for_the_zip_of_a_private_run(client, alice, bob):
    run = Run.objects.create(user=alice, name="Mine", visibility="private")
    store(make_task(alice, run, visibility=Task.Visibility.PRIVATE), b"secret")
    client.force_login(bob)
    response = client.get(f"/run/{run.code}/download")
    assert response.status_code == 404
    assert b"secret" not in response.content


def test_a_run_without_results_says_so_instead_of_an_empty_zip(client, alice):
    run = Run.objects.create(user=alice, name="Nothing yet")
    make_task(alice, run, state=Task.State.RUNNING)
    client.force_login(alice)
    response = client.get(f"/run/{run.code}/download", follow=True)
    assert response.redirect_chain == [(f"/run/{run.code}/", 302)]
    assert "no finished results to download yet" in response.content.decode()


def test_a_file_lost_from_storage_is_listed_and_the_rest_still_come(client, alice):
    run = Run.objects.create(user=alice, name="Lost one")
    lost = make_task(alice, run)
    kept = make_task(alice, run)
    gone = store(lost, b"gone")
    store(kept, b"kept")
    default_storage.delete(gone.file.name)
    client.force_login(alice)
    _response, chunks = download(client, run)
    got = archive(chunks)
    lost_name = f"01-omni-flash-ext-{lost.code.hex[:8]}.mp4"
    assert list(got) == [f"02-omni-flash-ext-{kept.code.hex[:8]}.mp4", "missing-files.txt"]
    assert got[f"02-omni-flash-ext-{kept.code.hex[:8]}.mp4"] == b"kept"
    assert lost_name in got["missing-files.txt"].decode()


def test_archive_names_are_safe_and_unique(alice):
    run = Run(user=alice, name="x")
    code = uuid.UUID("12345678-0000-4000-8000-000000000000")
    tasks = [
        Task(pk=1, code=code, model="../../etc/passwd model", run=run),
        Task(pk=2, code=code, model="Ω/名前", run=run),
        Task(pk=3, code=uuid.uuid4(), model="sora", run=run),
    ]
    results = [
        Result(task=tasks[0], position=0, file="results/a.MP4", content_type="video/mp4"),
        Result(task=tasks[1], position=0, file="results/b", content_type="image/png"),
        Result(task=tasks[1], position=0, file="results/b.png", content_type="image/png"),
        Result(task=tasks[2], position=0, file="results/c.evil/../x.sh;rm", content_type="x/y"),
    ]
    for result in results:
        result.task_id = result.task.pk
    names = archive_names(results)
    assert names == [
        "01-etcpasswd-model-12345678.mp4",
        "02-result-12345678.png",
        "02-result-12345678-2.png",
        f"03-sora-{tasks[2].code.hex[:8]}.bin",
    ]
    assert len(set(names)) == len(names)
    assert all(NAME.match(name) for name in names)


# --- S3 ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3():
    with s3_server() as server:
        yield server


def test_the_zip_reads_results_through_the_storage_api_from_s3(client, alice, s3):
    s3.empty()
    with override_settings(**s3.storage_settings()):
        run = Run.objects.create(user=alice, name="On S3")
        task = make_task(alice, run)
        data = b"from the bucket " * 5000
        store(task, data)
        assert s3.keys("results/")  # in the bucket, not on disk
        client.force_login(alice)
        _response, chunks = download(client, run)
        assert list(archive(chunks).values()) == [data]
