"""Reference images that stay for the next try: after a submit, on Reuse, and from a result.

The Create form carries stored images by name (a hidden field per image, checked on every post
against the tasks the member may see), shows them as thumbnails from a member-only address,
and sends new copies of them with the next submit. Another member's private task answers 404
at every new address and its images cannot be carried.
"""

import io
import re
import uuid

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.test import Client
from django.utils import timezone
from PIL import Image, PngImagePlugin

from accounts import ledger
from accounts.models import LedgerEntry
from generations.forms import find_carried
from generations.models import ReferenceImage, Result, Task, quote
from generations.providers import GenerationRequest, catalog
from generations.services import Order, OrderItem, SubmitRefused, fail_task, submit_order
from tests.test_create import HX, Page, make_key, png, upload

pytestmark = pytest.mark.django_db

CREATE = "/create/"


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.PUBLIC_URL = "https://studio.example.com"
    return tmp_path


@pytest.fixture
def keys(alice, bob, carol):
    for user in (alice, bob):
        ledger.grant(user, 1000, by=carol, reason="welcome")
    return {
        (user.username, provider): make_key(user, provider)
        for user in (alice, bob)
        for provider in ("apimart", "omnivideo")
    }


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def flash(key, **fields) -> dict:
    """An Omni Flash Ext form (6 s at 720p: 48 credits, images or not)."""
    data = {
        "model": "apimart/Omni-Flash-Ext",
        "prompt": "A red fox in the snow",
        "duration": "6",
        "resolution": "720p",
        "aspect_ratio": "16:9",
        "reference_urls": "",
        "key": str(key.code),
        "visibility": "team",
        "form_token": str(uuid.uuid4()),
    }
    data.update(fields)
    return data


def banana(key, **fields) -> dict:
    """A Nano Banana 2 form (one reference image at most, sent as a link)."""
    data = {
        "model": "omnivideo/nano-banana-2",
        "prompt": "a teapot like this one",
        "aspect_ratio": "1:1",
        "key": str(key.code),
        "visibility": "team",
        "form_token": str(uuid.uuid4()),
    }
    data.update(fields)
    return data


def sent_with_image(client, key, **fields) -> Task:
    """A task submitted through Create with one uploaded PNG."""
    data = {**flash(key, **fields), "reference_files": upload("fox.png", png())}
    response = client.post(CREATE, data)
    assert response.status_code == 302, response.content.decode()
    return Task.objects.get(code=response["Location"].split("/")[-2])


def carried_values(html: str) -> list[str]:
    return re.findall(r'<input type="hidden" name="carried" value="([^"]+)">', html)


def thumbnails(html: str) -> list[str]:
    return re.findall(r'<li class="carried-image">.*?<img src="([^"]+)"', html, re.S)


def debits(user) -> list[int]:
    return list(
        LedgerEntry.objects.filter(user=user, kind="debit")
        .order_by("pk")
        .values_list("amount", flat=True)
    )


def image_result(user, *, visibility=Task.Visibility.TEAM, prompt="a turquoise teapot"):
    """A finished Nano Banana 2 task whose stored result is a PNG carrying a text chunk."""
    picture = Image.new("RGB", (160, 120), (30, 160, 200))
    picture.paste((250, 200, 0), (0, 0, 80, 120))
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "made by the gateway")
    buffer = io.BytesIO()
    picture.save(buffer, "PNG", pnginfo=info)
    task = Task.objects.create(
        user=user,
        provider="omnivideo",
        model="nano-banana-2",
        kind="image",
        prompt=prompt,
        params={"aspect_ratio": "4:3", "reference_images": []},
        key_label="Site",
        state=Task.State.SUCCEEDED,
        visibility=visibility,
        finished_at=timezone.now(),
        price_unit="task",
        price_credits_per_unit=10,
        price_units=1,
        price_multiplier=1,
        credits_charged=10,
    )
    name = default_storage.save("results/teapot.png", ContentFile(buffer.getvalue()))
    thumb = io.BytesIO()
    picture.save(thumb, "JPEG")
    poster = default_storage.save("posters/teapot.jpg", ContentFile(thumb.getvalue()))
    Result.objects.create(
        task=task,
        file=name,
        poster=poster,
        content_type="image/png",
        size=len(buffer.getvalue()),
        width=160,
        height=120,
    )
    return task, picture


