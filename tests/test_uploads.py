"""Uploaded reference images: header-only checks, the pixel limit, and clean re-encoding."""

import base64
import io
import os
import tracemalloc
import uuid
from unittest import mock

import pytest
from django.conf import settings as django_settings
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile, TemporaryUploadedFile
from PIL import ExifTags, Image, ImageFile, PngImagePlugin

from accounts import ledger
from accounts.models import ProviderKey
from generations import services
from generations.forms import check_image
from generations.models import ReferenceImage, Task
from generations.providers import GenerationRequest, catalog

CREATE = "/create/"
SPEC = catalog.get("apimart", "Omni-Flash-Ext")
RED, BLUE = (255, 0, 0), (0, 0, 255)
# Pillow warns on opening an image above its limit; the check refuses it right after.
QUIET_BOMB_WARNING = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


def encoded_file(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def upload(name: str, data: bytes, content_type: str = "image/png") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type=content_type)


def huge_png() -> bytes:
    """An 8192×8192 PNG of a few kilobytes that decodes to 64 MB or more."""
    return encoded_file(Image.new("1", (8192, 8192)), "PNG")


def noisy_png(width: int, height: int) -> bytes:
    """A PNG that does not compress: its size is about its pixels' size."""
    return encoded_file(
        Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)), "PNG"
    )


def half_red(width: int = 120, height: int = 80) -> Image.Image:
    """Red on the left half, blue on the right: which way up it is shows."""
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width // 2, height))
    return image


def near(pixel, colour) -> bool:
    return all(abs(a - b) < 40 for a, b in zip(pixel, colour, strict=True))


@pytest.fixture
def no_decoding():
    """Fails the test if any image's pixels are read."""
    with mock.patch.object(
        ImageFile.ImageFile, "load", autospec=True, side_effect=AssertionError("decoded")
    ) as load:
        yield load


@pytest.fixture
def decoded() -> list:
    """The images whose pixels were read, in order; they are still read."""
    images = []
    real = ImageFile.ImageFile.load

    def load(image):
        if image.tile:  # pixels still to read; once read, load() only returns them
            images.append(image)
        return real(image)

    with mock.patch.object(ImageFile.ImageFile, "load", load):
        yield images


# --- the header check ---------------------------------------------------------------------------


@QUIET_BOMB_WARNING
def test_an_8192_square_png_is_refused_by_the_pixel_limit_without_decoding(no_decoding):
    """RELIABILITY 30: 67 megapixels in a file of a few kilobytes are refused from the header."""
    data = huge_png()
    assert len(data) < 100_000
    with pytest.raises(ValidationError) as refused:
        check_image(upload("huge.png", data))
    assert refused.value.messages == [
        "huge.png is 8192×8192 pixels (67.1 megapixels); images may have up to 40 megapixels. "
        "Choose a smaller image."
    ]
    no_decoding.assert_not_called()


def test_the_pixel_limit_is_a_setting(settings, no_decoding):
    """RELIABILITY 30: the limit is OMNIWEB_UPLOAD_MAX_PIXELS, checked before decoding."""
    settings.UPLOAD_MAX_PIXELS = 2_500_000
    data = encoded_file(Image.new("L", (2000, 1500)), "PNG")
    with pytest.raises(ValidationError, match=r"\(3 megapixels\); images may have up to 2\.5 "):
        check_image(upload("wide.png", data))
    no_decoding.assert_not_called()


def test_pillows_decompression_bomb_limit_is_the_pixel_limit():
    """RELIABILITY 30: Pillow's decompression-bomb limit comes from the pixel setting."""
    assert Image.MAX_IMAGE_PIXELS == django_settings.UPLOAD_MAX_PIXELS


