"""Downloading a gateway's finished result into our own storage, safely.

Gateways hand back a link to the generated video or image, usually a signed URL that expires
within hours. `fetch_result` copies that file into our storage so members keep it, and treats the
link as untrusted input: the gateway (or whoever controls its CDN or DNS) chooses where we
connect, how much we read and what the bytes are.

What it promises:

- It only talks to addresses the outbound policy allows (generations/outbound.py: globally
  routable ones, and what an administrator allowed), checked on every redirect hop, and
  connects to the very address it checked (no second DNS lookup that could be rebound to an
  internal one). Loopback is also allowed with ``DOWNLOAD_ALLOW_LOOPBACK``, for the demo's local
  simulator.
- It reads at most ``DOWNLOAD_MAX_BYTES`` within ``DOWNLOAD_SECONDS``, streaming to a temporary
  file, never into memory.
- It stores only what it recognises from the bytes themselves (MP4/MOV/WebM/Matroska videos;
  PNG/JPEG/WebP/GIF images) under a random name, with a JPEG poster or thumbnail. SVG and
  anything that could be a page or a script are never stored.
- Every failure is a `FetchFailed` whose message a member can read and which says whether trying
  again may help. Neither messages nor logs contain the URL's query string, which carries the
  signature.

What it assumes:

- ``resolve`` (``socket.getaddrinfo`` by default) is trusted; the lookup itself is not bounded
  by the time budget.
- A client passed in does not go through a proxy (the peer check then refuses, as it cannot see
  the origin) and is not shared with unrelated HTTPS requests: connections are keyed by IP, so a
  reused connection could carry another host's TLS session. Every request here asks the server to
  close the connection, so this module never reuses one itself.
- The time budget is checked between chunks, and each read may wait at most the budget left when
  the request started, so a server that stalls just before the deadline can stretch one download
  to at most about twice ``DOWNLOAD_SECONDS``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from typing import BinaryIO

import av
import httpx
from django.conf import settings
from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import Storage, default_storage
from django.utils import timezone
from PIL import ExifTags, Image, ImageOps

from generations import outbound
from generations.outbound import IPAddress, Resolver

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Statuses that say "not now" rather than "never": timeouts, too early, rate limits.
RETRYABLE_STATUSES = frozenset({408, 425, 429})
# What expired or revoked signed links answer.
EXPIRED_STATUSES = frozenset({403, 404, 410})
POSTER_WIDTH = 640
# Enough to recognise every accepted format and to name most refused ones.
HEAD_BYTES = 512
CONNECT_SECONDS = 10.0
MIB = 1024 * 1024

# ISO-BMFF brands of still images (HEIF, AVIF): an `ftyp` box, but not a video.
_IMAGE_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"})
_PILLOW_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP", "gif": "GIF"}


class FetchFailed(Exception):
    """A result could not be fetched. `retryable` says whether trying again later may help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class StoredMedia:
    name: str
    content_type: str
    size: int
    width: int | None
    height: int | None
    duration: float | None
    poster_name: str | None


@dataclass(frozen=True)
class _Format:
    kind: str
    ext: str
    content_type: str
    label: str


_MP4 = _Format("video", "mp4", "video/mp4", "an MP4 video")
_MOV = _Format("video", "mov", "video/quicktime", "a QuickTime video")
_WEBM = _Format("video", "webm", "video/webm", "a WebM video")
_MKV = _Format("video", "mkv", "video/x-matroska", "a Matroska video")
_PNG = _Format("image", "png", "image/png", "a PNG image")
_JPEG = _Format("image", "jpg", "image/jpeg", "a JPEG image")
_WEBP = _Format("image", "webp", "image/webp", "a WebP image")
_GIF = _Format("image", "gif", "image/gif", "a GIF image")


@dataclass(frozen=True)
class _Probe:
    width: int | None
    height: int | None
    duration: float | None
    poster: bytes


