"""The Create page: model fields, the live price, submitting, reference images and reuse."""

import io
import re
import uuid
from html.parser import HTMLParser

import pytest
from django.test import Client
from django.urls import reverse
from PIL import Image

from accounts import ledger
from accounts.models import LedgerEntry, ProviderKey
from generations import providers
from generations.models import ModelPrice, ReferenceImage, Task
from generations.providers import GenerationRequest, catalog
from generations.services import submit_task

pytestmark = pytest.mark.django_db

CREATE = "/create/"
FIELDS = "/create/fields"
PRICE = "/create/price"
HX = {"HTTP_HX_REQUEST": "true"}


class Page(HTMLParser):
    """The form controls of a page: each select's options, inputs and textareas by name."""

    def __init__(self, html: str):
        super().__init__()
        self.selects: dict[str, list[str]] = {}
        self.selected: dict[str, str] = {}
        self.groups: dict[str, list[str]] = {}
        self.inputs: dict[str, dict] = {}
        self.textareas: dict[str, dict] = {}
        self.ids: set[str] = set()
        self._select = self._group = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "select":
            self._select = attrs["name"]
            self.selects[self._select] = []
        elif tag == "optgroup":
            self._group = attrs["label"]
            self.groups[self._group] = []
        elif tag == "option" and self._select:
            self.selects[self._select].append(attrs["value"])
            if "selected" in attrs:
                self.selected[self._select] = attrs["value"]
            if self._group:
                self.groups[self._group].append(attrs["value"])
        elif tag == "input" and "name" in attrs:
            self.inputs.setdefault(attrs["name"], attrs)
        elif tag == "textarea":
            self.textareas[attrs["name"]] = attrs

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None
        elif tag == "optgroup":
            self._group = None


def make_key(owner, provider="apimart", label="Mine", **fields) -> ProviderKey:
    key = ProviderKey(provider=provider, label=label, owner=owner, **fields)
    key.set_secret(f"sk-{provider}-test-0001")
    key.save()
    return key


def png(width=96, height=72, fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 90)).save(buffer, fmt)
    return buffer.getvalue()


def upload(name: str, data: bytes, content_type="image/png"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data, content_type=content_type)


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.PUBLIC_URL = ""
    return tmp_path


@pytest.fixture
def funded(alice, carol):
    ledger.grant(alice, 1000, by=carol, reason="welcome")
    alice.refresh_from_db()
    return alice


@pytest.fixture
def as_alice(client, funded):
    client.force_login(funded)
    return client


@pytest.fixture
def keys(funded):
    return {provider: make_key(funded, provider) for provider in providers.REGISTRY}


def form_data(key, **overrides) -> dict:
    spec = catalog.get("apimart", "Omni-Flash-Ext")
    data = {
        "model": spec.key,
        "prompt": "A red fox in the snow",
        "duration": "6",
        "resolution": "720p",
        "aspect_ratio": "16:9",
        "reference_urls": "",
        "key": str(key.code),
        "visibility": "team",
        "form_token": str(uuid.uuid4()),
    }
    data.update(overrides)
    return {name: value for name, value in data.items() if value is not None}


def charged(user) -> tuple[int, int]:
    user.refresh_from_db()
    return user.credit_balance, LedgerEntry.objects.filter(user=user).count()


def text(response) -> str:
    return response.content.decode()


# --- the page ---------------------------------------------------------------------------------


def test_it_lists_every_catalog_model_grouped_by_gateway(as_alice, keys):
    response = as_alice.get(CREATE)
    assert response.status_code == 200
    page = Page(text(response))
    assert page.selects["model"] == [spec.key for spec in catalog.MODELS]
    for provider, gateway in providers.REGISTRY.items():
        assert page.groups[gateway.name] == [s.key for s in catalog.for_provider(provider)]
    assert "Sora · video" in text(response)
    assert "Nano Banana 2 · image" in text(response)
    assert page.selected["model"] == catalog.MODELS[0].key
    assert catalog.MODELS[0].summary in text(response)
    assert 'id="task-cards"' in text(response)
    assert "Show fields for this model" in text(response)


