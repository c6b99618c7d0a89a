"""Result downloads: address policy, caps, sniffing and storage, against a real local server.

Nothing is faked below the HTTP client: a threaded HTTP server on 127.0.0.1 answers from a small
route table, and `resolve=` maps invented host names to the addresses each test needs.
"""

import json
import re
import socket
import ssl
import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.core.files.storage import FileSystemStorage
from PIL import Image

from generations.fetch import FetchFailed, fetch_result
from generations.simulator.media import render_mp4, render_png

MP4 = render_mp4("a heron lands on a quiet lake", 2, 160, 96)
PNG = render_png("a lighthouse at dusk", 200, 120)
HTML = b"<!DOCTYPE html>\n<html><head><title>Access denied</title></head><body>No.</body></html>"
SVG = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"><script>x()</script></svg>'
JSON = json.dumps({"error": {"code": "expired", "message": "link expired"}}).encode()
# An `ftyp` box that promises an MP4, followed by nothing FFmpeg can read.
FAKE_MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00garbage" * 100


def _send(handler, status=200, body=b"", content_type="application/octet-stream", **headers):
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    handler.wfile.write(body)


def _chunked(handler, body, content_type):
    handler.send_response(200)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    for start in range(0, len(body), 4096):
        piece = body[start : start + 4096]
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
    handler.wfile.write(b"0\r\n\r\n")


def _drip(handler):
    # Declares a whole MP4 but sends a byte every 50 ms: each read is quick, the total is not.
    handler.send_response(200)
    handler.send_header("Content-Type", "video/mp4")
    handler.send_header("Content-Length", str(len(MP4)))
    handler.end_headers()
    for byte in MP4[:100]:
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()
        time.sleep(0.05)


def _chain(handler, hops):
    if hops == 0:
        _send(handler, 200, MP4, "video/mp4")
    else:
        _send(handler, 302, Location=f"/chain/{hops - 1}")