def fetch_result(
    url: str,
    *,
    kind: str,
    storage: Storage | None = None,
    client: httpx.Client | None = None,
    resolve: Resolver | None = None,
) -> StoredMedia:
    """Download the `kind` ("video" or "image") at `url` into `storage` and describe it.

    `resolve(host, port)` returns the host's IP addresses as strings. Raises `FetchFailed`.
    """
    if kind not in ("video", "image"):
        raise ValueError(f"kind must be 'video' or 'image', not {kind!r}")
    storage = default_storage if storage is None else storage
    resolve = outbound.resolve_host if resolve is None else resolve
    deadline = time.monotonic() + _budget_seconds()
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise FetchFailed("The result link is not a valid web address.", retryable=False) from None
    host = parsed.host

    own_client = client is None
    if client is None:
        # No proxies from the environment: the address check must govern the real connection.
        client = httpx.Client(trust_env=False, follow_redirects=False)
    fd, temp_path = tempfile.mkstemp(
        prefix="omniweb-fetch-", dir=getattr(settings, "FILE_UPLOAD_TEMP_DIR", None)
    )
    try:
        with os.fdopen(fd, "w+b") as temp:
            fmt, size = _download(parsed, kind, client, resolve, deadline, temp)
        probe = _probe_video(temp_path, fmt) if kind == "video" else _probe_image(temp_path, fmt)
        name, poster_name = _store(storage, temp_path, fmt, probe.poster)
    except FetchFailed as exc:
        logger.warning(
            "Result download from %s failed (%s): %s",
            host,
            "retryable" if exc.retryable else "permanent",
            exc.message,
        )
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_path)
        if own_client:
            client.close()
    logger.info("Stored a %s result from %s as %s (%s, %d bytes)", kind, host, name, fmt.ext, size)
    return StoredMedia(
        name=name,
        content_type=fmt.content_type,
        size=size,
        width=probe.width,
        height=probe.height,
        duration=probe.duration,
        poster_name=poster_name,
    )


# Settings


def _budget_seconds() -> float:
    return float(getattr(settings, "DOWNLOAD_SECONDS", 60))


def _max_bytes() -> int:
    return int(getattr(settings, "DOWNLOAD_MAX_BYTES", 500 * MIB))


def _loopback_allowed() -> bool:
    return bool(getattr(settings, "DOWNLOAD_ALLOW_LOOPBACK", False))


# Addresses

_UNRESOLVED = {
    "no_host": "The result link has no host name.",
    "lookup_failed": "The result link's host name could not be looked up.",
    "no_address": "The result link's host name has no address.",
    "not_an_address": "The result link's host name resolved to something that is not an address.",
}


def _checked_addresses(url: httpx.URL, resolve: Resolver) -> list[IPAddress]:
    """The addresses of `url`'s host, all of them allowed, or FetchFailed."""
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        return outbound.checked_addresses(
            url.raw_host.decode("ascii"),
            port,
            resolve=resolve,
            allow_loopback=_loopback_allowed(),
        )
    except outbound.Unresolved as exc:
        raise FetchFailed(_UNRESOLVED[exc.reason], retryable=exc.retryable) from None
    except outbound.AddressRefused:
        raise FetchFailed(
            "The result link points to a private or local network address; "
            "Omniweb only downloads results from the public internet.",
            retryable=False,
        ) from None


# HTTP


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _too_slow()
    return left


def _too_slow() -> FetchFailed:
    return FetchFailed(
        f"The result took longer than {_budget_seconds():g} seconds to download.", retryable=True
    )


def _download(
    url: httpx.URL,
    kind: str,
    client: httpx.Client,
    resolve: Resolver,
    deadline: float,
    out: BinaryIO,
) -> tuple[_Format, int]:
    """Follow redirects to the body and stream it into `out`; its format and size."""
    for _hop in range(MAX_REDIRECTS + 1):
        if url.scheme not in ("http", "https"):
            raise FetchFailed(
                "The result link is not a web address (http or https).", retryable=False
            )
        addresses = _checked_addresses(url, resolve)
        try:
            response = _send(client, url, addresses, deadline)
            try:
                if response.status_code in REDIRECT_STATUSES:
                    location = response.headers.get("location")
                    if not location:
                        raise FetchFailed("The result link redirected nowhere.", retryable=False)
                    url = url.join(location)
                    continue
                _check_status(response)
                return _stream_body(response, kind, deadline, out)
            finally:
                response.close()
        except httpx.InvalidURL:
            raise FetchFailed(
                "The result link redirected to an invalid address.", retryable=False
            ) from None
        except httpx.TimeoutException:
            raise _too_slow() from None
        except httpx.RequestError as exc:
            # Transport messages name the host or the OS error, never the request's URL.
            logger.info("Network error from %s: %s: %s", url.host, type(exc).__name__, exc)
            raise FetchFailed(
                "The result could not be downloaded because of a network error.", retryable=True
            ) from None
        except OSError as exc:
            logger.error("Could not write a temporary file: %s", exc)
            raise FetchFailed(
                "Omniweb could not write the result to disk; it will try again.", retryable=True
            ) from None
    raise FetchFailed(
        f"The result link redirected more than {MAX_REDIRECTS} times.", retryable=False
    )