def test_it_shows_the_fields_of_the_model_in_the_address(as_alice, keys):
    page = Page(text(as_alice.get(CREATE, {"model": "apimart/Omni-Flash-Ext"})))
    assert page.selected["model"] == "apimart/Omni-Flash-Ext"
    assert page.selects["duration"] == ["4", "6", "8", "10"]
    assert "reference_files" in page.inputs


def test_the_page_says_the_simulator_is_on(as_alice, keys, settings):
    settings.SIMULATOR_ENABLED = True
    assert "Simulated gateways are on" in text(as_alice.get(CREATE))
    settings.SIMULATOR_ENABLED = False
    assert "Simulated gateways are on" not in text(as_alice.get(CREATE))


@pytest.mark.parametrize("spec", catalog.MODELS, ids=lambda s: s.key)
def test_the_fields_partial_offers_exactly_what_the_model_accepts(as_alice, keys, spec):
    response = as_alice.get(FIELDS, {"model": spec.key}, **HX)
    assert response.status_code == 200
    html = text(response)
    page = Page(html)
    expected = {
        "duration": [str(d) for d in spec.durations],
        "resolution": list(spec.resolutions),
        "aspect_ratio": list(spec.aspect_ratios),
    }
    defaults = {
        "duration": spec.default_duration,
        "resolution": spec.default_resolution,
        "aspect_ratio": spec.default_aspect_ratio,
    }
    for name, values in expected.items():
        if values:
            assert page.selects[name] == values
            assert page.selected.get(name, values[0]) == str(defaults[name])
        else:
            assert name not in page.selects
    if spec.accepts_images:
        files = page.inputs["reference_files"]
        assert files["type"] == "file"
        assert "multiple" in files
        assert files["accept"] == "image/png,image/jpeg,image/webp"
        assert "reference_urls" in page.textareas
        counts = ", ".join(str(n) for n in spec.image_counts[:-1])
        assert f"takes {counts} or {spec.image_counts[-1]} reference images" in html
    else:
        assert "reference_files" not in page.inputs
        assert "reference_urls" not in page.textareas
    assert page.selects["key"] == [str(keys[spec.provider].code)]
    assert spec.summary in html
    assert "Costs " in html
    assert 'id="model-fields"' in html


def test_the_apimart_fields_say_zero_one_or_three_images(as_alice, keys):
    assert "takes 0, 1 or 3 reference images" in text(
        as_alice.get(FIELDS, {"model": "apimart/Omni-Flash-Ext"})
    )


def test_changing_the_model_keeps_choices_that_still_fit(as_alice, keys):
    chosen = {
        "model": "omniakey/kling-1.5",
        "duration": "8",
        "resolution": "720p",
        "aspect_ratio": "4:3",
        "visibility": "private",
    }
    html = text(as_alice.get(FIELDS, chosen))
    page = Page(html)
    assert page.selected["duration"] == "8"
    assert page.selected["resolution"] == "720p"
    assert page.selected.get("aspect_ratio", "16:9") == "16:9"
    assert re.search(r'<input[^>]*value="private"[^>]*checked', html)


def test_without_javascript_the_model_changes_with_a_button(as_alice, keys):
    data = form_data(keys["apimart"], model="omixa/sora", show_fields="1", prompt="kept words")
    response = as_alice.post(CREATE, data)
    assert response.status_code == 200
    page = Page(text(response))
    assert page.selected["model"] == "omixa/sora"
    assert page.selects["duration"] == ["4", "8", "12"]
    assert "kept words" in text(response)
    assert Task.objects.count() == 0


def test_without_a_key_it_links_to_the_keys_page_and_disables_submit(as_alice):
    html = text(as_alice.get(CREATE, {"model": "omixa/sora"}))
    assert "Add your own Omixa key under Keys</a>, or ask an admin to share one." in html
    assert reverse("accounts-keys") in html
    assert re.search(r'<button type="submit" class="button primary submit-button"\s+disabled', html)


