"""The official `openai` package drives /v1/videos end to end: a personal access token as its API
key, this site's live server plus /v1 as its base URL, a real `manage.py qcluster` worker, and
the simulator (served by the live server) as the gateway. What the SDK downloads must be the
file Omniweb stored, the video must be in the team's gallery, and the ledger must hold its debit
and balance."""

import re
import time

import openai
import pytest
from django.test import Client

from accounts import ledger
from accounts.models import ApiToken, LedgerEntry
from generations.models import Result, Task
from tests.helpers import wait_for
from tests.test_engine_live import Worker, make_key

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    # The SDK marks its video methods deprecated; that is OpenAI's service, not this facade.
    pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning"),
]

TILE = re.compile(r'class="gallery-link" href="/gallery/([0-9a-f-]{36})/"')


@pytest.fixture(autouse=True)
def fresh_cache():
    """Batons and queued jobs of earlier tests (in the cache table or Redis) must not leak in."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def worker(live_server, tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path
    started = Worker(tmp_path, OMNIWEB_PUBLIC_URL=live_server.url)
    yield started
    started.stop()


def test_the_openai_sdk_makes_a_video_that_lands_in_the_gallery_and_the_ledger(
    live_server, worker, alice, bob, carol, settings
):
    settings.SIMULATOR_SECONDS = 2
    settings.PUBLIC_URL = live_server.url
    ledger.grant(alice, 10_000, by=carol, reason="tests")
    make_key(alice, "omixa", f"{live_server.url}/simulator/omixa")
    _token, secret = ApiToken.issue(alice, name="sdk script", scope="write", days=1)
    client = openai.OpenAI(api_key=secret, base_url=f"{live_server.url}/v1", max_retries=0)
    started = time.monotonic()

    video = client.videos.create(
        prompt="a lighthouse at dusk", model="omixa/sora", seconds="4", size="1280x720"
    )
    assert (video.status, video.model, video.seconds, video.size) == (
        "queued",
        "omixa/sora",
        "4",
        "1280x720",
    )

    def finished():
        current = client.videos.retrieve(video.id)
        return current if current.status in ("completed", "failed") else None

    done = wait_for(finished, 45, interval=0.5)
    assert done is not None, worker.output()[-3000:]
    assert done.status == "completed", (done.error, worker.output()[-3000:])
    assert done.progress == 100 and done.completed_at >= done.created_at

    task = Task.objects.get(code=video.id)
    assert (task.user, task.state) == (alice, Task.State.SUCCEEDED)
    result = Result.objects.get(task=task)
    with result.file.open("rb") as stored:
        assert client.videos.download_content(video.id).content == stored.read()
    with result.poster.open("rb") as poster:
        thumbnail = client.videos.download_content(video.id, variant="thumbnail")
        assert thumbnail.content == poster.read()
    assert [v.id for v in client.videos.list()] == [video.id]

    teammate = Client()
    teammate.force_login(bob)
    gallery = teammate.get("/gallery/")
    assert gallery.status_code == 200
    assert video.id in TILE.findall(gallery.content.decode())

    debit = LedgerEntry.objects.get(task=task, kind=LedgerEntry.Kind.DEBIT)
    assert debit.amount == -task.credits_charged
    assert not LedgerEntry.objects.filter(task=task, kind=LedgerEntry.Kind.REFUND).exists()
    alice.refresh_from_db()
    assert alice.credit_balance == 10_000 - task.credits_charged
    assert ledger.audit() == []
    assert time.monotonic() - started < 60
