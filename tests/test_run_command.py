"""The README's first command, run as a new user would: start, log in, generate, Ctrl-C, nothing
left; and started again, it says what was done before instead of doing it again."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock

import httpx
import pytest
from django.conf import settings
from django.core.cache import cache
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.signing import SignedPackage
from django_q.status import Stat, Status

from generations import jobs
from tests.helpers import free_port, wait_for

pytestmark = pytest.mark.slow

# What a stop may take once the web server and the worker are asked to: well inside dev.py's
# grace period, after which it kills them.
QUICK_STOP_SECONDS = 6


def children_of(pid: int) -> list[int]:
    """Direct children of `pid`, read from /proc (Linux)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def group_is_empty(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


class Start:
    """`python3 dev.py start` in a subprocess against a throwaway database, its output read
    line by line; `box` is the framed block it ends its start-up with."""

    def __init__(self, tmp_path: Path, port: int):
        self.port = port
        self.password_file = tmp_path / "first-run-password"
        env = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "PYTEST_VERSION")}
        env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'demo.sqlite3'}"
        env["MEDIA_ROOT"] = str(tmp_path / "media")
        env["OMNIWEB_PASSWORD_FILE"] = str(self.password_file)
        env["OMNIWEB_SIMULATOR_SECONDS"] = "1"
        env.pop("REDIS_URL", None)  # the laptop demo: SQLite and the database broker
        self.lines: list[str] = []
        self.times: dict[str, float] = {}
        self.box_end: int | None = None
        self.proc = subprocess.Popen(
            [sys.executable, "dev.py", "start", "--port", str(port)],
            cwd=settings.BASE_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()

    def read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if "starting the web server" in line:
                self.times["launch"] = time.monotonic()
            recent = self.lines[-12:-1]
            if line.startswith("+--") and any("Omniweb is running at" in x for x in recent):
                self.box_end = len(self.lines)
                self.times["ready"] = time.monotonic()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_until_ready(self) -> list[str]:
        """The box, once printed; fails with the output so far when it never is."""
        assert wait_for(lambda: self.box_end or self.proc.poll() is not None, 120), self.output
        assert self.box_end, self.output
        top = max(n for n in range(self.box_end - 1) if self.lines[n].startswith("+--"))
        return self.lines[top : self.box_end]

    def interrupt(self) -> float:
        """Ctrl-C; returns how long it took to exit."""
        asked = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)
        took = time.monotonic() - asked
        self.reader.join(timeout=5)
        return took


def boxed_value(box: list[str], name: str) -> str:
    return next(re.search(rf"{name}:\s+(.*?)\s*\|$", line)[1] for line in box if f"{name}:" in line)


def hidden(html: str, name: str) -> str:
    return re.search(rf'name="{name}" value="([^"]+)"', html)[1]


def log_in(web: httpx.Client, port: int, password: str) -> None:
    login = web.get("/accounts/login/")
    token = hidden(login.text, "csrfmiddlewaretoken")
    landed = web.post(
        "/accounts/login/",
        data={"username": "admin", "password": password, "csrfmiddlewaretoken": token},
        headers={"Referer": f"http://127.0.0.1:{port}/accounts/login/"},
        follow_redirects=True,
    )
    assert landed.url.path == "/create/", landed.url


def generate(web: httpx.Client, port: int) -> None:
    """Submit one simulated task from Create, paid with the demo's APIMart key."""
    page = web.get("/create/", params={"model": "apimart/Omni-Flash-Ext"}).text
    sent = web.post(
        "/create/",
        data={
            "csrfmiddlewaretoken": hidden(page, "csrfmiddlewaretoken"),
            "model": "apimart/Omni-Flash-Ext",
            "prompt": "a lighthouse at dusk",
            "visibility": "team",
            "form_token": hidden(page, "form_token"),
            "key": re.search(r'<select name="key"[^>]*>\s*<option value="([^"]+)"', page)[1],
        },
        headers={"Referer": f"http://127.0.0.1:{port}/create/"},
    )
    assert sent.status_code == 302 and sent.headers["location"].startswith("/t/"), sent.text