def test_the_page_of_recent_tasks_takes_few_queries(
    as_alice, funded, keys, django_assert_max_num_queries
):
    for n in range(14):
        submit_task(
            funded, GenerationRequest("apimart", "Omni-Flash-Ext", f"fox {n}"), key=keys["apimart"]
        )
    with django_assert_max_num_queries(12):
        html = text(as_alice.get(CREATE))
    assert html.count('class="task-card ') == 12
    assert "fox 13" in html
    assert "fox 1<" not in html


# --- the price --------------------------------------------------------------------------------


def test_the_price_shows_the_quote_and_the_balance_after(as_alice, keys):
    response = as_alice.post(
        PRICE, {"model": "apimart/Omni-Flash-Ext", "duration": "10", "resolution": "1080p"}, **HX
    )
    assert response.status_code == 200
    # 8 credits a second × 10 s × 1.5 for 1080p
    assert "Costs 120 credits</strong> · your balance after: 880" in text(response)


def test_the_price_uses_the_defaults_for_empty_fields(as_alice, keys):
    html = text(as_alice.post(PRICE, {"model": "omniakey/sora"}))
    assert "Costs 75 credits" in html  # 10 × 5 s × 1.5 for the default 1080p


@pytest.mark.parametrize(
    "data",
    [
        {"model": "apimart/Omni-Flash-Ext", "duration": "7"},
        {"model": "apimart/Omni-Flash-Ext", "duration": "ten"},
        {"model": "apimart/Omni-Flash-Ext", "resolution": "8k"},
        {"model": "apimart/Omni-Flash-Ext", "aspect_ratio": "1:1"},
        {"model": "nobody/nothing"},
        {},
    ],
)
def test_the_price_is_a_neutral_note_for_invalid_input(as_alice, keys, data):
    response = as_alice.post(PRICE, data)
    assert response.status_code == 200
    assert "Costs" not in text(response)
    assert "price" in text(response).lower()


def test_the_price_says_when_a_model_has_no_price(as_alice, keys):
    ModelPrice.objects.filter(provider="omixa").delete()
    html = text(as_alice.post(PRICE, {"model": "omixa/sora", "duration": "8"}))
    assert "has no price yet" in html


def test_the_price_says_plainly_when_the_balance_is_too_low(client, alice, keys):
    client.force_login(alice)
    ledger.deduct(alice, 990, by=alice, reason="spent")
    html = text(client.post(PRICE, {"model": "omnivideo/seedance-2"}))
    assert "Costs 60 credits" in html
    assert "your balance is 10, so you need 50 more" in html


# --- submitting -------------------------------------------------------------------------------


def test_a_valid_submit_makes_one_task_with_one_debit_and_redirects(as_alice, funded, keys):
    balance, entries = charged(funded)
    response = as_alice.post(CREATE, form_data(keys["apimart"], visibility="private"))
    task = Task.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("generations-task", args=[task.code])
    assert charged(funded) == (balance - 48, entries + 1)
    assert task.credits_charged == 48
    assert task.visibility == Task.Visibility.PRIVATE
    assert task.params["duration"] == 6
    assert task.key == keys["apimart"]
    assert "Submitted" in text(as_alice.get(response["Location"]))


def test_an_htmx_submit_answers_with_a_fresh_form_and_the_new_card(as_alice, funded, keys):
    data = form_data(keys["apimart"], duration="8")
    response = as_alice.post(CREATE, data, **HX)
    assert response.status_code == 200
    task = Task.objects.get()
    html = text(response)
    assert html.lstrip().startswith('<form id="create-form"')
    page = Page(html)
    assert page.selected["model"] == "apimart/Omni-Flash-Ext"
    assert page.selected["duration"] == "8"
    assert page.inputs["form_token"]["value"] != data["form_token"]
    # The prompt stays for the next try (it used to be cleared; Clear empties it on request).
    assert "A red fox in the snow</textarea>" in html
    assert 'hx-swap-oob="afterbegin:#task-cards"' in html
    assert f'id="task-{task.code}"' in html
    assert "Submitted" in html
    assert "<html" not in html


