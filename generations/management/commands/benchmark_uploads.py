"""How much memory the web process spends on oversized reference images, on a throwaway database.

The command creates its own database (omniweb.benchmarking) with a member who has credits and
an APIMart key, and starts the site's WSGI application in a child process: Django's threaded
WSGI server (a thread per request, as `runserver` serves) on a free local port, DEBUG off, its
media in a temporary folder that is deleted afterwards (never the real folder or a bucket).

The member logs in through the login page and makes one small submit, which loads everything a
submit needs; the child's resident memory then (VmRSS in /proc) is the idle figure. Then four
submits go to the Create page at once, each with three 8192×8192 PNGs of a few hundred
kilobytes (67 megapixels each), and the child's peak resident memory (VmHWM) is the busy
figure. Both come from the same process in the same run. Linux only, for /proc.

It prints figures and never checks them.
"""

from __future__ import annotations

import io
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import PIL
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, connections
from django.test.utils import override_settings
from django.urls import reverse
from PIL import Image

from accounts import ledger
from accounts.models import ProviderKey
from generations.providers import catalog
from omniweb.benchmarking import throwaway_database

POSTS = 4  # submits sent at once
IMAGES = 3  # reference images in each
SIDE = 8192  # pixels a side: the most an upload may have
SPEC = catalog.get("apimart", "Omni-Flash-Ext")  # takes 0, 1 or 3 reference images
USERNAME = "benchmark-uploads"
MIB = 1024 * 1024


def web_child() -> None:
    """The web process the figures come from (run by `manage.py shell -c`): the site's WSGI
    application on the throwaway database, served until it is stopped."""
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
    from django.core.wsgi import get_wsgi_application

    database = os.environ["OMNIWEB_BENCHMARK_DATABASE"]
    media = os.environ["OMNIWEB_BENCHMARK_MEDIA"]
    port = int(os.environ["OMNIWEB_BENCHMARK_PORT"])
    connections.close_all()
    settings.DATABASES["default"]["NAME"] = database
    connection.settings_dict["NAME"] = database
    override_settings(
        # As in production: the debug cursor would keep every query in memory.
        DEBUG=False,
        ALLOWED_HOSTS=["127.0.0.1"],
        SECURE_SSL_REDIRECT=False,
        SESSION_COOKIE_SECURE=False,
        CSRF_COOKIE_SECURE=False,
        MEDIA_ROOT=media,
        PUBLIC_URL="",
        STORAGES={
            "default": {
                "BACKEND": "django.core.files.storage.FileSystemStorage",
                "OPTIONS": {"location": media},
            },
            # Static file URLs without a collectstatic manifest, which a development copy may
            # not have.
            "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
        },
    ).enable()
    server = ThreadedWSGIServer(("127.0.0.1", port), WSGIRequestHandler)
    server.set_app(get_wsgi_application())
    server.serve_forever()


def start_web(database: str, media: str, port: int, log) -> subprocess.Popen:
    code = "from generations.management.commands.benchmark_uploads import web_child; web_child()"
    env = dict(os.environ)
    env.update(
        OMNIWEB_BENCHMARK_DATABASE=database,
        OMNIWEB_BENCHMARK_MEDIA=media,
        OMNIWEB_BENCHMARK_PORT=str(port),
    )
    return subprocess.Popen(
        [sys.executable, str(settings.BASE_DIR / "manage.py"), "shell", "-c", code],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def memory(pid: int) -> dict[str, int]:
    """A process's resident memory now (VmRSS) and at its peak so far (VmHWM), in bytes."""
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            figures[name] = int(value.split()[0]) * 1024
    return figures


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 90)).save(buffer, "PNG")
    return buffer.getvalue()


def mib(size: int) -> str:
    return f"{size / MIB:,.1f} MiB"