def video_result(user, *, provider="omniakey", model="sora"):
    """A finished video task with a stored JPEG poster."""
    task = Task.objects.create(
        user=user,
        provider=provider,
        model=model,
        kind="video",
        prompt="a heron at dawn",
        params={"duration": 5},
        key_label="Mine",
        state=Task.State.SUCCEEDED,
        finished_at=timezone.now(),
        price_unit="task",
        price_credits_per_unit=10,
        price_units=1,
        price_multiplier=1,
        credits_charged=10,
    )
    frame = Image.new("RGB", (320, 180), (90, 20, 140))
    buffer = io.BytesIO()
    frame.save(buffer, "JPEG")
    Result.objects.create(
        task=task,
        file=default_storage.save("results/heron.mp4", ContentFile(b"\x00\x00\x00\x18ftypmp42")),
        poster=default_storage.save("posters/heron.jpg", ContentFile(buffer.getvalue())),
        content_type="video/mp4",
        size=12,
        width=320,
        height=180,
        duration=5.0,
    )
    return task, frame


def stored_pixels(reference: ReferenceImage) -> Image.Image:
    with reference.file.open("rb") as handle:
        image = Image.open(io.BytesIO(handle.read()))
        image.load()
    return image


# --- after a submit ---------------------------------------------------------------------------


def test_after_a_submit_the_prompt_and_the_image_stay_as_a_carried_thumbnail(alice, keys):
    client = signed_in(alice)
    data = {**flash(keys["alice", "apimart"]), "reference_files": upload("fox.png", png())}
    html = client.post(CREATE, data, **HX).content.decode()
    task = Task.objects.get()
    assert "A red fox in the snow</textarea>" in html
    assert carried_values(html) == [f"reference:{task.code}:0"]
    assert thumbnails(html) == [f"/t/{task.code}/reference/0"]
    assert re.search(r'alt="Reference image 1 of “A red fox in the snow”"', html)
    assert 'name="remove_carried"' in html
    # The thumbnail answers the member, long after the gateway's public link has closed.
    fail_task(task, actor="test", reason="no")
    shown = client.get(f"/t/{task.code}/reference/0")
    assert shown.status_code == 200 and shown["Content-Type"] == "image/png"
    assert Client().get(f"/ref/{task.references.get().token}").status_code == 404


def test_generating_again_sends_a_new_copy_of_the_same_image_and_charges_the_same(alice, keys):
    client = signed_in(alice)
    key = keys["alice", "apimart"]
    first = sent_with_image(client, key)
    old = first.references.get()
    response = client.post(CREATE, flash(key, carried=f"reference:{first.code}:0"))
    assert response.status_code == 302, response.content.decode()
    second = Task.objects.exclude(pk=first.pk).get()
    copy = second.references.get()
    assert copy.token != old.token and copy.file.name != old.file.name
    assert copy.user == alice and copy.size == old.size
    with copy.file.open("rb") as a, old.file.open("rb") as b:
        assert a.read() == b.read()
    assert second.params["reference_images"] == first.params["reference_images"]  # inline data
    # One debit each, the same as a submit without images: a carried image costs nothing.
    assert debits(alice) == [-48, -48]
    plain = client.post(CREATE, flash(key))
    assert plain.status_code == 302
    assert debits(alice) == [-48, -48, -48]


def test_remove_leaves_a_carried_image_out_of_the_next_submit(alice, keys):
    client = signed_in(alice)
    key = keys["alice", "apimart"]
    first = sent_with_image(client, key)
    value = f"reference:{first.code}:0"
    # A form sent back with a mistake keeps the image, still ticked to leave out.
    html = client.post(
        CREATE, flash(key, carried=value, remove_carried=value, duration="7"), **HX
    ).content.decode()
    assert carried_values(html) == [value]
    assert f'name="remove_carried" value="{value}" checked' in html
    client.post(CREATE, flash(key, carried=value, remove_carried=value))
    second = Task.objects.exclude(pk=first.pk).get()
    assert second.references.count() == 0
    assert second.params["reference_images"] == []
    client.post(CREATE, flash(key, carried=value))  # not ticked: sent
    third = Task.objects.exclude(pk__in=[first.pk, second.pk]).get()
    assert third.references.count() == 1