def test_the_same_form_token_twice_makes_one_task(as_alice, funded, keys):
    data = form_data(keys["apimart"])
    first = as_alice.post(CREATE, data)
    second = as_alice.post(CREATE, data)
    task = Task.objects.get()
    assert first["Location"] == second["Location"] == reverse("generations-task", args=[task.code])
    assert charged(funded) == (1000 - 48, 2)
    again = as_alice.post(CREATE, data, **HX)
    assert "hx-swap-oob" not in text(again)
    assert Task.objects.count() == 1


@pytest.mark.parametrize(
    ("field", "overrides", "message"),
    [
        ("duration", {"duration": "7"}, "accepts 4, 6, 8 or 10 seconds; 7 s is not possible"),
        ("duration", {"duration": "abc"}, "Choose a duration in seconds"),
        ("resolution", {"resolution": "8k"}, "supports 720p, 1080p or 4k; &#x27;8k&#x27;"),
        ("aspect_ratio", {"aspect_ratio": "1:1"}, "aspect ratios 16:9 or 9:16"),
        ("prompt", {"prompt": "   "}, "Write a prompt"),
        ("prompt", {"prompt": "x" * 4001}, "The prompt is 4,001 characters long"),
    ],
)
def test_invalid_fields_are_explained_beside_them_and_nothing_is_charged(
    as_alice, funded, keys, field, overrides, message
):
    data = form_data(keys["apimart"], **overrides)
    before = charged(funded)
    for extra in ({}, HX):
        response = as_alice.post(CREATE, data, **extra)
        assert response.status_code == 200
        html = text(response)
        error = re.search(rf'<div id="id_{field}_error">(.*?)</div>', html, re.S)
        assert error, html
        assert message in error.group(1)
        assert f'aria-describedby="id_{field}' in html
        assert "Some fields need fixing" in html
        if field != "prompt":
            assert "A red fox in the snow</textarea>" in html
    assert charged(funded) == before
    assert Task.objects.count() == 0


def test_a_too_low_balance_is_refused_and_charges_nothing(client, alice, carol):
    ledger.grant(alice, 20, by=carol, reason="a little")
    key = make_key(alice)
    client.force_login(alice)
    before = charged(alice)
    response = client.post(CREATE, form_data(key))
    assert response.status_code == 200
    html = text(response)
    assert "This costs 48 credits and your balance is 20." in html
    assert "A red fox in the snow</textarea>" in html
    assert charged(alice) == before
    assert Task.objects.count() == 0


def test_another_members_key_is_a_field_error_and_charges_nothing(as_alice, funded, bob, keys):
    bobs = make_key(bob, label="Bob's")
    before = charged(funded)
    html = text(as_alice.post(CREATE, form_data(bobs)))
    assert "Choose one of your active keys for APIMart" in html
    assert "Bob&#x27;s" not in html
    assert charged(funded) == before
    assert Task.objects.count() == 0


def test_a_disabled_key_is_a_field_error_and_charges_nothing(as_alice, funded, keys):
    backup = make_key(funded, label="Backup")
    key = keys["apimart"]
    ProviderKey.objects.filter(pk=key.pk).update(is_disabled=True)
    before = charged(funded)
    html = text(as_alice.post(CREATE, form_data(key)))
    error = re.search(r'<div id="id_key_error">(.*?)</div>', html, re.S)
    assert "Choose one of your active keys for APIMart" in error.group(1)
    assert Page(html).selects["key"] == [str(backup.code)]
    assert charged(funded) == before
    assert Task.objects.count() == 0


