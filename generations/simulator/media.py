"""Small, real media files that show a prompt's text, for the gateway simulator.

The simulator stands in for a paid generation provider in demos and tests, so what it hands back
has to be genuine media that browsers display: a PNG for images, an H.264 MP4 for videos. Each
file is a calm "text card" with the prompt written on it; a video adds a progress bar that fills
over the clip, so a player visibly plays it.

Assumptions:

- Pillow >= 10.1 built with FreeType, so ``ImageFont.load_default(size=...)`` is a scalable font.
  That bundled font covers little beyond ASCII, so accents are folded and typographic punctuation
  is mapped to ASCII; any other character shows as a box.
- PyAV with an H.264 encoder (its wheels ship libx264).
- The same inputs give the same bytes for a given Pillow/PyAV build: nothing random and no
  timestamps, so tests and cached demo files stay stable.
- Sizes are small and chosen by the caller. Videos round odd sizes down to even, since yuv420p
  stores colour at half resolution, and cap their frame count so long clips stay cheap to make;
  past the cap the frame rate drops, the duration does not.
"""

import colorsys
import hashlib
import io
import re
import tempfile
import unicodedata
from collections.abc import Iterator
from fractions import Fraction
from itertools import islice
from pathlib import Path

import av
from av.container import OutputContainer
from av.video.plane import VideoPlane
from av.video.stream import VideoStream
from PIL import Image, ImageDraw, ImageFont

__all__ = ["render_mp4", "render_png"]

# Big enough for 4K stills, small enough that a bad request cannot exhaust memory.
_MAX_SIDE = 4096
_MAX_SECONDS = 600.0
# 15 s at 12 fps. Past this the frame rate drops rather than the encode time growing.
_MAX_FRAMES = 180

_TEXT_COLOUR = (241, 243, 247)
_ELLIPSIS = "\u2026"
# The bundled font has no glyphs for these, and prompts pasted from documents are full of them.
_ASCII_PUNCTUATION = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u2013": "-",
        "\u2014": "-",
        "\u2212": "-",
    }
)


def render_png(prompt: str, width: int, height: int) -> bytes:
    """A ``width`` x ``height`` PNG showing ``prompt`` on a gradient card."""
    _check_size(width, height, minimum=1)
    buffer = io.BytesIO()
    _text_card(prompt, width, height).save(buffer, format="PNG")
    return buffer.getvalue()


