"""The one submit path: every way a task starts goes through services.submit_order.

RELIABILITY 26: retries respect the rate limit and the visibility, a doubled retry charges once,
and an order of several tasks is checked as a whole and written all or nothing.
"""

import io
import uuid

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image

from accounts import ledger
from accounts.models import LedgerEntry, ProviderKey, Quota
from generations.models import ReferenceImage, Task
from generations.providers import GenerationRequest
from generations.services import (
    Order,
    OrderItem,
    SubmitRefused,
    fail_task,
    submit_order,
    submit_task,
)
from tests.conftest import PASSWORD

CAT = GenerationRequest("omnivideo", "nano-banana-2", "a cat")


@pytest.fixture
def key(alice, carol, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.PUBLIC_URL = "https://studio.example.com"
    ledger.grant(alice, 1000, by=carol, reason="welcome")
    key = ProviderKey(provider="omnivideo", label="Site", owner=alice, base_url="https://v.example")
    key.set_secret("sk-submit-path-0001")
    key.save()
    return key


@pytest.fixture
def member(alice):
    client = Client()
    client.login(username=alice.username, password=PASSWORD)
    return client


def failed(alice, key, **kwargs) -> Task:
    task, _ = submit_task(alice, CAT, key=key, **kwargs)
    fail_task(task, actor="test", reason="The gateway said no.")
    return task


def retry(client, task, token=None):
    return client.post(f"/t/{task.code}/retry", {"form_token": token or uuid.uuid4()})


def debits(user) -> int:
    return LedgerEntry.objects.filter(user=user, kind="debit").count()


def test_retrying_a_private_task_gives_a_private_task(member, alice, key):
    """RELIABILITY 26: Try again keeps the task's visibility."""
    task = failed(alice, key, visibility=Task.Visibility.PRIVATE)
    response = retry(member, task)
    new = Task.objects.exclude(pk=task.pk).get()
    assert response["Location"] == f"/t/{new.code}/"
    assert new.visibility == Task.Visibility.PRIVATE
    assert not Task.objects.in_gallery().filter(pk=new.pk).exists()


def test_two_posts_of_one_retry_form_make_one_task(member, alice, key):
    """RELIABILITY 26: the retry button carries a token, so a double click charges once."""
    task = failed(alice, key)
    before = debits(alice)
    token = uuid.uuid4()
    first = retry(member, task, token)
    second = member.post(f"/t/{task.code}/retry", {"form_token": token}, follow=True)
    assert Task.objects.count() == 2
    assert debits(alice) == before + 1
    new = Task.objects.exclude(pk=task.pk).get()
    assert first["Location"] == f"/t/{new.code}/"
    assert "nothing more was charged" in second.content.decode()


def test_the_task_page_gives_each_retry_button_a_fresh_token(member, alice, key):
    task = failed(alice, key)
    first = member.get(f"/t/{task.code}/").content.decode()
    second = member.get(f"/t/{task.code}/").content.decode()

    def token(html: str) -> str:
        return html.split('name="form_token" value="', 1)[1].split('"', 1)[0]

    assert uuid.UUID(token(first)) != uuid.UUID(token(second))


def test_fast_retries_are_cut_at_the_submit_limit(member, alice, key, settings):
    """RELIABILITY 26: Try again counts against the per-minute limit like any submit."""
    settings.SUBMIT_RATE_PER_MINUTE = 20
    task = failed(alice, key)  # one task made this minute already
    balance = ledger_balance(alice)
    answers = [retry(member, task) for _ in range(25)]
    made = Task.objects.exclude(pk=task.pk).count()
    assert made == 19  # 20 in the minute, counting the failed one
    refused = member.post(
        f"/t/{task.code}/retry", {"form_token": uuid.uuid4()}, follow=True
    ).content.decode()
    assert "the limit; wait a moment" in refused
    assert sum(1 for a in answers if a["Location"] == f"/t/{task.code}/") == 6
    price = task.credits_charged
    assert ledger_balance(alice) == balance - 19 * price


def ledger_balance(user) -> int:
    user.refresh_from_db()
    return user.credit_balance


def test_an_order_is_checked_as_a_whole_and_written_all_or_nothing(alice, key):
    """RELIABILITY 26: a balance that pays for two of three tasks makes none of them."""
    price = submit_task(alice, CAT, key=key)[0].credits_charged
    alice.refresh_from_db()
    ledger.deduct(alice, alice.credit_balance - 2 * price, by=alice, reason="spent elsewhere")
    order = Order(items=tuple(OrderItem(CAT, key) for _ in range(3)))
    before = Task.objects.count()
    with pytest.raises(SubmitRefused) as refusal:
        submit_order(alice, order)
    assert refusal.value.code == "balance"
    assert f"These 3 tasks cost {3 * price} credits" in refusal.value.message
    assert Task.objects.count() == before
    outcome = submit_order(alice, Order(items=tuple(OrderItem(CAT, key) for _ in range(2))))
    assert outcome.created and len(outcome.tasks) == 2


def test_the_rate_counts_submits_and_the_active_limit_counts_every_task(alice, key, settings):
    """A run of four variations is one submit against the per-minute rate, but four tasks
    against the active-task limit."""
    settings.SUBMIT_RATE_PER_MINUTE = 3
    for _ in range(3):
        outcome = submit_order(alice, Order(items=tuple(OrderItem(CAT, key) for _ in range(4))))
        assert len(outcome.tasks) == 4 and len({t.run_id for t in outcome.tasks}) == 1
    with pytest.raises(SubmitRefused) as refusal:
        submit_order(alice, Order(items=(OrderItem(CAT, key),)))
    assert refusal.value.code == "rate_limited"
    assert "You have submitted 3 times in the last minute" in refusal.value.message
    settings.SUBMIT_RATE_PER_MINUTE = 100
    Quota.objects.create(user=alice, max_active_tasks=14)
    with pytest.raises(SubmitRefused) as refusal:
        submit_order(alice, Order(items=tuple(OrderItem(CAT, key) for _ in range(3))))
    assert refusal.value.code == "quota"
    assert "You have 12 active tasks and this adds 3; your limit is 14." in refusal.value.message
    assert Task.objects.count() == 12


def test_a_repeated_order_token_returns_every_task_it_made(alice, key):
    token = uuid.uuid4()
    order = Order(items=(OrderItem(CAT, key), OrderItem(CAT, key)), token=token)
    first = submit_order(alice, order)
    again = submit_order(alice, order)
    assert not again.created
    assert [t.pk for t in again.tasks] == [t.pk for t in first.tasks]
    assert debits(alice) == 2


def png(color: str = "red") -> SimpleUploadedFile:
    buffer = io.BytesIO()
    Image.new("RGB", (80, 80), color).save(buffer, "PNG")
    return SimpleUploadedFile("ref.png", buffer.getvalue(), content_type="image/png")


def create_with_image(client, key, **fields):
    data = {
        "model": "omnivideo/nano-banana-2",
        "prompt": "a cat like this one",
        "visibility": "team",
        "form_token": str(uuid.uuid4()),
        "key": str(key.code),
        "reference_files": [png()],
    }
    data.update(fields)
    return client.post("/create/", data)


def test_retry_sends_copies_of_the_same_reference_images(member, alice, key):
    """RELIABILITY 26: Try again keeps the task's reference images, as new copies."""
    assert create_with_image(member, key).status_code == 302
    task = Task.objects.get()
    old = ReferenceImage.objects.get(task=task)
    fail_task(task, actor="test", reason="no")
    retry(member, task)
    new = Task.objects.exclude(pk=task.pk).get()
    copy = ReferenceImage.objects.get(task=new)
    assert copy.token != old.token
    assert copy.file.read() == old.file.read()
    sent = new.params["reference_images"]
    assert len(sent) == 1 and sent[0].endswith(f"/ref/{copy.token}")


def test_a_refused_submit_stores_no_reference_image(member, alice, key, tmp_path):
    ledger.deduct(alice, 1000, by=alice, reason="spent elsewhere")
    response = create_with_image(member, key)
    assert response.status_code == 200
    assert "your balance is 0" in response.content.decode()
    assert ReferenceImage.objects.count() == 0
    stored = tmp_path / "references"
    assert not stored.exists() or not any(stored.iterdir())


def test_cheap_refusals_come_before_any_image_is_decoded(member, alice, key, monkeypatch):
    """RELIABILITY 30: the rate limit, key and balance refuse before a pixel is read."""
    from PIL import ImageFile

    def no_decoding(self):
        raise AssertionError("an image was decoded before the cheap checks refused the submit")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    ledger.deduct(alice, 1000, by=alice, reason="spent elsewhere")
    response = create_with_image(member, key)
    assert "your balance is 0" in response.content.decode()
    assert Task.objects.count() == 0


def test_reference_images_live_only_as_long_as_their_task_needs_them(member, alice, key):
    """RELIABILITY 31: the public link works while the task is active, with no caching; it
    answers 404 once the task has ended, and deleting the task deletes the image."""
    assert create_with_image(member, key).status_code == 302
    task = Task.objects.get()
    image = ReferenceImage.objects.get(task=task)
    link = f"/ref/{image.token}"
    gateway = Client()  # anonymous, like a gateway
    answer = gateway.get(link)
    assert answer.status_code == 200
    assert answer["Cache-Control"] == "private, no-store"
    fail_task(task, actor="test", reason="The gateway said no.")
    assert gateway.get(link).status_code == 404
    stored = image.file.name
    assert image.file.storage.exists(stored)
    assert member.post(f"/t/{task.code}/delete").status_code == 302
    assert not ReferenceImage.objects.filter(pk=image.pk).exists()
    assert not image.file.storage.exists(stored)