ROUTES = {
    "/video.mp4": lambda h: _send(h, 200, MP4, "video/mp4"),
    "/secret-clip-name.mp4": lambda h: _send(h, 200, MP4, "video/mp4"),
    "/image.png": lambda h: _send(h, 200, PNG, "image/png"),
    "/html-as-video": lambda h: _send(h, 200, HTML, "video/mp4"),
    "/svg-as-png": lambda h: _send(h, 200, SVG, "image/png"),
    "/json-as-png": lambda h: _send(h, 200, JSON, "image/png"),
    "/fake.mp4": lambda h: _send(h, 200, FAKE_MP4, "video/mp4"),
    "/empty": lambda h: _send(h, 200, b"", "video/mp4"),
    "/chunked.mp4": lambda h: _chunked(h, MP4, "video/mp4"),
    "/drip.mp4": _drip,
    "/status/403": lambda h: _send(h, 403, b"<Error>AccessDenied</Error>", "application/xml"),
    "/status/503": lambda h: _send(h, 503, b"busy", "text/plain"),
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        # A proxied request carries an absolute URL; route on its path either way.
        parts = urlsplit(self.path)
        self.server.seen.append({"target": self.path, "host": self.headers.get("Host")})
        if parts.path == "/redirect":
            _send(self, 302, Location=parse_qs(parts.query)["to"][0])
        elif parts.path.startswith("/chain/"):
            _chain(self, int(parts.path.removeprefix("/chain/")))
        elif parts.path.startswith("/status/") and parts.path not in ROUTES:
            _send(self, int(parts.path.removeprefix("/status/")), b"no", "text/plain")
        elif parts.path in ROUTES:
            ROUTES[parts.path](self)
        else:
            _send(self, 404, b"not found", "text/plain")

    def log_message(self, format, *args):
        """Quiet: the tests read `server.seen` instead."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        """A client that hangs up early (a refusal, a cap) is expected here."""


class LocalServer:
    def __init__(self, httpd):
        self.httpd = httpd
        self.port = httpd.server_address[1]

    @property
    def seen(self):
        return self.httpd.seen

    def url(self, path, host="127.0.0.1"):
        return f"http://{host}:{self.port}{path}"


@pytest.fixture(scope="module")
def local_server():
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.seen = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield LocalServer(httpd)
    httpd.shutdown()
    httpd.server_close()


def _certificate(host_name: str, directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for `host_name` only: not for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host_name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host_name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """The same routes over HTTPS for "cdn.example", and a client that trusts its certificate."""
    cert_path, key_path = _certificate("cdn.example", tmp_path_factory.mktemp("tls"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    httpd.seen = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    trusting = ssl.create_default_context(cafile=str(cert_path))
    with httpx.Client(verify=trusting, trust_env=False) as client:
        yield LocalServer(httpd), client
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def server(local_server):
    local_server.seen.clear()
    return local_server


@pytest.fixture(autouse=True)
def download_settings(settings, tmp_path):
    """The demo's loopback allowance, a short budget, and a temp folder that must end empty."""
    settings.DOWNLOAD_ALLOW_LOOPBACK = True
    settings.DOWNLOAD_SECONDS = 5
    settings.DOWNLOAD_MAX_BYTES = 10 * 1024 * 1024
    temp = tmp_path / "tmp"
    temp.mkdir()
    settings.FILE_UPLOAD_TEMP_DIR = str(temp)
    yield
    assert list(temp.iterdir()) == [], "the temporary download was left behind"


@pytest.fixture
def media_root(tmp_path):
    return tmp_path / "media"


@pytest.fixture
def storage(media_root):
    return FileSystemStorage(location=media_root)


def stored_files(root: Path) -> list[str]:
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def resolver(mapping):
    """A `resolve=` that answers from `mapping` and records what was asked."""

    def resolve(host, port):
        resolve.asked.append(host)
        return mapping[host]

    resolve.asked = []
    return resolve


CDN = resolver({"cdn.example": ["127.0.0.1"]})


def refused(url, *, kind="video", storage, media_root, **kwargs) -> FetchFailed:
    with pytest.raises(FetchFailed) as caught:
        fetch_result(url, kind=kind, storage=storage, **kwargs)
    assert stored_files(media_root) == []
    assert "?" not in caught.value.message
    return caught.value


# What is stored


def test_it_stores_a_real_mp4_with_its_size_duration_dimensions_and_poster(
    server, storage, media_root
):
    result = fetch_result(server.url("/video.mp4"), kind="video", storage=storage)

    assert result.content_type == "video/mp4"
    assert result.size == len(MP4)
    assert result.duration == pytest.approx(2, abs=0.2)
    assert (result.width, result.height) == (160, 96)
    assert re.fullmatch(r"results/\d{4}/\d{2}/[0-9a-f]{32}\.mp4", result.name)
    assert storage.open(result.name).read() == MP4
    assert re.fullmatch(r"posters/\d{4}/\d{2}/[0-9a-f]{32}\.jpg", result.poster_name)
    with Image.open(storage.path(result.poster_name)) as poster:
        assert poster.format == "JPEG"
        assert poster.size == (160, 96)
    assert stored_files(media_root) == sorted([result.name, result.poster_name])


def test_it_stores_a_real_png_with_its_dimensions_and_a_thumbnail(server, storage):
    result = fetch_result(server.url("/image.png"), kind="image", storage=storage)

    assert (result.content_type, result.size) == ("image/png", len(PNG))
    assert (result.width, result.height, result.duration) == (200, 120, None)
    assert result.name.endswith(".png")
    with Image.open(storage.path(result.poster_name)) as thumbnail:
        assert (thumbnail.format, thumbnail.size) == ("JPEG", (200, 120))


def test_it_shrinks_a_wide_image_to_a_640_pixel_thumbnail(server, storage):
    wide = render_png("a long panorama", 1600, 400)
    ROUTES["/wide.png"] = lambda h: _send(h, 200, wide, "image/png")
    try:
        result = fetch_result(server.url("/wide.png"), kind="image", storage=storage)
    finally:
        del ROUTES["/wide.png"]

    assert (result.width, result.height) == (1600, 400)
    with Image.open(storage.path(result.poster_name)) as thumbnail:
        assert thumbnail.size == (640, 160)


def test_it_follows_a_chunked_body_without_content_length(server, storage):
    result = fetch_result(server.url("/chunked.mp4"), kind="video", storage=storage)

    assert result.size == len(MP4)


def test_stored_names_are_random_and_never_contain_the_urls_filename_or_token(
    server, storage, caplog
):
    url = server.url("/secret-clip-name.mp4?X-Amz-Signature=s3cr3t-t0ken", host="cdn.example")

    with caplog.at_level("DEBUG"):
        first = fetch_result(url, kind="video", storage=storage, resolve=CDN)
        second = fetch_result(url, kind="video", storage=storage, resolve=CDN)

    assert first.name != second.name
    assert first.poster_name != second.poster_name
    for name in (first.name, second.name, first.poster_name, second.poster_name):
        assert "secret-clip-name" not in name
        assert "s3cr3t" not in name
    assert "cdn.example" in caplog.text
    assert "s3cr3t" not in caplog.text
    assert "secret-clip-name" not in caplog.text


# What is refused for its content


def test_it_refuses_an_html_page_labelled_video_mp4(server, storage, media_root):
    error = refused(server.url("/html-as-video"), storage=storage, media_root=media_root)

    assert error.message == "The result is not a video: it looks like an HTML page."
    assert error.retryable is False


def test_it_refuses_an_svg_labelled_image_png(server, storage, media_root):
    error = refused(server.url("/svg-as-png"), kind="image", storage=storage, media_root=media_root)

    assert error.message == "The result is not an image: it looks like an SVG drawing."
    assert error.retryable is False


def test_it_refuses_a_json_error_labelled_image_png(server, storage, media_root):
    error = refused(
        server.url("/json-as-png"), kind="image", storage=storage, media_root=media_root
    )

    assert "JSON" in error.message


def test_it_refuses_a_png_when_a_video_was_expected(server, storage, media_root):
    error = refused(server.url("/image.png"), storage=storage, media_root=media_root)

    assert error.message == "The result is not a video: it looks like a PNG image."


def test_it_refuses_a_video_when_an_image_was_expected(server, storage, media_root):
    error = refused(server.url("/video.mp4"), kind="image", storage=storage, media_root=media_root)

    assert error.message == "The result is not an image: it looks like an MP4 video."


def test_it_refuses_an_empty_body(server, storage, media_root):
    error = refused(server.url("/empty"), storage=storage, media_root=media_root)

    assert "empty" in error.message
    assert error.retryable is False


def test_it_refuses_an_mp4_header_that_ffmpeg_cannot_play(server, storage, media_root):
    error = refused(server.url("/fake.mp4"), storage=storage, media_root=media_root)

    assert error.message == "The result is not a playable video."
    assert error.retryable is False


def test_it_refuses_an_image_over_pillows_pixel_limit(server, storage, media_root, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)

    error = refused(server.url("/image.png"), kind="image", storage=storage, media_root=media_root)

    assert "too many pixels" in error.message


# Caps on size and time


def test_it_refuses_a_body_whose_content_length_exceeds_the_cap(
    server, storage, media_root, settings
):
    settings.DOWNLOAD_MAX_BYTES = 4096
    assert len(MP4) > 4096

    error = refused(server.url("/video.mp4"), storage=storage, media_root=media_root)

    assert error.message == "The result is larger than the 0.0039 MB limit."
    assert error.retryable is False


def test_it_stops_reading_a_chunked_body_once_it_exceeds_the_cap(
    server, storage, media_root, settings
):
    settings.DOWNLOAD_MAX_BYTES = len(MP4) - 1

    error = refused(server.url("/chunked.mp4"), storage=storage, media_root=media_root)

    assert "MB limit" in error.message
    assert error.retryable is False


def test_it_gives_up_on_a_server_that_drips_past_the_time_budget(
    server, storage, media_root, settings
):
    settings.DOWNLOAD_SECONDS = 1
    started = time.monotonic()

    error = refused(server.url("/drip.mp4"), storage=storage, media_root=media_root)

    assert time.monotonic() - started < 2.5
    assert error.retryable is True
    assert "longer than 1 seconds" in error.message


# HTTP statuses


@pytest.mark.parametrize("status", [403, 404, 410])
def test_it_treats_an_expired_link_as_permanent(server, storage, media_root, status):
    error = refused(server.url(f"/status/{status}"), storage=storage, media_root=media_root)

    assert error.message == (
        f"The gateway's result link answered {status}; it has probably expired."
    )
    assert error.retryable is False


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_it_retries_a_busy_or_broken_gateway(server, storage, media_root, status):
    error = refused(server.url(f"/status/{status}"), storage=storage, media_root=media_root)

    assert str(status) in error.message
    assert error.retryable is True


def test_it_treats_other_client_errors_as_permanent(server, storage, media_root):
    assert refused(server.url("/status/400"), storage=storage, media_root=media_root).retryable is (
        False
    )


def test_it_retries_when_nothing_listens(storage, media_root):
    with socket_bound_to_nothing() as port:
        error = refused(f"http://127.0.0.1:{port}/x.mp4", storage=storage, media_root=media_root)

    assert error.retryable is True


@contextmanager
def socket_bound_to_nothing():
    """A loopback port that is bound but not listening, so connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# Address policy


@pytest.mark.parametrize(
    "url",
    ["ftp://cdn.example/video.mp4", "file:///etc/passwd", "javascript:alert(1)", "cdn.example/x"],
)
def test_it_refuses_links_that_are_not_http(url, storage, media_root):
    resolve = resolver({})

    error = refused(url, storage=storage, media_root=media_root, resolve=resolve)

    assert error.retryable is False
    assert resolve.asked == []


def test_it_refuses_loopback_without_the_demo_allowance(server, storage, media_root, settings):
    settings.DOWNLOAD_ALLOW_LOOPBACK = False

    by_name = refused(
        server.url("/video.mp4", host="cdn.example"),
        storage=storage,
        media_root=media_root,
        resolve=CDN,
    )
    by_address = refused(server.url("/video.mp4"), storage=storage, media_root=media_root)

    assert "private or local network address" in by_name.message
    assert by_address.retryable is False
    assert server.seen == []


PRIVATE_ADDRESSES = [
    "10.0.0.5",
    "172.16.4.2",
    "192.168.1.10",
    "169.254.169.254",
    "100.64.0.1",
    "0.0.0.0",
    "224.0.0.1",
    "240.0.0.1",
    "fe80::1",
    "fc00::1",
    "::ffff:10.0.0.1",
    "64:ff9b::a00:1",
    "2002:a00:1::1",
]


@pytest.mark.parametrize("address", PRIVATE_ADDRESSES)
def test_it_refuses_a_host_that_resolves_to_a_private_address_even_with_the_allowance(
    server, storage, media_root, address
):
    resolve = resolver({"internal.example": [address]})

    error = refused(
        server.url("/video.mp4", host="internal.example"),
        storage=storage,
        media_root=media_root,
        resolve=resolve,
    )

    assert error.retryable is False
    assert resolve.asked == ["internal.example"]
    assert server.seen == []


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_it_refuses_a_host_that_resolves_to_loopback_without_the_allowance(
    server, storage, media_root, settings, address
):
    settings.DOWNLOAD_ALLOW_LOOPBACK = False

    error = refused(
        server.url("/video.mp4", host="internal.example"),
        storage=storage,
        media_root=media_root,
        resolve=resolver({"internal.example": [address]}),
    )

    assert error.retryable is False
    assert server.seen == []


def test_it_refuses_a_host_with_a_public_and_a_private_address(server, storage, media_root):
    resolve = resolver({"mixed.example": ["93.184.215.14", "10.0.0.5"]})

    refused(
        server.url("/video.mp4", host="mixed.example"),
        storage=storage,
        media_root=media_root,
        resolve=resolve,
    )

    assert server.seen == []


@pytest.mark.parametrize("host", ["10.0.0.5", "[fd00::1]", "169.254.169.254"])
def test_it_refuses_a_literal_private_address_without_looking_it_up(host, storage, media_root):
    resolve = resolver({})

    refused(f"http://{host}/video.mp4", storage=storage, media_root=media_root, resolve=resolve)

    assert resolve.asked == []


def test_it_connects_to_the_checked_address_with_the_original_host_header(server, storage):
    fetch_result(
        server.url("/video.mp4", host="cdn.example"), kind="video", storage=storage, resolve=CDN
    )

    assert server.seen == [{"target": "/video.mp4", "host": f"cdn.example:{server.port}"}]


def test_it_refuses_when_the_connection_leads_elsewhere_than_the_checked_address(
    server, storage, media_root
):
    # A proxy stands in for any path that connects somewhere other than the address checked.
    client = httpx.Client(proxy=server.url(""), trust_env=False)
    resolve = resolver({"cdn.example": ["127.0.0.2"]})

    with client:
        error = refused(
            server.url("/video.mp4", host="cdn.example"),
            storage=storage,
            media_root=media_root,
            client=client,
            resolve=resolve,
        )

    assert "different network address" in error.message
    assert len(server.seen) == 1


def test_it_verifies_tls_against_the_host_name_while_connecting_to_the_address(tls_server, storage):
    server, client = tls_server
    url = server.url("/video.mp4", host="cdn.example").replace("http:", "https:")

    result = fetch_result(url, kind="video", storage=storage, client=client, resolve=CDN)

    assert result.size == len(MP4)


def test_it_refuses_a_certificate_for_another_host_name(tls_server, storage, media_root):
    server, client = tls_server
    url = server.url("/video.mp4", host="other.example").replace("http:", "https:")

    error = refused(
        url,
        storage=storage,
        media_root=media_root,
        client=client,
        resolve=resolver({"other.example": ["127.0.0.1"]}),
    )

    assert "network error" in error.message


# Redirects


def test_it_refuses_a_redirect_to_a_private_host_at_the_second_hop(server, storage, media_root):
    resolve = resolver({"cdn.example": ["127.0.0.1"], "internal.example": ["10.0.0.5"]})
    target = server.url("/video.mp4", host="internal.example")

    error = refused(
        server.url(f"/redirect?to={target}", host="cdn.example"),
        storage=storage,
        media_root=media_root,
        resolve=resolve,
    )

    assert "private or local network address" in error.message
    assert resolve.asked == ["cdn.example", "internal.example"]
    assert len(server.seen) == 1


def test_it_follows_a_redirect_to_another_allowed_host(server, storage):
    resolve = resolver({"cdn.example": ["127.0.0.1"], "media.example": ["127.0.0.1"]})
    target = server.url("/image.png", host="media.example")

    result = fetch_result(
        server.url(f"/redirect?to={target}", host="cdn.example"),
        kind="image",
        storage=storage,
        resolve=resolve,
    )

    assert result.content_type == "image/png"
    assert [seen["host"] for seen in server.seen] == [
        f"cdn.example:{server.port}",
        f"media.example:{server.port}",
    ]


def test_it_follows_five_redirects(server, storage):
    result = fetch_result(server.url("/chain/5"), kind="video", storage=storage)

    assert result.size == len(MP4)
    assert len(server.seen) == 6


def test_it_refuses_a_sixth_redirect(server, storage, media_root):
    error = refused(server.url("/chain/6"), storage=storage, media_root=media_root)

    assert error.message == "The result link redirected more than 5 times."
    assert error.retryable is False
    assert len(server.seen) == 6


def test_it_refuses_a_redirect_to_a_file_url(server, storage, media_root):
    error = refused(
        server.url("/redirect?to=file:///etc/passwd"), storage=storage, media_root=media_root
    )

    assert "http or https" in error.message


# Storage failures


class PosterlessStorage(FileSystemStorage):
    def _save(self, name, content):
        if name.startswith("posters/"):
            raise OSError("disk full")
        return super()._save(name, content)


def test_it_removes_the_result_when_its_poster_cannot_be_saved(server, media_root):
    storage = PosterlessStorage(location=media_root)

    error = refused(server.url("/video.mp4"), storage=storage, media_root=media_root)

    assert error.retryable is True


def test_fetch_failed_reads_as_its_message():
    error = FetchFailed("The result is not a playable video.", retryable=False)

    assert str(error) == error.message
    assert error.retryable is False
