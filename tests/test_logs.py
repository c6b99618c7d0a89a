"""Production log lines: JSON objects whose engine pairs are fields of their own."""

import json
import logging

import pytest
from django.core.exceptions import ImproperlyConfigured

from omniweb.logs import JsonFormatter


def record(message, *args, exc_info=None):
    return logging.LogRecord("omniweb.engine", logging.INFO, __file__, 1, message, args, exc_info)


def test_engine_lines_become_json_with_their_fields():
    line = JsonFormatter().format(
        record("event=%s task=%s gateway=%s key=%s code=%r", "poll_error", 12, "apimart", 3, "x y")
    )
    entry = json.loads(line)
    assert (entry["event"], entry["task"], entry["gateway"], entry["key"]) == (
        "poll_error",
        "12",
        "apimart",
        "3",
    )
    assert entry["code"] == "x y"
    assert entry["level"] == "INFO" and entry["logger"] == "omniweb.engine"


def test_other_lines_and_exceptions_stay_readable():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        entry = json.loads(JsonFormatter().format(record("plain words", exc_info=sys.exc_info())))
    assert entry["message"] == "plain words" and "ValueError: boom" in entry["exception"]


def test_an_unknown_log_format_stops_start_up():
    import subprocess
    import sys

    from django.conf import settings

    from tests.helpers import child_environment

    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=settings.BASE_DIR,
        env=child_environment(LOG_FORMAT="xml", DEBUG="1"),
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "LOG_FORMAT must be plain or json" in result.stderr
    assert ImproperlyConfigured.__name__ in result.stderr


@pytest.mark.parametrize("debug, expected", [("1", "plain"), ("0", "json")])
def test_json_is_the_default_without_debug(debug, expected):
    import subprocess
    import sys

    from django.conf import settings

    from tests.helpers import child_environment, production_environment

    env = child_environment(**production_environment(DEBUG=debug))
    env.pop("PYTEST_VERSION", None)
    env.pop("LOG_FORMAT", None)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE',"
            "'omniweb.settings'); django.setup(); from django.conf import settings as s; "
            "print(s.LOG_FORMAT)",
        ],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.stdout.strip() == expected, result.stderr[-2000:]