def test_without_any_usable_key_the_submit_is_refused(as_alice, funded, keys):
    ProviderKey.objects.update(is_disabled=True)
    html = text(as_alice.post(CREATE, form_data(keys["apimart"])))
    assert "Add your own APIMart key under Keys" in html
    assert re.search(r'<div id="id_key_error">.*Choose one of your active keys', html, re.S)
    assert Task.objects.count() == 0


def test_a_team_key_shared_with_the_member_can_pay(as_alice, funded, keys):
    team = make_key(None, label="Studio")
    team.allowed_users.add(funded)
    page = Page(text(as_alice.get(CREATE, {"model": "apimart/Omni-Flash-Ext"})))
    assert page.selects["key"] == [str(keys["apimart"].code), str(team.code)]
    as_alice.post(CREATE, form_data(team))
    assert Task.objects.get().key == team


# --- reference images -------------------------------------------------------------------------


def test_apimart_refuses_two_reference_urls(as_alice, funded, keys):
    urls = "https://example.com/a.png\nhttps://example.com/b.png"
    html = text(as_alice.post(CREATE, form_data(keys["apimart"], reference_urls=urls)))
    assert "takes 0, 1 or 3 reference images, not 2" in html
    assert "https://example.com/b.png" in html
    assert Task.objects.count() == 0
    assert charged(funded) == (1000, 1)


def test_apimart_takes_three_reference_urls(as_alice, keys):
    urls = "\n".join(f"https://example.com/{n}.png" for n in range(3))
    as_alice.post(CREATE, form_data(keys["apimart"], reference_urls=urls))
    assert Task.objects.get().params["reference_images"] == urls.split("\n")


def test_a_reference_line_that_is_not_a_web_address_is_refused(as_alice, keys):
    html = text(as_alice.post(CREATE, form_data(keys["apimart"], reference_urls="javascript:x")))
    assert "Address 1 is not a web address" in html
    assert Task.objects.count() == 0


@pytest.mark.parametrize(
    ("name", "data", "content_type"),
    [
        ("x.png", b"just some text, not a picture\n" * 20, "image/png"),
        (
            "logo.svg",
            b'<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100">'
            b"<script>alert(1)</script></svg>",
            "image/svg+xml",
        ),
        ("anim.gif", None, "image/gif"),
    ],
)
def test_an_upload_that_is_not_a_png_jpeg_or_webp_is_refused(
    as_alice, funded, keys, media, name, data, content_type
):
    if data is None:
        buffer = io.BytesIO()
        Image.new("RGB", (80, 80)).save(buffer, "GIF")
        data = buffer.getvalue()
    response = as_alice.post(
        CREATE, {**form_data(keys["apimart"]), "reference_files": upload(name, data, content_type)}
    )
    html = text(response)
    assert f"{name} is not a PNG, JPEG or WebP image." in html
    assert re.search(r'id="id_reference_files_error"', html)
    assert Task.objects.count() == 0
    assert ReferenceImage.objects.count() == 0
    assert charged(funded) == (1000, 1)
    assert not list(media.rglob("*.*"))


@pytest.mark.parametrize(("width", "height"), [(32, 100), (100, 63), (8193, 64)])
def test_an_image_too_small_or_too_large_is_refused(as_alice, keys, width, height):
    data = png(width, height)
    html = text(
        as_alice.post(
            CREATE, {**form_data(keys["apimart"]), "reference_files": upload("s.png", data)}
        )
    )
    assert f"s.png is {width}×{height} pixels" in html
    assert Task.objects.count() == 0


def test_an_image_over_ten_megabytes_is_refused(as_alice, keys):
    data = png() + b"\0" * (10 * 1024 * 1024)
    html = text(
        as_alice.post(
            CREATE, {**form_data(keys["apimart"]), "reference_files": upload("big.png", data)}
        )
    )
    assert "big.png is larger than 10 MB" in html
    assert Task.objects.count() == 0


