"""Configuration: environment parsing, start-up refusals, and the production checklist."""

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from generations.checks import check_queue_configuration
from omniweb.env import (
    cache_config,
    database_config,
    encryption_keys,
    env_bool,
    env_int,
    env_list,
    q_cluster_config,
)
from tests.helpers import production_environment

PRODUCTION_ENV = production_environment()


def run_manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run manage.py in a fresh process with exactly the given environment (plus PATH)."""
    clean = {"PATH": os.environ["PATH"], **env}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=settings.BASE_DIR,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_booleans_accept_common_spellings_and_refuse_others():
    assert env_bool("X", False, {"X": "Yes"}) is True
    assert env_bool("X", True, {"X": "off"}) is False
    assert env_bool("X", True, {}) is True
    with pytest.raises(ImproperlyConfigured, match="X must be one of"):
        env_bool("X", False, {"X": "maybe"})


def test_numbers_and_lists_are_parsed_or_refused_with_the_variable_named():
    assert env_int("N", 3, environ={"N": " 12 "}) == 12
    with pytest.raises(ImproperlyConfigured, match="N must be a whole number; got 'ten'"):
        env_int("N", 3, environ={"N": "ten"})
    with pytest.raises(ImproperlyConfigured, match="N must be at least 1"):
        env_int("N", 3, minimum=1, environ={"N": "0"})
    assert env_list("HOSTS", environ={"HOSTS": "a.example, b.example ,"}) == [
        "a.example",
        "b.example",
    ]


def test_sqlite_url_gets_wal_busy_timeout_and_immediate_transactions(tmp_path):
    config = database_config(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    assert config["ENGINE"] == "django.db.backends.sqlite3"
    assert config["NAME"] == str(tmp_path / "db.sqlite3")
    assert "journal_mode=WAL" in config["OPTIONS"]["init_command"]
    assert config["OPTIONS"]["timeout"] >= 5
    assert config["OPTIONS"]["transaction_mode"] == "IMMEDIATE"


def test_postgres_url_is_split_into_its_parts():
    config = database_config("postgres://omni:s%40cret@db.internal:6543/studio")
    assert config["ENGINE"] == "django.db.backends.postgresql"
    assert (config["USER"], config["PASSWORD"]) == ("omni", "s@cret")
    assert (config["HOST"], config["PORT"], config["NAME"]) == ("db.internal", 6543, "studio")
    assert config["CONN_HEALTH_CHECKS"] is True


@pytest.mark.parametrize("url", ["mysql://root@localhost/db", "sqlite://:memory:", "nonsense"])
def test_unsupported_database_urls_are_refused(url):
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL"):
        database_config(url)


def test_without_redis_the_queue_uses_the_database_and_a_shared_cache_table():
    assert q_cluster_config(None, workers=2)["orm"] == "default"
    assert "redis" not in q_cluster_config(None, workers=2)
    assert cache_config(None)["BACKEND"] == "django.core.cache.backends.db.DatabaseCache"


def test_with_redis_the_queue_and_the_cache_use_it():
    url = "redis://cache.internal:6379/2"
    q = q_cluster_config(url, workers=4)
    assert q["redis"] == url and "orm" not in q and q["workers"] == 4
    assert cache_config(url) == {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": url,
    }


def test_settings_module_reads_database_and_redis_urls_from_the_environment(tmp_path):
    env = {
        **PRODUCTION_ENV,
        "DATABASE_URL": "postgres://omni@db.internal:5432/studio",
        "REDIS_URL": "redis://cache.internal:6379/1",
    }
    code = (
        "from django.conf import settings as s; import json; print(json.dumps(["
        "s.DATABASES['default']['HOST'], s.DATABASES['default']['NAME'],"
        "s.Q_CLUSTER.get('redis'), s.CACHES['default']['LOCATION'], s.DEBUG]))"
    )
    result = run_manage("shell", "--no-imports", "-c", code, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        "db.internal",
        "studio",
        "redis://cache.internal:6379/1",
        "redis://cache.internal:6379/1",
        False,
    ]


def test_start_up_refuses_a_missing_secret_key_when_debug_is_off():
    env = {k: v for k, v in PRODUCTION_ENV.items() if k != "SECRET_KEY"}
    result = run_manage("check", env=env)
    assert result.returncode != 0
    assert "SECRET_KEY is not set. It is required when DEBUG is off" in result.stderr


def test_start_up_refuses_a_malformed_value_naming_the_variable():
    result = run_manage("check", env={**PRODUCTION_ENV, "OMNIWEB_WORKERS": "lots"})
    assert result.returncode != 0
    assert "OMNIWEB_WORKERS must be a whole number; got 'lots'" in result.stderr


def test_debug_runs_without_a_secret_key():
    result = run_manage("check", env={"DEBUG": "1"})
    assert result.returncode == 0, result.stderr


def test_deploy_checklist_passes_with_production_values():
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_deploy_checklist_fails_without_https_settings():
    env = {k: v for k, v in PRODUCTION_ENV.items() if k != "OMNIWEB_HTTPS"}
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode != 0
    assert "SESSION_COOKIE_SECURE" in result.stderr


def test_shipped_queue_configuration_passes_its_start_up_check():
    assert check_queue_configuration(None) == []


@pytest.mark.parametrize(
    "change, error_id",
    [
        ({"timeout": 120, "retry": 120}, "omniweb.E001"),
        ({"max_attempts": 0}, "omniweb.E002"),
        ({"catch_up": True}, "omniweb.E003"),
    ],
)
def test_unsafe_queue_configuration_is_refused_at_start_up(change, error_id):
    with override_settings(Q_CLUSTER={**settings.Q_CLUSTER, **change}):
        assert [e.id for e in check_queue_configuration(None)] == [error_id]


def test_suite_runs_on_the_database_the_environment_names():
    # Guards the CI's PostgreSQL run against silently testing SQLite.
    url = os.environ.get("DATABASE_URL", "")
    expected = "postgresql" if url.startswith(("postgres", "postgresql")) else "sqlite3"
    assert settings.DATABASES["default"]["ENGINE"].endswith(expected)
    assert bool(settings.REDIS_URL) == bool(os.environ.get("REDIS_URL"))


def test_start_up_refuses_missing_encryption_keys_when_debug_is_off():
    env = {k: v for k, v in PRODUCTION_ENV.items() if k != "OMNIWEB_ENCRYPTION_KEYS"}
    result = run_manage("check", env=env)
    assert result.returncode != 0
    assert "OMNIWEB_ENCRYPTION_KEYS is not set" in result.stderr


def test_a_malformed_encryption_key_is_refused_without_echoing_it():
    result = run_manage(
        "check", env={**PRODUCTION_ENV, "OMNIWEB_ENCRYPTION_KEYS": "hunter2-not-a-fernet-key"}
    )
    assert result.returncode != 0
    assert "key number 1 is not a valid Fernet key" in result.stderr
    assert "hunter2" not in result.stderr


def test_encryption_keys_keep_their_order_newest_first():
    from cryptography.fernet import Fernet

    new, old = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    assert encryption_keys([new, old]) == [new, old]


# --- gunicorn worker recycling -------------------------------------------------------------------


def gunicorn_recycling(monkeypatch, value: str | None = None) -> tuple[int, int]:
    """max_requests and max_requests_jitter as gunicorn.conf.py sets them."""
    monkeypatch.delenv("OMNIWEB_MAX_REQUESTS", raising=False)
    if value is not None:
        monkeypatch.setenv("OMNIWEB_MAX_REQUESTS", value)
    config = runpy.run_path(str(Path(settings.BASE_DIR) / "gunicorn.conf.py"))
    return config["max_requests"], config["max_requests_jitter"]


def worker_limits(max_requests: int, jitter: int, count: int) -> set[int]:
    """How many requests each of `count` gunicorn workers answers before it is replaced."""
    from gunicorn.config import Config
    from gunicorn.workers.base import Worker

    config = Config()
    config.set("max_requests", max_requests)
    config.set("max_requests_jitter", jitter)
    limits = set()
    for age in range(count):
        worker = Worker(age, os.getpid(), [], None, 60, config, None)
        worker.tmp.close()
        limits.add(worker.max_requests)
    return limits


def test_gunicorn_replaces_a_worker_only_after_many_requests_at_staggered_counts(monkeypatch):
    max_requests, jitter = gunicorn_recycling(monkeypatch)
    assert (max_requests, jitter) == (50_000, 5_000)
    limits = worker_limits(max_requests, jitter, count=20)
    assert all(50_000 <= limit <= 55_000 for limit in limits)
    assert len(limits) > 1  # processes started together are not replaced together


def test_gunicorn_worker_recycling_is_set_from_the_environment(monkeypatch):
    assert gunicorn_recycling(monkeypatch, "2000") == (2000, 200)
    assert gunicorn_recycling(monkeypatch, "0") == (0, 0)
    assert worker_limits(0, 0, count=1) == {sys.maxsize}  # 0: never replaced


@pytest.mark.parametrize("value", ["many", "-1", "1.5"])
def test_gunicorn_stops_on_a_bad_request_limit(monkeypatch, value):
    with pytest.raises(SystemExit, match="OMNIWEB_MAX_REQUESTS must be"):
        gunicorn_recycling(monkeypatch, value)