def render_mp4(prompt: str, seconds: float, width: int, height: int, fps: int = 12) -> bytes:
    """An H.264/yuv420p MP4 of about ``seconds`` showing ``prompt`` over a filling progress bar.

    Odd sizes are rounded down to even. The moov box comes first, so browsers can start playing
    before the whole file has arrived.
    """
    _check_size(width, height, minimum=2)
    width, height = width - width % 2, height - height % 2
    if not 0 < seconds <= _MAX_SECONDS:
        raise ValueError(f"seconds must be in (0, {_MAX_SECONDS:g}], got {seconds!r}")
    if fps < 1:
        raise ValueError(f"fps must be at least 1, got {fps!r}")

    # Two frames at least, so there is movement to see even in a very short clip.
    frame_count = max(2, round(seconds * fps))
    rate = Fraction(fps)
    if frame_count > _MAX_FRAMES:
        frame_count = _MAX_FRAMES
        rate = (Fraction(_MAX_FRAMES) / Fraction(seconds)).limit_denominator(1001)

    # Moving the moov box to the front reopens the output by name to read it back, which a
    # Python buffer cannot offer; a private temporary file can.
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "clip.mp4"
        with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as output:
            stream = _add_h264_stream(output, rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for frame in _frames(prompt, width, height, frame_count):
                output.mux(stream.encode(frame))
            output.mux(stream.encode(None))
        return path.read_bytes()


def _frames(prompt: str, width: int, height: int, count: int) -> Iterator[av.VideoFrame]:
    """The text card with its progress bar filling from empty (first frame) to full (last)."""
    empty, full, (left, top, right, bottom) = _video_cards(prompt, width, height)
    layout = av.VideoFrame(width, height, "yuv420p").planes
    # Converting to yuv420p is the costly step, so it happens twice, not once per frame.
    empty_planes = _yuv_planes(empty, layout)
    full_planes = _yuv_planes(full, layout)
    for index in range(count):
        # Even columns only: each chroma sample covers two pixels across.
        filled = left + (right - left) * index // (count - 1) // 2 * 2
        frame = av.VideoFrame(width, height, "yuv420p")
        planes = zip(frame.planes, empty_planes, full_planes, strict=True)
        for number, (plane, base, source) in enumerate(planes):
            shift = 0 if number == 0 else 1
            data = bytearray(base)
            x0, x1 = left >> shift, filled >> shift
            # Only the bar's rows change from frame to frame; copy the filled part across.
            for row in range(top >> shift, bottom >> shift):
                start = row * plane.line_size
                data[start + x0 : start + x1] = source[start + x0 : start + x1]
            plane.update(data)
        frame.pts = index
        yield frame


def _check_size(width: int, height: int, *, minimum: int) -> None:
    for name, value in (("width", width), ("height", height)):
        if not minimum <= value <= _MAX_SIDE:
            raise ValueError(f"{name} must be in [{minimum}, {_MAX_SIDE}], got {value!r}")


def _add_h264_stream(container: OutputContainer, rate: Fraction) -> VideoStream:
    if "libx264" in av.codecs_available:
        # The fastest preset keeps demo renders instant; a text card barely changes, so the
        # files stay small anyway.
        options = {"preset": "ultrafast", "crf": "26"}
        return container.add_stream("libx264", rate=rate, options=options)
    return container.add_stream("h264", rate=rate)


def _video_cards(
    prompt: str, width: int, height: int
) -> tuple[Image.Image, Image.Image, tuple[int, int, int, int]]:
    """The card with an empty and with a full progress bar, and the bar's even-aligned box."""
    margin = _margin(width, height)
    bar_height = max(2, height // 48 // 2 * 2)
    gap = max(2, margin // 2)
    card = _text_card(prompt, width, height, reserve_bottom=bar_height + gap)
    # Clamped so that even a 2x2 clip has a bar at least one chroma sample wide.
    left = min(margin // 2 * 2, width - 2)
    right = min(width, max(left + 2, (width - margin) // 2 * 2))
    top = max(0, (height - margin - bar_height) // 2 * 2)
    bottom = min(height, top + bar_height)
    _, _, accent = _palette(prompt)

    empty, full = card.copy(), card.copy()
    box = (left, top, right - 1, bottom - 1)
    ImageDraw.Draw(empty).rectangle(box, fill=_mix(card.getpixel((left, top)), _TEXT_COLOUR, 0.2))
    ImageDraw.Draw(full).rectangle(box, fill=accent)
    return empty, full, (left, top, right, bottom)


def _yuv_planes(image: Image.Image, layout: tuple[VideoPlane, ...]) -> list[bytes]:
    """The image in yuv420p, each plane laid out row for row like ``layout``'s planes."""
    converted = av.VideoFrame.from_image(image).reformat(format="yuv420p")
    planes = []
    for source, target in zip(converted.planes, layout, strict=True):
        # A converted frame may pad its rows differently from a freshly allocated one.
        data, out = memoryview(source), bytearray(target.buffer_size)
        for row in range(target.height):
            begin = row * source.line_size
            out[row * target.line_size : row * target.line_size + target.width] = data[
                begin : begin + target.width
            ]
        planes.append(bytes(out))
    return planes


def _text_card(prompt: str, width: int, height: int, reserve_bottom: int = 0) -> Image.Image:
    top_colour, bottom_colour, _ = _palette(prompt)
    image = _gradient(width, height, top_colour, bottom_colour)

    margin = _margin(width, height)
    box_width = width - 2 * margin
    box_height = height - 2 * margin - reserve_bottom
    if box_width <= 0 or box_height <= 0:
        return image

    font = ImageFont.load_default(size=max(10, min(height // 16, width // 20)))
    # Measured rather than derived from the size, so a bitmap fallback font spaces sensibly too.
    line_height = max(1, round(font.getbbox("Hgjy|")[3] * 1.25))
    max_lines = max(1, box_height // line_height)

    # One line more than fits tells whether anything was cut off.
    lines = list(islice(_wrapped_lines(_displayable(prompt), font, box_width), max_lines + 1))
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = _with_ellipsis(lines[-1], font, box_width)

    draw = ImageDraw.Draw(image)
    y = margin + max(0, (box_height - len(lines) * line_height) // 2)
    for line in lines:
        draw.text((margin, y), line, font=font, fill=_TEXT_COLOUR)
        y += line_height
    return image


def _margin(width: int, height: int) -> int:
    return max(2, min(width, height) // 12)


def _palette(prompt: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Top and bottom background colours and an accent, picked from the prompt.

    A digest rather than ``hash()``, which changes between processes.
    """
    hue = hashlib.sha256(prompt.encode()).digest()[0] / 256

    def rgb(h: float, lightness: float, saturation: float) -> tuple[int, ...]:
        return tuple(round(c * 255) for c in colorsys.hls_to_rgb(h % 1, lightness, saturation))

    return rgb(hue, 0.16, 0.35), rgb(hue + 0.08, 0.30, 0.30), rgb(hue + 0.5, 0.72, 0.55)


def _gradient(
    width: int, height: int, top: tuple[int, ...], bottom: tuple[int, ...]
) -> Image.Image:
    steps = max(1, height - 1)
    column = Image.new("RGB", (1, height))
    column.putdata([_mix(top, bottom, y / steps) for y in range(height)])
    return column.resize((width, height), Image.Resampling.NEAREST)


def _mix(a: tuple[int, ...], b: tuple[int, ...], amount: float) -> tuple[int, ...]:
    return tuple(round(x + (y - x) * amount) for x, y in zip(a, b, strict=True))


def _displayable(text: str) -> str:
    """The prompt folded towards what the bundled font can draw, with blank-line runs collapsed."""
    text = unicodedata.normalize("NFKD", text.translate(_ASCII_PUNCTUATION))
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = "\n".join(line.strip() for line in text.splitlines())
    return re.sub(r"\n{3,}", "\n\n", text.strip())


def _wrapped_lines(text: str, font: ImageFont.ImageFont, max_width: int) -> Iterator[str]:
    """Greedy word wrap, lazily, so a huge prompt costs only the lines that are shown."""
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= max_width:
                line = candidate
                continue
            if line:
                yield line
            # A word wider than the card (a URL, a run of letters) is broken where it overflows.
            while (cut := _fitting_prefix(word, font, max_width)) < len(word):
                yield word[:cut]
                word = word[cut:]
            line = word
        yield line


def _fitting_prefix(text: str, font: ImageFont.ImageFont, max_width: int) -> int:
    """Length of the longest prefix that fits; at least 1, so wrapping always advances."""
    # Doubling before bisecting keeps every measured string within about two lines' worth,
    # however long the text.
    low, high = 1, 2
    while high < len(text) and font.getlength(text[:high]) <= max_width:
        low, high = high, high * 2
    high = min(high, len(text))
    while low < high:
        middle = (low + high + 1) // 2
        if font.getlength(text[:middle]) <= max_width:
            low = middle
        else:
            high = middle - 1
    return low


def _with_ellipsis(line: str, font: ImageFont.ImageFont, max_width: int) -> str:
    line = line.rstrip()
    while line and font.getlength(line + _ELLIPSIS) > max_width:
        line = line[:-1].rstrip()
    return line + _ELLIPSIS
