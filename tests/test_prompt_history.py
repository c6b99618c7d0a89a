"""Recent prompts on Create: the member's own last distinct prompts, newest first and bounded,
read in one query on the full page only, and each a link that fills the prompt without
JavaScript."""

import html
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import urlencode

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from generations.models import Task
from generations.presets import PROMPT_IN_LINK_CHARS, RECENT_PROMPTS, recent_prompts
from generations.providers import catalog
from tests.test_create import HX

pytestmark = pytest.mark.django_db

CREATE = "/create/"
NOW = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)


def tasks(user, *prompts: str, start: int = 0) -> list[Task]:
    """One task of `user` per prompt, the first the newest (a minute apart)."""
    return Task.objects.bulk_create(
        Task(
            user=user,
            provider="apimart",
            model="Omni-Flash-Ext",
            kind="video",
            prompt=prompt,
            params={"duration": 6},
            key_label="Mine",
            state=Task.State.SUCCEEDED,
            price_unit="task",
            price_credits_per_unit=10,
            price_units=1,
            price_multiplier=Decimal(1),
            credits_charged=10,
            created_at=NOW - timedelta(minutes=start + n),
        )
        for n, prompt in enumerate(prompts)
    )


@pytest.fixture
def as_alice(client, alice):
    client.force_login(alice)
    return client


def offered(page: str) -> list[str]:
    """The recent prompts a page offers, as the text it would fill in."""
    return [
        html.unescape(value)
        for value in re.findall(r'class="recent-prompt" href="[^"]*" data-prompt="([^"]*)"', page)
    ]


def prompt_text(page: str) -> str:
    found = re.search(r'<textarea name="prompt"[^>]*>(.*?)</textarea>', page, re.S)
    return html.unescape(found.group(1)).removeprefix("\n")


def test_recent_prompts_are_distinct_and_newest_first(as_alice, alice):
    tasks(alice, "a heron at dawn", "a fox in snow", "a heron at dawn", "a whale <singing>")

    page = as_alice.get(CREATE).content.decode()

    assert offered(page) == ["a heron at dawn", "a fox in snow", "a whale <singing>"]
    assert "<summary>Recent prompts" in page


def test_recent_prompts_are_bounded(as_alice, alice):
    tasks(alice, *[f"prompt number {n}" for n in range(RECENT_PROMPTS + 5)])

    shown = offered(as_alice.get(CREATE).content.decode())

    assert shown == [f"prompt number {n}" for n in range(RECENT_PROMPTS)]


def test_only_the_members_own_undeleted_prompts_are_offered(as_alice, alice, bob):
    tasks(bob, "bob's secret idea")
    kept, deleted = tasks(alice, "alice's idea", "alice's deleted idea")
    deleted.deleted_at = timezone.now()
    deleted.save(update_fields=["deleted_at"])

    page = as_alice.get(CREATE).content.decode()

    assert offered(page) == ["alice's idea"]
    assert "bob's secret idea" not in page


def test_a_member_without_tasks_sees_no_history(as_alice):
    assert "Recent prompts" not in as_alice.get(CREATE).content.decode()


def test_recent_prompts_take_one_query_newest_first(alice):
    tasks(alice, *[f"take {n}" for n in range(100)])

    with CaptureQueriesContext(connection) as queries:
        found = recent_prompts(alice)

    assert [item.prompt for item in found] == [f"take {n}" for n in range(RECENT_PROMPTS)]
    assert len(queries) == 1
    sql = queries[0]["sql"].upper()
    assert "ORDER BY" in sql and "DESC" in sql and "LIMIT" in sql


def test_a_recent_prompts_link_fills_the_prompt_without_javascript(as_alice, alice):
    tasks(alice, "a heron & a fox at dawn")
    page = as_alice.get(CREATE).content.decode()
    link = html.unescape(re.search(r'class="recent-prompt" href="([^"]*)"', page).group(1))
    assert link == f"{CREATE}?{urlencode({'prompt': 'a heron & a fox at dawn'})}"

    response = as_alice.get(link)

    assert prompt_text(response.content.decode()) == "a heron & a fox at dawn"


def test_a_long_prompt_is_linked_by_its_task(as_alice, alice, bob):
    long = "a slow pan across a misty valley, " * 40
    assert len(long) > PROMPT_IN_LINK_CHARS
    (task,) = tasks(alice, long)
    page = as_alice.get(CREATE).content.decode()
    link = html.unescape(re.search(r'class="recent-prompt" href="([^"]*)"', page).group(1))
    assert link == f"{CREATE}?prompt_of={task.code}"

    assert prompt_text(as_alice.get(link).content.decode()) == long
    # Another member's task fills nothing.
    (theirs,) = tasks(bob, "bob's secret idea")
    response = as_alice.get(CREATE, {"prompt_of": theirs.code})
    assert prompt_text(response.content.decode()) == ""
    assert as_alice.get(CREATE, {"prompt_of": "not-a-code"}).status_code == 200


def test_a_prompt_in_the_address_is_bounded(as_alice):
    response = as_alice.get(CREATE, {"prompt": "x" * (catalog.PROMPT_MAX_CHARS + 500)})

    assert prompt_text(response.content.decode()) == "x" * catalog.PROMPT_MAX_CHARS


def test_the_price_and_field_swaps_read_no_presets_or_history(as_alice, alice):
    tasks(alice, "a heron at dawn")
    swaps = [
        lambda: as_alice.get("/create/fields", {"model": "apimart/Omni-Flash-Ext"}, **HX),
        lambda: as_alice.post("/create/price", {"model": "apimart/Omni-Flash-Ext"}, **HX),
    ]
    for swap in swaps:
        with CaptureQueriesContext(connection) as queries:
            assert swap().status_code == 200
        for query in queries:
            sql = query["sql"].lower()
            assert "generations_preset" not in sql
            assert "generations_task" not in sql