def test_a_png_upload_goes_to_apimart_as_a_data_uri(as_alice, funded, keys, media):
    data = png()
    response = as_alice.post(
        CREATE, {**form_data(keys["apimart"]), "reference_files": upload("fox.png", data)}
    )
    assert response.status_code == 302
    task = Task.objects.get()
    assert len(task.params["reference_images"]) == 1
    assert task.params["reference_images"][0].startswith("data:image/png;base64,")
    image = ReferenceImage.objects.get()
    assert (image.user, image.content_type, image.width, image.height) == (
        funded,
        "image/png",
        96,
        72,
    )
    assert image.file.name == f"references/{image.token}.png"
    # The stored file is the upload written again (without metadata): the same picture.
    with Image.open(media / image.file.name) as stored, Image.open(io.BytesIO(data)) as sent:
        assert (stored.format, stored.size, stored.tobytes()) == ("PNG", sent.size, sent.tobytes())


def test_an_upload_goes_to_omni_video_as_a_public_url_that_serves_it(
    as_alice, keys, settings, media
):
    settings.PUBLIC_URL = "https://studio.example.com"
    data = png(fmt="JPEG")
    response = as_alice.post(
        CREATE,
        {
            "model": "omnivideo/seedance-2",
            "prompt": "the fox runs",
            "aspect_ratio": "9:16",
            "key": str(keys["omnivideo"].code),
            "visibility": "team",
            "form_token": str(uuid.uuid4()),
            "reference_files": upload("fox.jpg", data, "image/jpeg"),
        },
    )
    assert response.status_code == 302, text(response)
    task = Task.objects.get()
    image = ReferenceImage.objects.get()
    url = f"https://studio.example.com/ref/{image.token}"
    assert task.params["reference_images"] == [url]
    assert len(image.token) >= 32

    served = Client().get(f"/ref/{image.token}")  # anonymous, like a gateway
    assert served.status_code == 200
    assert served["Content-Type"] == "image/jpeg"
    assert served["X-Content-Type-Options"] == "nosniff"
    assert b"".join(served.streaming_content) == (media / image.file.name).read_bytes()
    assert Client().get("/ref/not-a-token").status_code == 404


def test_an_upload_for_a_url_gateway_without_a_public_address_is_refused(
    as_alice, funded, keys, media
):
    response = as_alice.post(
        CREATE,
        {
            "model": "omnivideo/nano-banana-2",
            "prompt": "a fox",
            "aspect_ratio": "1:1",
            "key": str(keys["omnivideo"].code),
            "visibility": "team",
            "form_token": str(uuid.uuid4()),
            "reference_files": upload("fox.png", png()),
        },
    )
    html = text(response)
    assert "Uploads need the site&#x27;s public address (OMNIWEB_PUBLIC_URL)" in html
    assert re.search(r'id="id_reference_files_error">.*OMNIWEB_PUBLIC_URL', html, re.S)
    assert Task.objects.count() == 0
    assert ReferenceImage.objects.count() == 0
    assert not list(media.rglob("*.*"))
    assert charged(funded) == (1000, 1)


def test_a_refused_submit_stores_no_upload(client, alice, carol, media):
    ledger.grant(alice, 5, by=carol, reason="too little")
    key = make_key(alice)
    client.force_login(alice)
    client.post(CREATE, {**form_data(key), "reference_files": upload("fox.png", png())})
    assert Task.objects.count() == 0
    assert ReferenceImage.objects.count() == 0
    assert not list(media.rglob("*.*"))


# --- reuse ------------------------------------------------------------------------------------


def test_reuse_prefills_from_the_members_own_task(as_alice, funded, keys):
    request = GenerationRequest(
        "apimart",
        "Omni-Flash-Ext",
        "the old prompt",
        duration=10,
        resolution="4k",
        aspect_ratio="9:16",
        reference_images=("https://example.com/ref.png",),
    )
    task, _ = submit_task(funded, request, key=keys["apimart"])
    html = text(as_alice.get(CREATE, {"from": str(task.code)}))
    page = Page(html)
    assert page.selected["model"] == "apimart/Omni-Flash-Ext"
    assert page.selected["duration"] == "10"
    assert page.selected["resolution"] == "4k"
    assert page.selected["aspect_ratio"] == "9:16"
    assert "the old prompt</textarea>" in html
    assert "https://example.com/ref.png</textarea>" in html