def _send(
    client: httpx.Client, url: httpx.URL, addresses: list[IPAddress], deadline: float
) -> httpx.Response:
    """GET `url` from the first of its checked `addresses` that accepts a connection."""

    def timeout() -> httpx.Timeout:
        left = _remaining(deadline)
        return httpx.Timeout(left, connect=min(left, CONNECT_SECONDS))

    headers = {
        # Counting bytes is only meaningful if they are not compressed on the wire.
        "Accept-Encoding": "identity",
        "User-Agent": "Omniweb",
    }
    try:
        return outbound.send_to_checked(client, url, addresses, headers=headers, timeout=timeout)
    except outbound.PeerMismatch:
        raise FetchFailed(
            "The result link led to a different network address than the one checked.",
            retryable=False,
        ) from None


def _check_status(response: httpx.Response) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    if status in RETRYABLE_STATUSES or status >= 500:
        raise FetchFailed(
            f"The gateway's result link answered {status}; it may work again later.",
            retryable=True,
        )
    if status in EXPIRED_STATUSES:
        raise FetchFailed(
            f"The gateway's result link answered {status}; it has probably expired.",
            retryable=False,
        )
    raise FetchFailed(f"The gateway's result link answered {status}.", retryable=False)


def _too_large(limit: int) -> FetchFailed:
    megabytes = limit / MIB
    shown = f"{megabytes:.0f}" if megabytes >= 10 else f"{megabytes:.2g}"
    return FetchFailed(f"The result is larger than the {shown} MB limit.", retryable=False)


def _stream_body(
    response: httpx.Response, kind: str, deadline: float, out: BinaryIO
) -> tuple[_Format, int]:
    limit = _max_bytes()
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    total = 0
    head = b""
    fmt: _Format | None = None
    for chunk in response.iter_bytes():
        if time.monotonic() > deadline:
            raise _too_slow()
        total += len(chunk)
        if total > limit:
            raise _too_large(limit)
        if fmt is None:
            head += chunk[: HEAD_BYTES - len(head)]
            # Refuse a page early rather than after downloading all of it.
            if len(head) >= HEAD_BYTES:
                fmt = _sniff(head, kind)
        out.write(chunk)
    if fmt is None:
        fmt = _sniff(head, kind)
    return fmt, total


# Sniffing


def _identify(head: bytes) -> _Format | None:
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _IMAGE_BRANDS:
            return None
        return _MOV if brand == b"qt  " else _MP4
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        # The EBML header's DocType sits within its first few dozen bytes.
        return _WEBM if b"webm" in head[:64] else _MKV
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return _PNG
    if head.startswith(b"\xff\xd8\xff"):
        return _JPEG
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return _WEBP
    if head.startswith((b"GIF87a", b"GIF89a")):
        return _GIF
    return None


def _describe(head: bytes) -> str:
    """What an unaccepted file looks like, in words a member can read."""
    if head[4:8] == b"ftyp" and head[8:12] in _IMAGE_BRANDS:
        return "an AVIF or HEIF image"
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html")) or any(
        tag in text for tag in (b"<html", b"<head", b"<body")
    ):
        return "an HTML page"
    if b"<svg" in text:
        return "an SVG drawing"
    if text.startswith(b"<"):
        return "an XML document"
    if text.startswith((b"{", b"[")):
        return "a JSON document"
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if _is_text(head):
        return "plain text"
    return "a file of an unknown type"


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # The head may end in the middle of a character.
        if exc.start < len(head) - 3:
            return False
        text = head[: exc.start].decode("utf-8")
    return all(char.isprintable() or char in "\t\r\n" for char in text)


