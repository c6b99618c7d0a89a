"""Small helpers that turn environment variables into settings.

Each helper fails loudly (ImproperlyConfigured naming the variable and the value it got), so a
typo in a deployment stops the process at start-up instead of surfacing later as odd behaviour.
The builders at the bottom take plain values so tests can check them without reloading settings.
"""

import ipaddress
import os
import re
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def env_str(name: str, default: str | None = None, environ: Mapping[str, str] = os.environ):
    value = environ.get(name, "").strip()
    return value if value else default


def env_bool(name: str, default: bool, environ: Mapping[str, str] = os.environ) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ImproperlyConfigured(
        f"{name} must be one of 1/0, true/false, yes/no, on/off; got {raw!r}."
    )


def env_int(
    name: str, default: int, minimum: int = 0, environ: Mapping[str, str] = os.environ
) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number; got {raw!r}.") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}; got {value}.")
    return value


def env_list(
    name: str, default: list[str] | None = None, environ: Mapping[str, str] = os.environ
) -> list[str]:
    raw = environ.get(name, "").strip()
    if not raw:
        return list(default or [])
    return [item.strip() for item in raw.split(",") if item.strip()]


def dev_secret(path: Path, make: Callable[[], str] = lambda: secrets.token_urlsafe(50)) -> str:
    """Return a random secret kept in `path`, creating it with `make()` on first use.

    Only for DEBUG and test runs: it keeps sessions and stored keys valid across restarts of a
    laptop demo without anybody having to invent a key.
    """
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = make()
    # Create with owner-only permissions before writing, so the secret is never world-readable.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    return value


def database_config(url: str, conn_max_age: int = 60) -> dict[str, Any]:
    """Django DATABASES entry for a DATABASE_URL (sqlite:///path or postgres://...)."""
    try:
        config = dj_database_url.parse(url, conn_max_age=conn_max_age, conn_health_checks=True)
    except ValueError as exc:
        raise ImproperlyConfigured(f"DATABASE_URL could not be read ({exc}): {url!r}.") from None
    engine = config.get("ENGINE", "")
    if engine == "django.db.backends.sqlite3":
        if not config.get("NAME") or config["NAME"] == ":memory:":
            raise ImproperlyConfigured(
                "DATABASE_URL must name a SQLite file (sqlite:///path/to/db.sqlite3): the web "
                "server and the worker share it."
            )
        # The web server and the worker write to one file: WAL lets readers and a writer work
        # at once, the busy timeout waits for a lock instead of failing, and IMMEDIATE takes the
        # write lock when a transaction starts so two writers never deadlock on an upgrade.
        config["CONN_MAX_AGE"] = 0
        config["OPTIONS"] = {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
        }
    elif engine not in ("django.db.backends.postgresql",):
        raise ImproperlyConfigured(
            f"DATABASE_URL must be a sqlite:/// or postgres:// URL; got engine {engine!r}."
        )
    return config


def cache_config(redis_url: str | None) -> dict[str, Any]:
    """Redis when configured; otherwise a database table every process can see.

    django-q2 keeps its cluster heartbeat in the cache, so a per-process memory cache would
    hide a live worker from the web server's health check.
    """
    if redis_url:
        return {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": redis_url}
    return {
        "BACKEND": "django.core.cache.backends.db.DatabaseCache",
        "LOCATION": "omniweb_cache",
    }


def q_cluster_config(redis_url: str | None, workers: int) -> dict[str, Any]:
    """django-q2 settings. Our own jobs retry with backoff, so the queue retries little."""
    config: dict[str, Any] = {
        "name": "omniweb",
        "workers": workers,
        # A job is killed after `timeout` seconds; the broker hands it out again only after
        # `retry` seconds, which must be longer, or a slow job would run twice at once. The
        # dispatcher works for DISPATCH_SECONDS and then finishes what it leased (a poll and a
        # download at most), which the start-up check proves fits inside `timeout`.
        "timeout": 300,
        "retry": 360,
        "max_attempts": 2,
        "catch_up": False,
        "ack_failures": True,
        "save_limit": 500,
        "label": "Background jobs",
    }
    if redis_url:
        config["redis"] = redis_url
    else:
        config["orm"] = "default"
        # The ORM broker polls the table; once a second is quick enough and spares SQLite.
        config["poll"] = 1
    return config


def encryption_keys(raw: list[str]) -> list[str]:
    """Validate OMNIWEB_ENCRYPTION_KEYS: Fernet keys, newest first. Never echoes a key."""
    from cryptography.fernet import Fernet

    for position, key in enumerate(raw, start=1):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            raise ImproperlyConfigured(
                f"OMNIWEB_ENCRYPTION_KEYS: key number {position} is not a valid Fernet key "
                "(32 url-safe base64-encoded bytes; make one with `python3 -c 'from "
                "cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`)."
            ) from None
    return raw


_HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def gateway_allowed_hosts(raw: list[str]) -> list[str]:
    """Validate OMNIWEB_GATEWAY_ALLOWED_HOSTS: host names, addresses or CIDR ranges that outbound
    requests may reach although they are private. Returns them normalised (lower-case names,
    ranges as a.b.c.d/n)."""
    allowed = []
    for entry in raw:
        text = entry.strip().lower()
        bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
        try:
            allowed.append(str(ipaddress.ip_network(bare)))
            continue
        except ValueError as exc:
            problem = str(exc)
        name = bare.removesuffix(".")
        labels = name.split(".")
        looks_numeric = all(label.isdigit() for label in labels)
        if (
            "/" in bare
            or ":" in bare
            or looks_numeric
            or len(name) > 253
            or not all(_HOST_LABEL.fullmatch(label) for label in labels)
        ):
            looks_like_range = "/" in bare and "://" not in bare
            detail = f" ({problem})" if looks_like_range or looks_numeric else ""
            raise ImproperlyConfigured(
                f"OMNIWEB_GATEWAY_ALLOWED_HOSTS: {entry!r} is neither a host name nor an address "
                f"or CIDR range{detail}. Give host names (video.internal), addresses (10.0.0.5) "
                "or ranges (10.0.0.0/24), comma-separated, without schemes or ports."
            )
        allowed.append(name)
    return allowed
