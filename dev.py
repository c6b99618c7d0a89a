#!/usr/bin/env python3
"""The README's two commands, written with the standard library only.

    python3 dev.py start   install into .venv, migrate, create an admin, run web server + worker
    python3 dev.py test    install test tools into .venv, run the linters and the whole test suite

Dependencies come from pyproject.toml; a stamp in .venv records what was installed so a second
run starts at once. POSIX only (Linux, macOS): stopping relies on process groups.

`start` keeps its output short: the set-up commands and the servers' start-up chatter are shown
only when something fails, and it ends with a box saying where to log in, and as whom. The
admin's first password is kept in var/first-run-password (OMNIWEB_PASSWORD_FILE to move it).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / "omniweb-installed.txt"
# How long the web server and the worker get to stop on their own before they are killed.
STOP_GRACE_SECONDS = 10
PASSWORD_FILE = Path(os.environ.get("OMNIWEB_PASSWORD_FILE") or ROOT / "var" / "first-run-password")


def say(message: str) -> None:
    print(f"[omniweb] {message}", flush=True)


def requirements(extras: list[str]) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return reqs


def ensure_venv(extras: list[str]) -> None:
    """Create .venv and install what pyproject.toml asks for, unless already done."""
    reqs = requirements(extras)
    if not PYTHON.exists():
        say(f"creating a virtual environment in {VENV.relative_to(ROOT)}/")
        venv.EnvBuilder(with_pip=True).create(VENV)
    installed = set(STAMP.read_text().splitlines()) if STAMP.exists() else set()
    if set(reqs) <= installed:
        return
    say("installing dependencies (first run only; this takes a minute)")
    subprocess.run(
        [PYTHON, "-m", "pip", "install", "--disable-pip-version-check", "--quiet", *reqs],
        check=True,
    )
    STAMP.write_text("\n".join(sorted(installed | set(reqs))))


def manage(*args: str, env: dict[str, str]) -> str:
    """Run a manage.py command quietly and return what it printed; show it all if it fails."""
    result = subprocess.run(
        [PYTHON, ROOT / "manage.py", *args], env=env, cwd=ROOT, capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.stdout.write(result.stdout)
        sys.stdout.write(result.stderr)
        say(f"manage.py {args[0]} failed with exit code {result.returncode}; its output is above")
        raise SystemExit(1)
    return result.stdout


def dotenv_defines(name: str) -> bool:
    path = ROOT / ".env"
    if not path.exists():
        return False
    return any(
        line.strip().startswith(f"{name}=") or line.strip().startswith(f"export {name}=")
        for line in path.read_text().splitlines()
    )


def demo_environment() -> dict[str, str]:
    """The laptop demo runs with DEBUG on unless the environment or .env says otherwise."""
    env = dict(os.environ)
    if "DEBUG" not in env and not dotenv_defines("DEBUG"):
        env["DEBUG"] = "1"
    return env


def wait_until_healthy(url: str, seconds: float, procs: list[subprocess.Popen]) -> dict | None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            return None
        # Not answering yet (still starting) or not JSON yet: ask again shortly. Patiently: a
        # question given up on is still answered and logged later, after the box.
        with contextlib.suppress(OSError, ValueError):
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
            if body.get("worker", {}).get("alive"):
                return body
        time.sleep(0.5)
    return None


def shown_path(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def keep_password(username: str, password: str) -> None:
    """Keep the first admin's password where only this user can read it."""
    PASSWORD_FILE.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(PASSWORD_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when the file was already there
    with os.fdopen(fd, "w") as file:
        file.write(f"user name: {username}\npassword: {password}\n")


def kept_for(username: str) -> bool:
    """Whether the password file holds the first password of `username`."""
    with contextlib.suppress(OSError):
        return f"user name: {username}\n" in PASSWORD_FILE.read_text()
    return False


def login_lines(admin_output: str) -> list[str]:
    """Who logs in, from what ensure_admin printed: a new admin's password, or where it is."""
    created = re.search(r"username '([^']+)', password '([^']+)'", admin_output)
    if created:
        username, password = created.groups()
        keep_password(username, password)
        return [
            f"User name:  {username}",
            f"Password:   {password}",
            f"            (new; also kept in {shown_path(PASSWORD_FILE)})",
        ]
    existing = re.search(r"already exists \('([^']+)'\)", admin_output)
    username = existing[1] if existing else "admin"
    if kept_for(username):
        password = [f"Password:   made at the first start, kept in {shown_path(PASSWORD_FILE)}"]
    else:
        password = [
            "Password:   shown at the first start; to set a new one, run",
            f"            .venv/bin/python manage.py changepassword {username}",
        ]
    return [f"User name:  {username}", *password]


def boxed(lines: list[str]) -> str:
    width = max(len(line) for line in lines)
    edge = "+" + "-" * (width + 4) + "+"
    return "\n".join([edge, *(f"|  {line.ljust(width)}  |" for line in lines), edge]) + "\n"


class Relay:
    """Passes on what the web server and the worker print, once start-up is over.

    Their start-up chatter (banners, every worker process saying it is ready) would bury the
    box that says where to log in: it is held back, and shown only if start-up fails.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held: collections.deque[str] = collections.deque(maxlen=2000)
        self.passing = False
        self.last_line_at = time.monotonic()
        self.threads: list[threading.Thread] = []

    def follow(self, proc: subprocess.Popen) -> None:
        thread = threading.Thread(target=self.copy, args=(proc.stdout,), daemon=True)
        self.threads.append(thread)
        thread.start()

    def copy(self, stream) -> None:
        for line in stream:
            with self.lock:
                if self.passing:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                else:
                    self.held.append(line)
                    self.last_line_at = time.monotonic()

    def settle(self, quiet: float, at_most: float) -> None:
        """Wait until they have printed nothing for `quiet` seconds (at most `at_most`): a
        worker process saying it is ready, or the log line of the last health question, comes
        a moment after the worker is reported alive, and belongs with the rest."""
        deadline = time.monotonic() + at_most
        while time.monotonic() < deadline:
            with self.lock:
                if time.monotonic() - self.last_line_at >= quiet:
                    return
            time.sleep(0.05)

    def release(self, *, show_held: bool, then: str = "") -> None:
        """From now on pass everything on; first show what was held back, or drop it, and
        write `then`, so that no line of theirs lands inside it."""
        with self.lock:
            if show_held:
                sys.stdout.writelines(self.held)
            self.held.clear()
            sys.stdout.write(then)
            sys.stdout.flush()
            self.passing = True

    def join(self, seconds: float) -> None:
        for thread in self.threads:
            thread.join(seconds)


def stop(procs: list[subprocess.Popen]) -> None:
    """Ask each process to stop, wait a grace period, then kill what is left of its group.

    Each child runs in its own process group, so the terminal's Ctrl-C reaches only this script
    and the worker gets one clean SIGTERM instead of a SIGINT racing through all its children,
    which is what makes qcluster hang on shutdown.
    """
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            say(f"process {proc.pid} did not stop in {STOP_GRACE_SECONDS}s; killing it")
    for proc in procs:
        # The group also holds the worker's own child processes; none may outlive us.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.wait()


def start(args: argparse.Namespace) -> int:
    ensure_venv([])
    env = demo_environment()
    say("preparing the database")
    manage("migrate", "--noinput", "--verbosity", "0", env=env)
    manage("createcachetable", env=env)
    login = login_lines(manage("ensure_admin", "--no-color", env=env))

    address = f"{args.host}:{args.port}"
    # The first generation works without any outside account: simulator keys and credits.
    for line in manage("ensure_demo", "--site", f"http://{address}", env=env).splitlines():
        if line.strip():
            say(line.strip())
    # Gateways that call back (OmniaKey's webhook; here the simulator) need our address.
    env.setdefault("OMNIWEB_PUBLIC_URL", f"http://{address}")
    # The web server and the worker share one directory of metric samples, so /metrics shows
    # the worker's gateway latencies too; each start begins with an empty one.
    samples = Path(env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(ROOT / "var" / "prometheus")))
    shutil.rmtree(samples, ignore_errors=True)
    samples.mkdir(parents=True, exist_ok=True)
    # Line by line, as they print it: their output passes through the relay below.
    env["PYTHONUNBUFFERED"] = "1"
    say("starting the web server and the worker")
    commands = [["runserver", address, "--noreload"], ["qcluster"]]
    procs: list[subprocess.Popen] = []
    relay = Relay()

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    # Set both explicitly: a process started in the background inherits SIGINT as ignored.
    # Set before the processes start, so that a Ctrl-C at any point stops those already started.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        for command in commands:
            proc = subprocess.Popen(
                [PYTHON, "manage.py", *command],
                cwd=ROOT,
                env=env,
                start_new_session=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
            )
            procs.append(proc)
            relay.follow(proc)
        url = f"http://{address}/"
        if wait_until_healthy(url + "healthz", 60, procs):
            relay.settle(quiet=0.5, at_most=3)
            lines = [f"Omniweb is running at {url}", "", *login, "", "Ctrl-C stops it."]
            relay.release(show_held=False, then=boxed(lines))
        else:
            relay.release(show_held=True)
            say(f"started, but {url}healthz does not report a live worker yet; see the log above")
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        say("a process exited on its own; stopping the other")
        return 1
    except KeyboardInterrupt:
        relay.release(show_held=False)
        say("stopping web server and worker")
        return 0
    finally:
        stop(procs)
        relay.join(5)
        say("stopped")


def test(args: argparse.Namespace) -> int:
    ensure_venv(["test"])
    bin_dir = VENV / "bin"
    # makemigrations only needs settings to load; a DEBUG run provides a throwaway key.
    env = {**os.environ, "DEBUG": os.environ.get("DEBUG", "1")}
    steps = [
        ("ruff check", [bin_dir / "ruff", "check", "."], os.environ),
        ("ruff format --check", [bin_dir / "ruff", "format", "--check", "."], os.environ),
        (
            "makemigrations --check",
            [PYTHON, "manage.py", "makemigrations", "--check", "--dry-run"],
            env,
        ),
        ("pytest", [PYTHON, "-m", "pytest", *args.pytest_args], os.environ),
    ]
    failed = []
    for name, command, step_env in steps:
        say(f"running {name}")
        # pytest exits 5 when it collected no test: that is a failure too.
        if subprocess.run(command, cwd=ROOT, env=step_env).returncode != 0:
            failed.append(name)
    if failed:
        say("FAILED: " + ", ".join(failed))
        return 1
    say("all checks passed")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start_parser = commands.add_parser("start", help="run the web server and the worker")
    start_parser.add_argument("--host", default="127.0.0.1")
    start_parser.add_argument("--port", type=int, default=8000)
    test_parser = commands.add_parser("test", help="run the linters and the test suite")
    test_parser.add_argument("pytest_args", nargs="*", help="extra arguments for pytest")
    args = parser.parse_args()
    return start(args) if args.command == "start" else test(args)


if __name__ == "__main__":
    sys.exit(main())