class Command(BaseCommand):
    help = (
        f"Start the site in a web process of its own, send {POSTS} submits at once with "
        f"{IMAGES} reference images of {SIDE}×{SIDE} pixels each, and print the process's peak "
        "resident memory against its idle memory, on a throwaway database."
    )

    def handle(self, *args, **options) -> None:
        if not Path("/proc/self/status").exists():
            raise CommandError("This measurement reads /proc, which only Linux has.")
        with (
            throwaway_database(self.stdout) as database,
            tempfile.TemporaryDirectory(prefix="omniweb-benchmark-media-") as media,
            tempfile.TemporaryFile() as log,
        ):
            key, password = self.create_member()
            port = free_port()
            web = start_web(database, media, port, log)
            try:
                self.measure(web, f"http://127.0.0.1:{port}", key, password)
            except BaseException:
                log.seek(0)
                self.stderr.write(log.read()[-3000:].decode(errors="replace"))
                raise
            finally:
                web.terminate()
                try:
                    web.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    web.kill()
                    web.wait()

    def create_member(self) -> tuple[ProviderKey, str]:
        User = get_user_model()
        admin = User.objects.create(username="benchmark-admin", is_staff=True, is_superuser=True)
        password = uuid.uuid4().hex
        member = User.objects.create_user(USERNAME, password=password)
        ledger.grant(member, 1_000_000, by=admin, reason="benchmark")
        key = ProviderKey(provider=SPEC.provider, label="Benchmark", owner=member)
        key.set_secret("sk-benchmark-not-a-real-key")
        key.save()
        return key, password

    def measure(self, web: subprocess.Popen, base: str, key: ProviderKey, password: str) -> None:
        client = httpx.Client(base_url=base, timeout=300)
        self.wait_until_up(web, client)
        self.log_in(client, password)
        small = self.submit(client, key, [("warm-up.png", png(96, 72))])
        if small.status_code != 302:
            raise CommandError(f"The warm-up submit answered {small.status_code}, not 302.")
        idle = memory(web.pid)

        huge = png(SIDE, SIDE)
        files = [(f"huge-{n}.png", huge) for n in range(1, IMAGES + 1)]
        start = threading.Barrier(POSTS)

        def post(_: int) -> httpx.Response:
            with httpx.Client(base_url=base, cookies=client.cookies, timeout=300) as own:
                start.wait()
                return self.submit(own, key, files)

        began = time.perf_counter()
        with ThreadPoolExecutor(POSTS) as pool:
            answers = list(pool.map(post, range(POSTS)))
        elapsed = time.perf_counter() - began
        busy = memory(web.pid)

        self.stdout.write(
            f"Web process: Django's threaded WSGI server, Python {platform.python_version()}, "
            f"Pillow {PIL.__version__}, {os.cpu_count()} CPUs"
        )
        self.stdout.write(
            f"Idle, after logging in and one small submit: {mib(idle['VmRSS'])} resident "
            f"(peak so far {mib(idle['VmHWM'])})"
        )
        self.stdout.write(
            f"{POSTS} submits at once, each with {IMAGES} PNGs of {SIDE}×{SIDE} pixels "
            f"({len(huge) / 1024:,.0f} KiB each): {self.outcomes(answers)} in {elapsed:.1f} s"
        )
        self.stdout.write(
            f"Peak resident memory: {mib(busy['VmHWM'])}, {mib(busy['VmHWM'] - idle['VmRSS'])} "
            f"over idle ({busy['VmHWM'] / idle['VmRSS']:.2f}x)"
        )

    def wait_until_up(self, web: subprocess.Popen, client: httpx.Client) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if web.poll() is not None:
                raise CommandError("The web process stopped before it answered.")
            try:
                client.get(reverse("login"))
                return
            except httpx.TransportError:
                time.sleep(0.2)
        raise CommandError("The web process did not answer within 60 seconds.")

    def log_in(self, client: httpx.Client, password: str) -> None:
        client.get(reverse("login"))
        answer = client.post(
            reverse("login"),
            data={
                "username": USERNAME,
                "password": password,
                "csrfmiddlewaretoken": client.cookies["csrftoken"],
            },
        )
        if answer.status_code != 302:
            raise CommandError(f"Logging in answered {answer.status_code}, not 302.")

    def submit(
        self, client: httpx.Client, key: ProviderKey, files: list[tuple[str, bytes]]
    ) -> httpx.Response:
        data = {
            "model": SPEC.key,
            "prompt": "A red fox in the snow",
            "duration": "6",
            "resolution": "720p",
            "aspect_ratio": "16:9",
            "key": str(key.code),
            "visibility": "private",
            "form_token": str(uuid.uuid4()),
        }
        return client.post(
            reverse("generations-create"),
            data=data,
            files=[("reference_files", (name, body, "image/png")) for name, body in files],
            headers={"X-CSRFToken": client.cookies["csrftoken"]},
        )

    @staticmethod
    def outcomes(answers: list[httpx.Response]) -> str:
        """How the submits were answered, in words: "4 submitted", "4 refused (...)"."""
        counts: dict[str, int] = {}
        for answer in answers:
            if answer.status_code == 302:
                outcome = "submitted"
            elif answer.status_code == 200 and "megapixels" in answer.text:
                outcome = "refused for their pixel count"
            else:
                outcome = f"answered {answer.status_code}"
            counts[outcome] = counts.get(outcome, 0) + 1
        return ", ".join(f"{count} {outcome}" for outcome, count in counts.items())
