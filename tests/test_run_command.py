"""The README's first command, run as a new user would: start, log in, Ctrl-C, nothing left."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from tests.helpers import free_port, wait_for

pytestmark = pytest.mark.slow


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


@pytest.mark.skipif(not Path("/proc").exists(), reason="reads the process table from /proc")
def test_start_command_serves_the_site_and_ctrl_c_stops_everything(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "PYTEST_VERSION")}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'demo.sqlite3'}"
    env["MEDIA_ROOT"] = str(tmp_path / "media")
    env.pop("REDIS_URL", None)  # the laptop demo: SQLite and the database broker
    proc = subprocess.Popen(
        [sys.executable, "dev.py", "start", "--port", str(port)],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    times: dict[str, float] = {}

    def read_output():
        for line in proc.stdout:
            lines.append(line)
            if "starting the web server" in line:
                times["launch"] = time.monotonic()
            if "Omniweb is running at" in line:
                times["ready"] = time.monotonic()

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    try:
        assert wait_for(lambda: "ready" in times or proc.poll() is not None, 120), "".join(lines)
        assert "ready" in times, "".join(lines)
        assert times["ready"] - times["launch"] < 10, "worker not alive within 10 s of start"
        output = "".join(lines)
        assert f"http://127.0.0.1:{port}/" in output
        password = re.search(r"username 'admin', password '([^']+)'", output)[1]

        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as web:
            login = web.get("/accounts/login/")
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text)[1]
            web.post(
                "/accounts/login/",
                data={"username": "admin", "password": password, "csrfmiddlewaretoken": token},
                headers={"Referer": f"http://127.0.0.1:{port}/accounts/login/"},
            )
            admin = web.get("/admin/")
            assert admin.status_code == 200 and "Site administration" in admin.text
            assert web.get("/healthz").json()["worker"]["alive"] is True

        groups = children_of(proc.pid)
        assert len(groups) == 2  # web server and worker, each leading its own group
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        reader.join(timeout=5)
    assert proc.returncode == 0, "".join(lines)
    assert all(group_is_empty(pgid) for pgid in groups), "a process outlived Ctrl-C"
    assert "[omniweb] stopped" in "".join(lines)