@pytest.mark.skipif(not Path("/proc").exists(), reason="reads the process table from /proc")
def test_start_command_serves_the_site_and_ctrl_c_stops_everything(tmp_path):
    start = Start(tmp_path, free_port())
    port = start.port
    groups: list[int] = []
    try:
        box = start.wait_until_ready()
        assert start.times["ready"] - start.times["launch"] < 10, "worker not alive within 10 s"
        # Short: no migration list, no server banners; it ends with the box, and nothing the
        # servers printed while starting lands after it.
        assert start.box_end <= 12, start.output
        assert "Applying" not in start.output and "Starting development server" not in start.output
        assert f"Omniweb is running at http://127.0.0.1:{port}/" in box[1]
        assert boxed_value(box, "User name") == "admin"
        password = boxed_value(box, "Password")
        time.sleep(1)
        assert start.lines[-len(box) :] == box, start.output
        assert "1000 starting credits granted to admin" in start.output
        assert password in start.password_file.read_text()
        assert start.password_file.stat().st_mode & 0o077 == 0

        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as web:
            log_in(web, port, password)
            admin = web.get("/admin/")
            assert admin.status_code == 200 and "Site administration" in admin.text
            assert web.get("/healthz").json()["worker"]["alive"] is True
            submitted = datetime.now(UTC)
            generate(web, port)

            def settled() -> bool:
                """No active task, by a count made after the submit: /healthz reuses its count
                for a few seconds."""
                body = web.get("/healthz").json()
                counted = body["tasks_as_of"]
                fresh = counted is not None and datetime.fromisoformat(counted) > submitted
                return fresh and body["tasks"]["active"] == 0

            # Done once the dispatcher has polled it; the dispatcher's run goes on for a while.
            assert wait_for(settled, 60)
        assert "processing dispatch d0" in start.output

        groups = children_of(start.proc.pid)
        assert len(groups) == 2  # web server and worker, each leading its own group
    finally:
        took = start.interrupt()
    assert start.proc.returncode == 0, start.output
    assert took < QUICK_STOP_SECONDS, f"took {took:.1f} s to stop\n{start.output}"
    assert "kill" not in start.output.lower(), start.output
    assert "stopped=True" in start.output  # the dispatcher stepped down instead of running on
    assert all(group_is_empty(pgid) for pgid in groups), "a process outlived Ctrl-C"
    assert start.lines[-1] == "[omniweb] stopped"


@pytest.mark.skipif(not Path("/proc").exists(), reason="reads the process table from /proc")
def test_a_second_start_says_what_was_done_before(tmp_path):
    port = free_port()
    first = Start(tmp_path, port)
    try:
        password = boxed_value(first.wait_until_ready(), "Password")
    finally:
        first.interrupt()

    second = Start(tmp_path, port)
    try:
        box = second.wait_until_ready()
    finally:
        second.interrupt()
    assert second.proc.returncode == 0, second.output
    assert "admin's 1000 starting credits were already granted at the first start" in (
        second.output
    )
    assert "granted to admin" not in second.output
    assert boxed_value(box, "User name") == "admin"
    where = boxed_value(box, "Password")
    assert where == f"made at the first start, kept in {second.password_file}"
    assert password not in second.output
    assert password in second.password_file.read_text()


@pytest.fixture
def cluster_status(db):
    """Publish a status for a cluster whose sentinel is this process's parent, as a worker's
    is; the dispatcher finds its own cluster that way."""
    key = Stat.get_key("test-cluster")

    def publish(state) -> None:
        status = Status(pid=os.getppid(), cluster_id="test-cluster")
        status.sentinel, status.status = os.getppid(), state
        get_broker().set_stat(key, SignedPackage.dumps(status), 30)

    yield publish
    cache.clear()


def test_a_dispatcher_steps_down_at_once_when_its_cluster_is_stopping(cluster_status):
    """What the quick Ctrl-C above rests on, without processes."""
    successors = []
    with mock.patch.object(jobs, "async_task", lambda *a, **kw: successors.append(kw["name"])):
        cluster_status(Conf.IDLE)
        began = time.monotonic()
        jobs.dispatch("d0", seconds=0.6)
        assert time.monotonic() - began >= 0.6  # a running cluster's dispatcher runs its time

        cluster_status(Conf.STOPPING)
        began = time.monotonic()
        jobs.dispatch("d0", seconds=30)
        assert time.monotonic() - began < 2
    # Both runs handed over: a stopping worker leaves polling to whoever runs next.
    assert successors == ["d0", "d0"]