def test_carried_and_new_images_count_together_against_the_model(alice, keys, media):
    client = signed_in(alice)
    key = keys["alice", "apimart"]
    first = sent_with_image(client, key)
    value = f"reference:{first.code}:0"
    stored = sorted(media.rglob("*.*"))
    # One carried and one new: two, which Omni Flash Ext does not take.
    refused = client.post(
        CREATE, {**flash(key, carried=value), "reference_files": [upload("a.png", png())]}
    ).content.decode()
    assert "takes 0, 1 or 3 reference images, not 2" in refused
    assert carried_values(refused) == [value]  # still carried, for the member to fix
    assert Task.objects.count() == 1 and sorted(media.rglob("*.*")) == stored
    assert debits(alice) == [-48]
    # One carried and two new: three, the fusion it takes; the carried one goes first.
    uploads = [upload("a.png", png(100, 80)), upload("b.png", png(120, 90))]
    response = client.post(CREATE, {**flash(key, carried=value), "reference_files": uploads})
    assert response.status_code == 302
    third = Task.objects.exclude(pk=first.pk).get()
    sizes = [(r.width, r.height) for r in third.references.order_by("id")]
    assert sizes == [(96, 72), (100, 80), (120, 90)]
    assert debits(alice) == [-48, -48]


def test_clear_empties_the_prompt_and_the_images_and_submits_nothing(alice, keys):
    client = signed_in(alice)
    key = keys["alice", "apimart"]
    first = sent_with_image(client, key)
    data = flash(
        key, carried=f"reference:{first.code}:0", reference_urls="https://example.com/a.png"
    )
    for extra in ({}, HX):
        html = client.post(CREATE, {**data, "duration": "10", "clear": "1"}, **extra).content
        html = html.decode()
        page = Page(html)
        assert "A red fox in the snow</textarea>" not in html
        assert re.search(r"<textarea[^>]*autofocus[^>]*>\s*</textarea>", html)
        assert "reference_urls" in page.textareas
        assert "https://example.com/a.png" not in html
        assert carried_values(html) == [] and "carried-image" not in html
        # The model and its settings stay.
        assert page.selected["model"] == "apimart/Omni-Flash-Ext"
        assert page.selected["duration"] == "10"
    assert Task.objects.count() == 1 and debits(alice) == [-48]


def test_without_javascript_changing_the_model_keeps_the_carried_images(alice, keys):
    client = signed_in(alice)
    first = sent_with_image(client, keys["alice", "apimart"])
    value = f"reference:{first.code}:0"
    html = client.post(
        CREATE,
        banana(keys["alice", "omnivideo"], carried=value, show_fields="1"),
    ).content.decode()
    assert Page(html).selected["model"] == "omnivideo/nano-banana-2"
    assert carried_values(html) == [value]
    # Through htmx the model's fields come from /create/fields, with the carried ones included.
    fields = client.get(
        "/create/fields", {"model": "omnivideo/seedance-2", "carried": value}, **HX
    ).content.decode()
    assert carried_values(fields) == [value]


def test_a_carried_image_goes_to_a_link_gateway_as_a_new_public_link(alice, keys):
    client = signed_in(alice)
    first = sent_with_image(client, keys["alice", "apimart"])
    response = client.post(
        CREATE, banana(keys["alice", "omnivideo"], carried=f"reference:{first.code}:0")
    )
    assert response.status_code == 302
    task = Task.objects.get(model="nano-banana-2")
    copy = task.references.get()
    assert task.params["reference_images"] == [f"https://studio.example.com/ref/{copy.token}"]
    assert Client().get(f"/ref/{copy.token}").status_code == 200


# --- reuse --------------------------------------------------------------------------------------


def test_the_task_page_shows_the_images_a_task_was_sent(alice, bob, keys):
    task = sent_with_image(signed_in(alice), keys["alice", "apimart"])
    for viewer in (alice, bob):  # bob: a teammate, on a team task
        html = signed_in(viewer).get(f"/t/{task.code}/").content.decode()
        assert 'id="references-heading">Reference images</h2>' in html
        assert f'<img src="/t/{task.code}/reference/0" alt="Reference image 1 of 1"' in html
    plain = Task.objects.create(
        user=alice,
        provider="apimart",
        model="Omni-Flash-Ext",
        kind="video",
        prompt="no images",
        key_label="x",
        price_unit="task",
        price_credits_per_unit=1,
        price_units=1,
        price_multiplier=1,
        credits_charged=1,
    )
    assert "Reference images" not in signed_in(alice).get(f"/t/{plain.code}/").content.decode()


def test_reuse_carries_the_images_and_keeps_pasted_addresses(alice, keys):
    client = signed_in(alice)
    task = sent_with_image(client, keys["alice", "apimart"], duration="10")
    html = client.get(CREATE, {"from": str(task.code)}).content.decode()
    assert "A red fox in the snow</textarea>" in html
    assert Page(html).selected["duration"] == "10"
    assert carried_values(html) == [f"reference:{task.code}:0"]
    assert thumbnails(html) == [f"/t/{task.code}/reference/0"]
    assert "base64" not in html  # the copy is carried by name, not as the data that went out


