"""The simulator's media: real PNGs and browser-playable MP4s that show the prompt."""

import io
import math

import av
import pytest
from PIL import Image

from generations.simulator.media import render_mp4, render_png

PROMPT = "A lighthouse on a cliff at dusk, waves breaking below, warm light in the windows"


def open_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def text_pixels(image: Image.Image) -> int:
    """Near-white pixels: the backgrounds are dark, so only the lettering is this bright."""
    return sum(image.convert("L").histogram()[201:])


def top_level_boxes(data: bytes) -> list[bytes]:
    boxes, offset = [], 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        if size == 1:
            size = int.from_bytes(data[offset + 8 : offset + 16], "big")
        boxes.append(data[offset + 4 : offset + 8])
        if size < 8:
            break
        offset += size
    return boxes


def decoded_luma(data: bytes) -> list[bytes]:
    with av.open(io.BytesIO(data)) as container:
        return [bytes(frame.planes[0]) for frame in container.decode(video=0)]


def test_png_has_the_requested_size_and_shows_text():
    image = open_png(render_png(PROMPT, 640, 360))

    assert image.format == "PNG"
    assert image.size == (640, 360)
    assert any(low != high for low, high in image.getextrema())
    assert text_pixels(image) > 500


def test_png_is_the_same_for_the_same_input_and_differs_between_prompts():
    assert render_png(PROMPT, 320, 240) == render_png(PROMPT, 320, 240)
    assert render_png(PROMPT, 320, 240) != render_png(PROMPT + "!", 320, 240)


@pytest.mark.parametrize(
    "prompt",
    [
        ("a very long prompt, " * 300)[:5000],
        "x" * 5000,
        "",
        " \n\n\n ",
        "\u201cCaf\u00e9\u201d \u2014 na\u00efve, \u4e2d\u6587, \U0001f600",
    ],
    ids=["5000-chars", "5000-char-word", "empty", "blank-lines", "non-ascii"],
)
def test_png_renders_any_prompt_at_the_requested_size(prompt):
    image = open_png(render_png(prompt, 512, 512))

    assert image.size == (512, 512)


def test_png_clips_a_prompt_too_long_to_fit_inside_the_margins():
    image = open_png(render_png("word " * 1000, 400, 300)).convert("RGB")

    assert text_pixels(image) > 500
    assert text_pixels(image.crop((0, 280, 400, 300))) == 0
    assert text_pixels(image.crop((380, 0, 400, 300))) == 0


@pytest.mark.parametrize(("width", "height"), [(0, 100), (100, -1), (5000, 100)])
def test_png_rejects_sizes_out_of_range(width, height):
    with pytest.raises(ValueError):
        render_png(PROMPT, width, height)


@pytest.fixture(scope="module")
def clip() -> bytes:
    return render_mp4(PROMPT, 2.0, 321, 241)


def test_mp4_is_h264_yuv420p_with_even_size_and_about_the_requested_duration(clip):
    with av.open(io.BytesIO(clip)) as container:
        assert len(container.streams.video) == 1
        stream = container.streams.video[0]

        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert (stream.codec_context.width, stream.codec_context.height) == (320, 240)
        assert container.duration / av.time_base == pytest.approx(2.0, rel=0.2)


def test_mp4_moves_so_its_first_and_last_frames_differ(clip):
    frames = decoded_luma(clip)

    assert len(frames) >= 2
    assert frames[0] != frames[-1]


def test_mp4_starts_with_ftyp_and_puts_moov_before_mdat_so_it_streams(clip):
    assert clip[4:8] == b"ftyp"
    boxes = top_level_boxes(clip)
    assert boxes.index(b"moov") < boxes.index(b"mdat")


def test_mp4_of_a_long_clip_caps_its_frames_but_keeps_the_duration():
    data = render_mp4(PROMPT, 60.0, 64, 64)

    with av.open(io.BytesIO(data)) as container:
        assert container.duration / av.time_base == pytest.approx(60.0, rel=0.2)
    assert 2 <= len(decoded_luma(data)) <= 180


def test_mp4_of_a_very_short_clip_still_has_movement():
    frames = decoded_luma(render_mp4(PROMPT, 0.01, 32, 32))

    assert len(frames) >= 2
    assert frames[0] != frames[-1]


@pytest.mark.parametrize("seconds", [0.0, -1.0, math.nan, math.inf])
def test_mp4_rejects_durations_that_are_not_positive_and_finite(seconds):
    with pytest.raises(ValueError):
        render_mp4(PROMPT, seconds, 64, 64)