def test_an_image_pillow_refuses_to_open_is_refused_by_the_pixel_limit(monkeypatch):
    """RELIABILITY 30: above twice Pillow's limit it will not even read the header for us."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    data = encoded_file(Image.new("L", (100, 100)), "PNG")
    with pytest.raises(ValidationError) as refused:
        check_image(upload("bomb.png", data))
    assert refused.value.messages == [
        "bomb.png has more than 40 megapixels; choose a smaller image."
    ]


def test_checking_an_upload_holds_no_copy_of_it():
    """RELIABILITY 30: the header is read from the upload itself; its bytes are not read into
    memory. (An upload above 2.5 MB waits in a temporary file, as this one does.)"""
    data = noisy_png(1000, 1000)
    assert len(data) > 2_500_000
    with TemporaryUploadedFile("noise.png", "image/png", len(data), None) as on_disk:
        on_disk.write(data)
        on_disk.seek(0)
        tracemalloc.start()
        try:
            checked = check_image(on_disk)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert (checked.width, checked.height) == (1000, 1000)
    assert peak < 256 * 1024


def test_a_sideways_photo_reports_the_size_it_is_shown_at(no_decoding):
    """RELIABILITY 30: the orientation is read from the header too, without decoding."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    data = encoded_file(half_red(120, 80), "JPEG", exif=exif)
    checked = check_image(upload("photo.jpg", data, "image/jpeg"))
    assert (checked.width, checked.height, checked.content_type) == (80, 120, "image/jpeg")


# --- the Create page ----------------------------------------------------------------------------


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.PUBLIC_URL = ""
    return tmp_path


@pytest.fixture
def key(alice, carol):
    ledger.grant(alice, 1000, by=carol, reason="welcome")
    key = ProviderKey(provider="apimart", label="Mine", owner=alice)
    key.set_secret("sk-apimart-test-0001")
    key.save()
    return key


def create_form(key: ProviderKey, files, **overrides) -> dict:
    data = {
        "model": SPEC.key,
        "prompt": "A red fox in the snow",
        "duration": "6",
        "resolution": "720p",
        "aspect_ratio": "16:9",
        "key": str(key.code),
        "visibility": "team",
        "form_token": str(uuid.uuid4()),
        "reference_files": files,
        **overrides,
    }
    return {name: value for name, value in data.items() if value is not None}


@QUIET_BOMB_WARNING
@pytest.mark.django_db
def test_the_create_page_refuses_an_8192_square_png_without_decoding_it(
    client, alice, key, media, no_decoding
):
    """RELIABILITY 30: through the page, the refusal is cheap and nothing is made."""
    client.force_login(alice)
    response = client.post(CREATE, create_form(key, [upload("huge.png", huge_png())]))
    assert response.status_code == 200
    assert "huge.png is 8192×8192 pixels (67.1 megapixels)" in response.content.decode()
    no_decoding.assert_not_called()
    assert Task.objects.count() == 0
    assert not list(media.rglob("*.*"))


@pytest.mark.django_db
def test_a_form_invalid_for_another_reason_does_not_decode_its_uploads(
    client, alice, key, media, decoded
):
    """RELIABILITY 30: a form refused for its prompt costs no decoding of its images."""
    client.force_login(alice)
    files = [upload(f"fox{n}.png", noisy_png(300, 200)) for n in range(3)]
    response = client.post(CREATE, create_form(key, files, prompt=""))
    assert response.status_code == 200
    assert "Write a prompt" in response.content.decode()
    assert decoded == []
    assert Task.objects.count() == 0


@pytest.mark.django_db
def test_a_submitted_upload_is_stored_without_its_metadata(client, alice, key, media):
    """RELIABILITY 30: what is stored (and sent) is the clean copy."""
    client.force_login(alice)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "taken in the back garden at 52.52N 13.40E")
    data = encoded_file(half_red(), "PNG", pnginfo=info)
    response = client.post(CREATE, create_form(key, [upload("fox.png", data)]))
    assert response.status_code == 302
    stored = (media / ReferenceImage.objects.get().file.name).read_bytes()
    assert b"back garden" not in stored
    assert b"back garden" not in Task.objects.get().params["reference_images"][0].encode()


# --- decoding: encoded() ------------------------------------------------------------------------


