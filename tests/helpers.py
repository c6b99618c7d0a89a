"""Helpers for tests that start real processes (worker, web server) against the test database."""

import os
import socket
import time
from collections.abc import Callable

from django.db import connection


def database_url() -> str:
    """A DATABASE_URL that reaches the current test database from another process."""
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    auth = s["USER"] + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def child_environment(**overrides: str) -> dict[str, str]:
    """The tests' own environment, pointed at the test database."""
    env = dict(os.environ)
    env["DATABASE_URL"] = database_url()
    env.update(overrides)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], object], seconds: float, interval: float = 0.2):
    """Return the first truthy value of `condition()` within `seconds`, else None."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    return None


def production_environment(**overrides: str) -> dict[str, str]:
    """Settings a real deployment would have, with throwaway secrets made for this test run."""
    from cryptography.fernet import Fernet

    env = {
        "PATH": os.environ["PATH"],
        "DEBUG": "0",
        "SECRET_KEY": "x7Qk2m9Vb3Rt8Lw1Zs6Np4Hc0Yf5Jd7Ga2Ue9Ko3Ti8Wr1Pm6Sq4Xn0Cv5Bh",
        "OMNIWEB_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "ALLOWED_HOSTS": "studio.example.com",
        "CSRF_TRUSTED_ORIGINS": "https://studio.example.com",
        "OMNIWEB_HTTPS": "1",
    }
    env.update(overrides)
    return env