def test_a_teammate_may_reuse_a_team_tasks_images_as_copies_of_their_own(alice, bob, keys):
    task = sent_with_image(signed_in(bob), keys["bob", "apimart"])
    client = signed_in(alice)
    html = client.get(CREATE, {"from": str(task.code)}).content.decode()
    value = f"reference:{task.code}:0"
    assert carried_values(html) == [value]
    assert client.get(f"/t/{task.code}/reference/0").status_code == 200
    response = client.post(CREATE, flash(keys["alice", "apimart"], carried=value))
    assert response.status_code == 302
    mine = Task.objects.get(user=alice)
    copy = mine.references.get()
    assert copy.user == alice and copy.token != task.references.get().token
    assert debits(alice) == [-48] and debits(bob) == [-48]


# --- use as reference ---------------------------------------------------------------------------


def test_use_as_reference_carries_a_result_image_re_encoded_without_its_metadata(alice, keys):
    task, picture = image_result(alice)
    client = signed_in(alice)
    page = client.get(f"/t/{task.code}/").content.decode()
    link = f"/create/?carry=result:{task.code}:0"
    assert f'href="{link}">Use as reference</a>' in page
    html = client.get(link).content.decode()
    assert Page(html).selected["model"] == "omnivideo/nano-banana-2"
    assert carried_values(html) == [f"result:{task.code}:0"]
    assert thumbnails(html) == [f"/t/{task.code}/poster/0"]
    assert "The result of “a turquoise teapot”" in html
    response = client.post(
        CREATE, banana(keys["alice", "omnivideo"], carried=f"result:{task.code}:0")
    )
    assert response.status_code == 302, response.content.decode()
    new = Task.objects.get(model="nano-banana-2", state=Task.State.QUEUED)
    copy = new.references.get()
    assert (copy.content_type, copy.width, copy.height) == ("image/png", 160, 120)
    stored = stored_pixels(copy)
    assert stored.tobytes() == picture.tobytes()
    assert "Comment" not in stored.info  # written again, like an upload
    assert task.results.get().file.name != copy.file.name
    # Nano Banana 2's price, the same as without an image: nothing more for the copy.
    price = quote(catalog.with_defaults(GenerationRequest("omnivideo", "nano-banana-2", "x")))
    assert debits(alice) == [-price.total]


def test_use_as_reference_on_a_video_carries_its_poster_to_a_model_that_takes_images(alice):
    task, frame = video_result(alice)
    client = signed_in(alice)
    page = client.get(f"/t/{task.code}/").content.decode()
    link = f"/create/?carry=poster:{task.code}:0"
    assert f'href="{link}">Use poster as reference</a>' in page
    html = client.get(link).content.decode()
    # Sora takes no images: the first video model that does is chosen.
    assert Page(html).selected["model"] == "omnivideo/seedance-2"
    assert carried_values(html) == [f"poster:{task.code}:0"]
    assert thumbnails(html) == [f"/t/{task.code}/poster/0"]


def test_a_video_result_itself_cannot_be_carried(alice):
    task, _ = video_result(alice, provider="apimart", model="Omni-Flash-Ext")
    client = signed_in(alice)
    html = client.get(CREATE, {"carry": f"result:{task.code}:0"}).content.decode()
    assert carried_values(html) == []
    assert "An image in the address cannot be used" in html


def test_a_result_whose_file_was_lost_is_refused_and_nothing_is_charged(alice, keys):
    task, _ = image_result(alice)
    default_storage.delete(task.results.get().file.name)
    response = signed_in(alice).post(
        CREATE, banana(keys["alice", "omnivideo"], carried=f"result:{task.code}:0")
    )
    assert response.status_code == 200
    assert "The earlier result image is no longer stored" in response.content.decode()
    assert Task.objects.count() == 1 and ReferenceImage.objects.count() == 0
    assert debits(alice) == []


def test_an_order_with_a_stored_result_is_checked_like_an_upload(alice, keys):
    task, _ = image_result(alice)
    result = task.results.get()
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40)).save(buffer, "PNG")
    result.file.save("results/small.png", ContentFile(buffer.getvalue()))
    image = find_carried(alice, f"result:{task.code}:0")
    request = GenerationRequest("omnivideo", "nano-banana-2", "tiny")
    order = Order(items=(OrderItem(request, keys["alice", "omnivideo"]),), images=(image.source,))
    with pytest.raises(SubmitRefused) as refusal:
        submit_order(alice, order)
    assert refusal.value.errors == {
        "reference_images": [
            "The earlier result image is 40×40 pixels; each side must be 64 to 8,192 pixels."
        ]
    }
    assert debits(alice) == [] and ReferenceImage.objects.count() == 0


