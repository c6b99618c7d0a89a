#!/usr/bin/env python3
"""The README's two commands, written with the standard library only.

    python3 dev.py start   install into .venv, migrate, create an admin, run web server + worker
    python3 dev.py test    install test tools into .venv, run the linters and the whole test suite

Dependencies come from pyproject.toml; a stamp in .venv records what was installed so a second
run starts at once. POSIX only (Linux, macOS): stopping relies on process groups.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
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


def manage(*args: str, env: dict[str, str]) -> None:
    subprocess.run([PYTHON, ROOT / "manage.py", *args], check=True, env=env, cwd=ROOT)


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
        # Not answering yet (still starting) or not JSON yet: ask again shortly.
        with contextlib.suppress(OSError, ValueError):
            with urllib.request.urlopen(url, timeout=2) as response:
                body = json.load(response)
            if body.get("worker", {}).get("alive"):
                return body
        time.sleep(0.5)
    return None


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
    manage("migrate", "--noinput", env=env)
    manage("createcachetable", env=env)
    manage("ensure_admin", env=env)

    address = f"{args.host}:{args.port}"
    # The first generation works without any outside account: simulator keys and credits.
    manage("ensure_demo", "--site", f"http://{address}", env=env)
    # Gateways that call back (OmniaKey's webhook; here the simulator) need our address.
    env.setdefault("OMNIWEB_PUBLIC_URL", f"http://{address}")
    say("starting the web server and the worker")
    procs = [
        subprocess.Popen(
            [PYTHON, "manage.py", "runserver", address, "--noreload"],
            cwd=ROOT,
            env=env,
            start_new_session=True,
        ),
        subprocess.Popen(
            [PYTHON, "manage.py", "qcluster"], cwd=ROOT, env=env, start_new_session=True
        ),
    ]

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    # Set both explicitly: a process started in the background inherits SIGINT as ignored.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        url = f"http://{address}/"
        if wait_until_healthy(url + "healthz", 60, procs):
            say(f"Omniweb is running at {url}  (web server and worker; Ctrl-C stops both)")
        else:
            say(f"started, but {url}healthz does not report a live worker yet; see the log above")
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        say("a process exited on its own; stopping the other")
        return 1
    except KeyboardInterrupt:
        say("stopping web server and worker")
        return 0
    finally:
        stop(procs)
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