def _sniff(head: bytes, kind: str) -> _Format:
    fmt = _identify(head)
    if fmt is not None and fmt.kind == kind:
        return fmt
    noun = "a video" if kind == "video" else "an image"
    if not head:
        raise FetchFailed(f"The result is not {noun}: the download was empty.", retryable=False)
    looks = fmt.label if fmt is not None else _describe(head)
    raise FetchFailed(f"The result is not {noun}: it looks like {looks}.", retryable=False)


# Reading the media


def _not_playable() -> FetchFailed:
    return FetchFailed("The result is not a playable video.", retryable=False)


def _probe_video(path: str, fmt: _Format) -> _Probe:
    # Name the demuxer we sniffed and allow only local files, so FFmpeg's guessing and its
    # playlist/reference formats can never make it open another URL.
    demuxer = "mov" if fmt.ext in ("mp4", "mov") else "matroska"
    try:
        with av.open(
            path, mode="r", format=demuxer, options={"protocol_whitelist": "file"}
        ) as container:
            stream = next(iter(container.streams.video), None)
            if stream is None:
                raise _not_playable()
            width = stream.codec_context.width or None
            height = stream.codec_context.height or None
            if width is None or height is None:
                raise _not_playable()
            if width * height > Image.MAX_IMAGE_PIXELS:
                raise FetchFailed("The video's frames are too large to process.", retryable=False)
            duration: float | None = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            frame = next(container.decode(stream), None)
            if frame is None:
                raise _not_playable()
            poster = _jpeg(frame.to_image())
    except (av.error.FFmpegError, OSError, ValueError, EOFError):
        raise _not_playable() from None
    return _Probe(width=width, height=height, duration=duration, poster=poster)


def _probe_image(path: str, fmt: _Format) -> _Probe:
    formats = [_PILLOW_FORMATS[fmt.ext]]
    try:
        with Image.open(path, formats=formats) as image:
            # Pillow only warns between 1x and 2x its limit; we refuse all of it.
            if image.width * image.height > Image.MAX_IMAGE_PIXELS:
                raise Image.DecompressionBombError("too many pixels")
            image.verify()
        # verify() leaves the image unusable; a fresh one is needed to read pixels.
        with Image.open(path, formats=formats) as image:
            width, height = image.size
            # Browsers honour EXIF orientation, so report the size members will see.
            if image.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8):
                width, height = height, width
            image.draft("RGB", (POSTER_WIDTH, POSTER_WIDTH))
            thumbnail = _jpeg(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError:
        raise FetchFailed("The image has too many pixels to process.", retryable=False) from None
    except (OSError, ValueError, SyntaxError, EOFError):
        raise FetchFailed("The result is not a readable image.", retryable=False) from None
    return _Probe(width=width, height=height, duration=None, poster=thumbnail)


def _jpeg(image: Image.Image) -> bytes:
    image = _to_rgb(image)
    # Width is what the cards need; the height cap keeps an extreme strip from staying huge.
    image.thumbnail((POSTER_WIDTH, POSTER_WIDTH * 4))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=82)
    return buffer.getvalue()


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        # JPEG has no alpha; dropping it would turn transparent areas black.
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


# Storing


def _store(storage: Storage, temp_path: str, fmt: _Format, poster: bytes) -> tuple[str, str | None]:
    # A random name: nothing from the URL (or the gateway) ends up in a path or a link.
    token = secrets.token_hex(16)
    month = timezone.now().strftime("%Y/%m")
    wanted = f"results/{month}/{token}.{fmt.ext}"
    try:
        try:
            with open(temp_path, "rb") as temp:
                name = storage.save(wanted, File(temp))
        except BaseException:
            # A storage that fails part-way may leave a partial file under the name we asked for.
            _discard(storage, wanted)
            raise
        try:
            poster_name = storage.save(f"posters/{month}/{token}.jpg", ContentFile(poster))
        except BaseException:
            # No half-written results: a result without its poster is removed again.
            _discard(storage, name)
            raise
    except OSError as exc:
        logger.error("Could not store a result: %s", exc)
        raise FetchFailed(
            "Omniweb could not save the result; it will try again.", retryable=True
        ) from None
    return name, poster_name


def _discard(storage: Storage, name: str) -> None:
    try:
        storage.delete(name)
    except Exception:
        logger.exception("Could not delete %s after a failed save", name)