def test_reuse_does_not_copy_uploaded_images(as_alice, funded, keys):
    request = GenerationRequest(
        "apimart", "Omni-Flash-Ext", "uploaded", reference_images=("data:image/png;base64,AAAA",)
    )
    task, _ = submit_task(funded, request, key=keys["apimart"])
    html = text(as_alice.get(CREATE, {"from": str(task.code)}))
    assert "base64" not in html


def test_reuse_ignores_another_members_private_task(client, bob, carol, funded):
    ledger.grant(bob, 500, by=carol, reason="x")
    key = make_key(bob)
    task, _ = submit_task(
        bob, GenerationRequest("apimart", "Omni-Flash-Ext", "bob's secret idea"), key=key
    )
    Task.objects.filter(pk=task.pk).update(visibility=Task.Visibility.PRIVATE)
    client.force_login(funded)
    response = client.get(CREATE, {"from": str(task.code)})
    assert response.status_code == 200
    html = text(response)
    assert "secret idea" not in html
    assert "That task cannot be copied" in html
    assert client.get(CREATE, {"from": "not-a-code"}).status_code == 200


def test_reuse_copies_a_teammates_team_task(client, bob, carol, funded):
    ledger.grant(bob, 500, by=carol, reason="x")
    key = make_key(bob)
    task, _ = submit_task(bob, GenerationRequest("apimart", "Omni-Flash-Ext", "shared"), key=key)
    client.force_login(funded)
    assert "shared</textarea>" in text(client.get(CREATE, {"from": str(task.code)}))


# --- safety -----------------------------------------------------------------------------------


def test_a_script_prompt_is_escaped_when_shown_again(as_alice, keys):
    prompt = "<script>alert(1)</script>"
    html = text(as_alice.post(CREATE, form_data(keys["apimart"], prompt=prompt, duration="7")))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert(1)" not in html


def test_a_post_without_the_csrf_token_is_refused(funded, keys):
    client = Client(enforce_csrf_checks=True)
    client.force_login(funded)
    assert client.post(CREATE, form_data(keys["apimart"])).status_code == 403
    assert client.post(PRICE, {"model": "omniakey/sora"}).status_code == 403
    assert Task.objects.count() == 0


def test_anonymous_visitors_are_sent_to_log_in(client):
    for path in (CREATE, FIELDS, f"{CREATE}?model=omniakey/sora"):
        response = client.get(path)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))
    response = client.post(PRICE, {"model": "omniakey/sora"})
    assert response.status_code == 302
    assert Task.objects.count() == 0


def test_a_submit_wakes_the_card_poller_once_the_new_card_is_on_the_page(client, alice, carol):
    from accounts import ledger
    from accounts.models import ProviderKey

    ledger.grant(alice, 100, by=carol, reason="welcome")
    key = ProviderKey(provider="apimart", label="Mine", owner=alice)
    key.set_secret("sk-test-0001")
    key.save()
    client.force_login(alice)
    page = client.get("/create/?model=apimart/Omni-Flash-Ext")
    token = page.context["form"]["form_token"].value()
    response = client.post(
        "/create/",
        {
            "model": "apimart/Omni-Flash-Ext",
            "prompt": "a heron",
            "duration": "4",
            "resolution": "720p",
            "aspect_ratio": "16:9",
            "key": str(key.code),
            "visibility": "team",
            "form_token": str(token),
        },
        HTTP_HX_REQUEST="true",
    )
    assert response["HX-Trigger-After-Settle"] == "tasks-changed"
    assert 'name="watch"' in response.content.decode()