def test_a_jpeg_loses_its_exif_gps_xmp_and_comment_and_stays_upright():
    """RELIABILITY 30: EXIF (GPS too), XMP and comments are gone; the orientation is applied
    first, so the picture looks as it did."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # shown turned a quarter clockwise
    exif[ExifTags.Base.Make] = "PhoneCo"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (52.0, 31.0, 12.0)
    data = encoded_file(
        half_red(120, 80),
        "JPEG",
        exif=exif,
        comment=b"taken at home",
        xmp=b"<x:xmpmeta>Alice's house</x:xmpmeta>",
    )
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(ExifTags.IFD.GPSInfo)  # it has GPS

    clean = check_image(upload("photo.jpg", data, "image/jpeg")).encoded()

    assert (clean.content_type, clean.extension) == ("image/jpeg", "jpg")
    for secret in (b"PhoneCo", b"taken at home", b"Alice's house"):
        assert secret not in clean.data
    with Image.open(io.BytesIO(clean.data)) as result:
        assert result.format == "JPEG"
        assert len(result.getexif()) == 0
        assert not {"exif", "xmp", "comment"} & result.info.keys()
        assert result.size == (80, 120)
        # Turned clockwise, the red left half is now the top.
        assert near(result.getpixel((40, 10)), RED)
        assert near(result.getpixel((40, 110)), BLUE)


def test_a_png_loses_its_text_chunks_and_exif():
    """RELIABILITY 30: tEXt, zTXt and iTXt chunks and EXIF are gone; the pixels are not."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Alice Example")
    info.add_text("Location", "52.52N 13.40E", zip=True)
    info.add_itxt("Description", "the back garden")
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 3  # upside down
    exif[ExifTags.Base.Make] = "PhoneCo"
    source = half_red(120, 80)
    data = encoded_file(source, "PNG", pnginfo=info, exif=exif)

    clean = check_image(upload("fox.png", data)).encoded()

    assert (clean.content_type, clean.extension) == ("image/png", "png")
    for secret in (b"Alice Example", b"52.52N", b"back garden", b"PhoneCo", b"eXIf", b"tEXt"):
        assert secret not in clean.data
    with Image.open(io.BytesIO(clean.data)) as result:
        assert result.format == "PNG"
        assert len(result.getexif()) == 0
        assert not {"Author", "Location", "Description", "exif"} & result.info.keys()
        assert result.size == (120, 80)
        assert result.tobytes() == source.rotate(180).tobytes()


def test_a_webp_stays_a_webp_without_its_exif():
    """RELIABILITY 30: WebP is written again as WebP, without EXIF or XMP."""
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "PhoneCo"
    data = encoded_file(half_red(), "WEBP", exif=exif, xmp=b"<x:xmpmeta>secret</x:xmpmeta>")

    clean = check_image(upload("fox.webp", data, "image/webp")).encoded()

    assert (clean.content_type, clean.extension) == ("image/webp", "webp")
    assert b"PhoneCo" not in clean.data and b"xmpmeta" not in clean.data
    with Image.open(io.BytesIO(clean.data)) as result:
        assert result.format == "WEBP"
        assert not {"exif", "xmp"} & result.info.keys()
        assert result.size == (120, 80)
        assert near(result.getpixel((10, 40)), RED)


def test_encoded_decodes_once_however_often_it_is_called(decoded):
    """RELIABILITY 30: the pixels are read once per upload, cached on the checked image."""
    checked = check_image(upload("fox.png", noisy_png(200, 100)))
    assert decoded == []
    first = checked.encoded()
    assert checked.encoded() is first
    assert len(decoded) == 1


def test_the_data_uri_carries_the_clean_bytes(alice, carol, settings, tmp_path):
    """RELIABILITY 30: what goes inline to a gateway is the clean copy too."""
    settings.MEDIA_ROOT = tmp_path
    ledger.grant(alice, 1000, by=carol, reason="welcome")
    key = ProviderKey(provider="apimart", label="Mine", owner=alice)
    key.set_secret("sk-uploads-inline-0001")
    key.save()
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Alice Example")
    checked = check_image(upload("fox.png", encoded_file(half_red(), "PNG", pnginfo=info)))
    request = GenerationRequest("apimart", "Omni-Flash-Ext", "a fox", duration=4)
    order = services.Order(items=(services.OrderItem(request, key),), images=(checked,))
    (task,) = services.submit_order(alice, order).tasks
    (sent_uri,) = task.params["reference_images"]
    sent = base64.b64decode(sent_uri.removeprefix("data:image/png;base64,"))
    assert sent == checked.encoded().data
    assert b"Alice Example" not in sent


def test_a_truncated_png_is_refused_as_damaged_when_it_is_decoded():
    """RELIABILITY 30: the header check passes it; decoding finds the damage and says so."""
    data = noisy_png(300, 200)
    checked = check_image(upload("cut.png", data[: len(data) * 2 // 3]))
    with pytest.raises(ValidationError) as refused:
        checked.encoded()
    assert refused.value.messages == ["cut.png is damaged or incomplete; export it again."]
