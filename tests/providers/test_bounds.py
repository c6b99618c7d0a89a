"""RELIABILITY 35: numbers from gateways are untrusted.

Estimates, progress, costs, timestamps and durations outside sane bounds, not finite, booleans,
or strings where a number belongs are ignored (None); a status answer full of them still parses,
and never raises.
"""

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import respx
from django.core.exceptions import ValidationError

from generations import providers
from generations.models import Task
from generations.providers import Credentials, State
from generations.providers.base import (
    COST_DECIMAL_PLACES,
    COST_MAX_DIGITS,
    MAX_SECONDS,
    as_cost,
    as_duration,
    as_progress,
    as_seconds,
    timestamp,
)

ABSURD = [
    10**30,
    -5,
    1e308,
    -1e308,
    float("nan"),
    float("inf"),
    "NaN",
    "Infinity",
    "1e999999",
    True,
    False,
    int("9" * 400),
    -int("9" * 400),
    [1],
    {"value": 1},
]
KEY = Credentials(api_key="sk-bounds-0001", base_url="https://your-site.com")


def answer(body: dict) -> dict:
    # Written by hand: NaN and Infinity are not JSON, yet Python's parser, like many, takes them.
    return {"content": json.dumps(body).encode(), "headers": {"Content-Type": "application/json"}}


def poll(gateway: str, body: dict):
    respx.route().respond(200, **answer(body))
    return providers.get(gateway).status("t1", KEY)


def every(value) -> str:
    return f"with {str(value)[:30]!r}"


@respx.mock
def test_apimart_ignores_absurd_numbers_in_a_status_answer():
    """RELIABILITY 35"""
    for value in ABSURD:
        numbers = dict.fromkeys(
            ["progress", "created", "completed", "actual_time", "estimated_time", "cost"], value
        )
        video = {"url": ["https://cdn.example.com/v.mp4"], "expires_at": value}
        body = {
            "code": 200,
            "data": {"id": "t1", "status": "completed", **numbers, "result": {"videos": [video]}},
        }
        status = poll("apimart", body)
        assert status.state == State.SUCCEEDED, every(value)
        assert (status.progress, status.cost, status.estimated_seconds) == (None, None, None), (
            every(value)
        )
        assert status.results[0].expires_at is None, every(value)


@respx.mock
def test_omniakey_ignores_absurd_numbers_in_a_status_answer():
    """RELIABILITY 35"""
    for value in ABSURD:
        running = {"id": "v1", "status": "processing", "created": value, "estimated_time": value}
        assert poll("omniakey", running).estimated_seconds is None, every(value)
        done = {
            "id": "v1",
            "status": "completed",
            "created": value,
            "estimated_time": value,
            "output": {"url": "https://x/v.mp4", "duration": value, "resolution": "1920x1080"},
        }
        status = poll("omniakey", done)
        assert (status.estimated_seconds, status.media_duration) == (None, None), every(value)


@respx.mock
def test_omnivideo_ignores_absurd_numbers_in_a_status_answer():
    """RELIABILITY 35"""
    for value in ABSURD:
        data = {
            "task_id": "t1",
            "task_status": 3,
            "image_url": "https://cdn/x.png",
            "credits": value,
            "created_at": value,
        }
        status = poll("omnivideo", {"code": 200, "msg": "ok", "data": data})
        assert status.state == State.SUCCEEDED and status.cost is None, every(value)


@respx.mock
def test_omnivideo_ignores_absurd_credits_in_a_submit_answer():
    """RELIABILITY 35"""
    for value in ABSURD:
        body = {"code": 200, "msg": "ok", "data": {"task_id": "t1", "credits": value}}
        respx.route().respond(200, **answer(body))
        request = providers.GenerationRequest("omnivideo", "gpt-image-2", "x")
        assert providers.get("omnivideo").submit(request, KEY).cost is None, every(value)


@respx.mock
def test_omixa_ignores_absurd_numbers_in_a_status_answer():
    """RELIABILITY 35"""
    for value in ABSURD:
        job = dict.fromkeys(["progress", "seconds", "wait_seconds", "poll_interval_seconds"], value)
        status = poll("omixa", {"id": "j1", "status": "in_progress", **job})
        assert status.state == State.RUNNING and status.progress is None, every(value)