# --- who may carry what (404 everywhere) --------------------------------------------------------


@pytest.fixture
def private(bob, keys):
    """Bob's private task with a reference image, and his private image result."""
    task = sent_with_image(signed_in(bob), keys["bob", "apimart"], visibility="private")
    result, _ = image_result(bob, visibility=Task.Visibility.PRIVATE, prompt="bob's secret")
    return task, result


def test_another_members_private_images_answer_404_at_every_new_address(alice, private):
    task, result = private
    client = signed_in(alice)
    for path in (
        f"/t/{task.code}/reference/0",
        f"/t/{result.code}/file/0",
        f"/t/{result.code}/poster/0",
        f"/t/{task.code}/",
    ):
        assert client.get(path).status_code == 404, path
    assert signed_in(task.user).get(f"/t/{task.code}/reference/0").status_code == 200
    assert signed_in(task.user).get(f"/t/{task.code}/reference/1").status_code == 404
    assert client.get(f"/t/{uuid.uuid4()}/reference/0").status_code == 404
    anonymous = Client().get(f"/t/{task.code}/reference/0")
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]


def test_another_members_private_images_cannot_be_carried(alice, keys, private, media):
    task, result = private
    client = signed_in(alice)
    values = [
        f"reference:{task.code}:0",
        f"result:{result.code}:0",
        f"poster:{result.code}:0",
    ]
    for value in values:
        page = client.get(CREATE, {"carry": value}).content.decode()
        assert carried_values(page) == [] and "cannot be used" in page
        stored = sorted(media.rglob("*.*"))
        html = client.post(CREATE, flash(keys["alice", "apimart"], carried=value)).content
        html = html.decode()
        assert "is no longer available" in html
        assert carried_values(html) == [] and str(task.code) not in html
        assert str(result.code) not in html and "secret" not in html
        assert sorted(media.rglob("*.*")) == stored
    reuse = client.get(CREATE, {"from": str(task.code)}).content.decode()
    assert "That task cannot be copied" in reuse and carried_values(reuse) == []
    assert not Task.objects.filter(user=alice).exists() and debits(alice) == []


@pytest.mark.parametrize(
    "value",
    [
        "reference:not-a-code:0",
        "reference:{code}:-1",
        "reference:{code}:5",
        "reference:{code}",
        "elsewhere:{code}:0",
        "result:{code}:0",  # the task has no result
        "../../etc/passwd",
    ],
)
def test_a_tampered_carried_value_is_refused_and_nothing_is_charged(alice, keys, value):
    client = signed_in(alice)
    key = keys["alice", "apimart"]
    task = sent_with_image(client, key)
    html = client.post(CREATE, flash(key, carried=value.format(code=task.code))).content.decode()
    assert "is no longer available" in html
    assert Task.objects.count() == 1 and debits(alice) == [-48]


def test_a_deleted_tasks_images_cannot_be_carried_any_more(alice, keys):
    client = signed_in(alice)
    key = keys["alice", "apimart"]
    task = sent_with_image(client, key)
    fail_task(task, actor="test", reason="no")
    assert client.post(f"/t/{task.code}/delete").status_code == 302
    value = f"reference:{task.code}:0"
    assert client.get(f"/t/{task.code}/reference/0").status_code == 404
    html = client.post(CREATE, flash(key, carried=value)).content.decode()
    assert "is no longer available" in html
    assert Task.objects.count() == 1


def test_a_task_made_private_stops_its_images_being_carried_by_teammates(alice, bob, keys):
    task = sent_with_image(signed_in(bob), keys["bob", "apimart"])
    client = signed_in(alice)
    value = f"reference:{task.code}:0"
    assert carried_values(client.get(CREATE, {"from": str(task.code)}).content.decode())
    Task.objects.filter(pk=task.pk).update(visibility=Task.Visibility.PRIVATE)
    html = client.post(CREATE, flash(keys["alice", "apimart"], carried=value)).content.decode()
    assert "is no longer available" in html
    assert client.get(f"/t/{task.code}/reference/0").status_code == 404
    assert not Task.objects.filter(user=alice).exists()