@respx.mock
def test_numbers_in_range_are_kept():
    """RELIABILITY 35: the bounds refuse nonsense, not ordinary answers."""
    body = {
        "code": 200,
        "data": {
            "id": "t1",
            "status": "processing",
            "progress": 42.9,
            "estimated_time": MAX_SECONDS,
            "cost": "0.12345",
        },
    }
    status = poll("apimart", body)
    assert (status.progress, status.estimated_seconds, status.cost) == (
        42,
        MAX_SECONDS,
        Decimal("0.1235"),
    )


@pytest.mark.parametrize(
    "value, seconds",
    [(0, 0), (600, 600), (600.7, 600), (MAX_SECONDS, MAX_SECONDS), (MAX_SECONDS + 1, None)],
)
def test_seconds_are_whole_and_at_most_a_day(value, seconds):
    """RELIABILITY 35"""
    assert as_seconds(value) == seconds


@pytest.mark.parametrize(
    "value, percent", [(0, 0), (100, 100), (99.9, 99), (101, None), (-1, None)]
)
def test_progress_is_a_percentage(value, percent):
    """RELIABILITY 35"""
    assert as_progress(value) == percent


@pytest.mark.parametrize(
    "value, duration", [(5, 5.0), (4.5, 4.5), (0, None), (-5, None), (MAX_SECONDS + 1, None)]
)
def test_media_durations_are_positive_and_at_most_a_day(value, duration):
    """RELIABILITY 35"""
    assert as_duration(value) == duration


@pytest.mark.parametrize(
    "value, cost",
    [
        (0, Decimal("0")),
        (0.4, Decimal("0.4")),
        ("15", Decimal("15")),
        ("-0", Decimal("0")),
        ("0.00004", Decimal("0.0000")),
        ("99999999.9999", Decimal("99999999.9999")),
        ("99999999.99995", None),  # rounds up to 10**8, which no longer fits
        (10**8, None),
        ("-0.01", None),
        ("sNaN", None),
        ("1" * 41, None),
    ],
)
def test_costs_are_finite_not_negative_and_fit_the_task_field(value, cost):
    """RELIABILITY 35"""
    assert as_cost(value) == cost


def test_the_cost_bounds_are_those_of_the_task_field():
    """RELIABILITY 35: whatever as_cost accepts can be saved as Task.gateway_cost."""
    field = Task._meta.get_field("gateway_cost")
    assert (field.max_digits, field.decimal_places) == (COST_MAX_DIGITS, COST_DECIMAL_PLACES)
    for value in ["99999999.9999", "0.00001", 0.4, 12345678, "1e-30"]:
        field.clean(as_cost(value), None)
    with pytest.raises(ValidationError):
        field.clean(Decimal("100000000"), None)


@pytest.mark.parametrize(
    "value, when",
    [
        (1779332760, datetime.fromtimestamp(1779332760, UTC)),
        (946684800, datetime(2000, 1, 1, tzinfo=UTC)),
        (946684799, None),
        (4102444800, None),  # 2100-01-01
        (1779332760000, None),  # milliseconds
        (-5, None),
    ],
)
def test_timestamps_lie_between_2000_and_2100(value, when):
    """RELIABILITY 35"""
    assert timestamp(value) == when


@pytest.mark.parametrize("value", ABSURD, ids=lambda value: repr(value)[:12])
def test_no_helper_lets_an_absurd_value_through_or_raises(value):
    """RELIABILITY 35"""
    assert as_seconds(value) is None and as_progress(value) is None
    assert as_duration(value) is None and timestamp(value) is None
    assert as_cost(value) is None


@respx.mock
def test_an_absurd_estimate_can_no_longer_overflow_a_time_delta():
    """RELIABILITY 35: 10**30 seconds used to raise OverflowError on every poll."""
    status = poll(
        "apimart",
        {"code": 200, "data": {"id": "t1", "status": "processing", "estimated_time": 10**30}},
    )
    timedelta(seconds=(status.estimated_seconds or 0) / 2)
    assert status.estimated_seconds is None
