"""The prompt search of the gallery and My tasks: words in any order, whatever their case, on
SQLite (every word a substring) and on PostgreSQL (English stems and prefixes, through the
full-text index); its bounds, the filters it keeps, its cost in queries, and the benchmark."""

import os
import re
import subprocess
import sys
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from generations.gallery import SEARCH_MAX_WORDS, Cursor, member_choices, search_words
from generations.management.commands.benchmark_gallery import create_gallery
from generations.management.commands.benchmark_search import vary_prompts
from generations.models import Task
from tests.test_gallery import NOW, codes, make_result

POSTGRESQL = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="PostgreSQL's full-text search"
)
SQLITE = pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's substring search")
CARD = re.compile(r'<article class="task-card[^"]*" id="task-([0-9a-f-]{36})"')


def cards(response) -> list[str]:
    """The tasks My tasks shows, in order."""
    return CARD.findall(response.content.decode())


@pytest.fixture
def as_alice(client, alice):
    client.force_login(alice)
    return client


@pytest.fixture
def prompts(alice, bob):
    """Team results whose prompts share some words, newest first by name order."""
    made = {}
    for minutes, (name, prompt) in enumerate(
        [
            ("fox_snow_dawn", "A red fox in the snow at dawn"),
            ("fox_forest", "A fox in a forest, watercolour"),
            ("snow_harbour", "Snow over the harbour at dawn"),
            ("foxes", "Three foxes playing, 35 mm film"),
            ("dragon", "A paper dragon over Kyoto, sci-fi"),
            ("chinese", "一只狐狸在雪中奔跑, cinematic"),
        ]
    ):
        made[name] = make_result(bob, prompt, finished_at=NOW - timedelta(minutes=minutes))
    return made


def shown(response, made: dict) -> set[str]:
    by_code = {str(task.code): name for name, task in made.items()}
    return {by_code[code] for code in codes(response)}


# --- Words ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("fox dawn snow", ["fox", "dawn", "snow"]),
        ("  Snow, FOX & dawn!  fox ", ["snow", "fox", "dawn"]),
        ("sci-fi 35mm 16:9", ["sci", "fi", "35mm", "16", "9"]),
        ("it's (fox) | !snow :*", ["it", "s", "fox", "snow"]),
        ("Café ÉTÉ हिन्दी 狐狸", ["café", "été", "हिन्दी", "狐狸"]),
        ("", []),
        ("!!! -- ...", []),
    ],
)
def test_a_search_is_split_into_lower_case_words_each_once(text, words):
    assert search_words(text) == words


# --- The gallery ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query", ["fox dawn snow", "DAWN snow Fox", "snow, fox; dawn!", "fox+snow"]
)
def test_the_gallery_finds_a_prompt_by_its_words_in_any_order_and_case(as_alice, prompts, query):
    response = as_alice.get("/gallery/", {"q": query})

    assert response.status_code == 200
    assert shown(response, prompts) == {"fox_snow_dawn"}


def test_every_word_has_to_be_in_the_prompt(as_alice, prompts):
    assert shown(as_alice.get("/gallery/", {"q": "snow dawn"}), prompts) == {
        "fox_snow_dawn",
        "snow_harbour",
    }
    response = as_alice.get("/gallery/", {"q": "fox castle"})
    assert codes(response) == []
    assert "No results match these filters." in response.content.decode()


def test_a_word_finds_the_longer_words_it_starts(as_alice, prompts):
    assert shown(as_alice.get("/gallery/", {"q": "fox"}), prompts) == {
        "fox_snow_dawn",
        "fox_forest",
        "foxes",
    }
    assert shown(as_alice.get("/gallery/", {"q": "drag KYO"}), prompts) == {"dragon"}


def test_words_of_scripts_without_spaces_are_found_inside_a_sentence(as_alice, prompts):
    assert shown(as_alice.get("/gallery/", {"q": "狐狸"}), prompts) == {"chinese"}
    assert shown(as_alice.get("/gallery/", {"q": "cinematic 雪中"}), prompts) == {"chinese"}
    assert codes(as_alice.get("/gallery/", {"q": "狐狸 dawn"})) == []


@POSTGRESQL
def test_on_postgresql_words_match_by_their_english_stem(as_alice, prompts, bob):
    running = make_result(bob, "A horse runs along the beach")

    assert shown(as_alice.get("/gallery/", {"q": "foxes"}), prompts) == {
        "fox_snow_dawn",
        "fox_forest",
        "foxes",
    }
    assert codes(as_alice.get("/gallery/", {"q": "running horses"})) == [str(running.code)]
    # A word matches where a word starts, not inside one.
    assert codes(as_alice.get("/gallery/", {"q": "ox"})) == []


@SQLITE
def test_on_sqlite_each_word_is_a_substring(as_alice, prompts):
    assert shown(as_alice.get("/gallery/", {"q": "ox"}), prompts) == {
        "fox_snow_dawn",
        "fox_forest",
        "foxes",
    }
    assert shown(as_alice.get("/gallery/", {"q": "foxes"}), prompts) == {"foxes"}


def test_query_syntax_in_a_word_is_only_text(as_alice, prompts, alice):
    response = as_alice.get("/gallery/", {"q": "fox's & (snow) | !dawn :* \\"})
    assert response.status_code == 200
    assert "fox_snow_dawn" in shown(response, prompts)
    # Words that did not come through the search box cannot break the query either.
    assert list(Task.objects.search(["o'clock", "a\\b", "fox:*|!", "'"])) == []


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            " ".join(f"word{n}" for n in range(SEARCH_MAX_WORDS + 1)),
            "Search for at most 10 words (this has 11); the search was ignored.",
        ),
        ("fox " + "x" * 197, "Search for at most 200 characters; the search was ignored."),
    ],
)
def test_an_over_long_search_is_reported_beside_the_field_and_ignored(
    as_alice, prompts, query, message
):
    response = as_alice.get("/gallery/", {"q": query})

    page = response.content.decode()
    field = page.split('<label for="id_q">')[1].split("</div>")[0]
    assert 'class="field-error" role="alert"' in field
    assert message in field
    assert len(codes(response)) == len(prompts)


def test_ten_words_and_repeated_words_are_within_the_bounds(as_alice, prompts):
    ten = "a red fox in the snow at dawn red fox red fox snow"
    assert len(search_words(ten)) == SEARCH_MAX_WORDS - 2
    assert shown(as_alice.get("/gallery/", {"q": ten}), prompts) == {"fox_snow_dawn"}
    response = as_alice.get("/gallery/", {"q": " ".join(["fox"] * 50)})
    assert "the search was ignored" not in response.content.decode()


def test_the_gallery_search_field_keeps_what_was_typed_and_says_how_it_works(as_alice, prompts):
    page = as_alice.get("/gallery/", {"q": "DAWN snow Fox"}).content.decode()

    assert 'type="search" name="q" value="DAWN snow Fox" maxlength="200"' in page
    assert "Every word, in any order." in page
    assert 'aria-describedby="id_q_helptext"' in page


def test_a_searched_gallery_page_costs_the_queries_of_an_unsearched_one(client, alice, bob, carol):
    create_gallery([alice, bob, carol], 300, favourites_of=alice)
    make_result(bob, "一只狐狸在雪中, a fox")
    client.force_login(alice)
    # The member filter's list is kept for a while after the first page reads it.
    member_choices()
    counts = {}
    for query in ("", "snow fox", "lighthouse watercolour mars", "狐狸 fox", "zebra"):
        with CaptureQueriesContext(connection) as queries:
            response = client.get("/gallery/", {"q": query})
        assert codes(response) or query == "zebra"
        counts[query] = len(queries)
    # A page with nothing to show skips loading results for its tiles.
    assert counts.pop("zebra") <= counts[""]
    assert len(set(counts.values())) == 1, counts


# --- My tasks ------------------------------------------------------------------------------


@pytest.fixture
def mine(alice, bob):
    return {
        "failed_fox": make_result(
            alice, "A red fox in the snow at dawn", state=Task.State.FAILED, kind="image"
        ),
        "done_fox": make_result(
            alice, "Dawn: a fox sleeps in snow", finished_at=NOW - timedelta(minutes=1)
        ),
        "done_boat": make_result(alice, "A paper boat", finished_at=NOW - timedelta(minutes=2)),
        "deleted_fox": make_result(alice, "A fox in the snow at dawn, deleted", deleted_at=NOW),
        "bobs_fox": make_result(bob, "A red fox in the snow at dawn"),
    }


def names(response, made: dict) -> set[str]:
    by_code = {str(task.code): name for name, task in made.items()}
    return {by_code[code] for code in cards(response)}


def test_my_tasks_finds_my_tasks_by_their_words_in_any_order(as_alice, mine):
    response = as_alice.get("/tasks/", {"q": "SNOW dawn fox"})

    assert response.status_code == 200
    # Not bob's task with the same prompt, nor the one alice deleted.
    assert names(response, mine) == {"failed_fox", "done_fox"}


def test_my_tasks_search_keeps_the_other_filters_and_they_keep_it(as_alice, mine):
    response = as_alice.get("/tasks/", {"q": "fox snow", "state": "failed"})

    assert names(response, mine) == {"failed_fox"}
    page = response.content.decode()
    assert '<input type="search" id="filter-q" name="q" value="fox snow" maxlength="200">' in page
    assert '<option value="failed" selected>' in page
    assert '<label for="filter-q">Prompt contains</label>' in page


def test_my_tasks_page_links_keep_the_search(as_alice, alice):
    for i in range(30):
        make_result(alice, f"a fox in the snow, take {i}", finished_at=NOW - timedelta(minutes=i))
        make_result(alice, f"a paper boat, take {i}", finished_at=NOW - timedelta(minutes=i))

    first = as_alice.get("/tasks/", {"q": "snow fox", "kind": "video"})
    link = re.search(r'<a href="\?([^"]+)">Older</a>', first.content.decode()).group(1)
    assert link == "kind=video&amp;q=snow+fox&amp;page=2"
    second = as_alice.get("/tasks/?" + link.replace("&amp;", "&"))
    assert len(cards(first)) == 24 and len(cards(second)) == 6
    assert "paper boat" not in second.content.decode()
    assert "Page 2 of 2" in second.content.decode()


def test_my_tasks_says_when_nothing_matches_the_search(as_alice, mine):
    page = as_alice.get("/tasks/", {"q": "castle"}).content.decode()
    assert "No task matches this search." in page
    page = as_alice.get("/tasks/", {"q": "castle", "kind": "image"}).content.decode()
    assert "No task matches this search and these filters." in page


def test_an_over_long_search_on_my_tasks_is_reported_and_ignored(as_alice, mine):
    query = " ".join(f"word{n}" for n in range(SEARCH_MAX_WORDS + 1))
    response = as_alice.get("/tasks/", {"q": query})

    page = response.content.decode()
    assert "Search for at most 10 words (this has 11); the search was ignored." in page
    assert f'value="{query}"' in page  # kept, to be shortened
    assert names(response, mine) == {"failed_fox", "done_fox", "done_boat"}
    assert "page=" not in page  # one page, and no link carries the ignored search


def test_a_searched_my_tasks_page_costs_the_queries_of_an_unsearched_one(as_alice, alice, mine):
    make_result(alice, "一只狐狸在雪中, a fox")
    counts = {}
    for query in ("", "fox snow", "狐狸 fox", "castle"):
        with CaptureQueriesContext(connection) as queries:
            response = as_alice.get("/tasks/", {"q": query})
        assert cards(response) or query == "castle"
        counts[query] = len(queries)
    # An empty page skips loading the page and its results.
    assert counts.pop("castle") <= counts[""]
    assert len(set(counts.values())) == 1, counts


# --- The index ------------------------------------------------------------------------------


def test_the_prompt_index_exists_on_postgresql_only(db):
    with connection.cursor() as cursor:
        indexes = connection.introspection.get_constraints(cursor, Task._meta.db_table)
    assert ("task_prompt_words" in indexes) == (connection.vendor == "postgresql")


def plan(sql: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql)
        return "\n".join(row[0] for row in cursor.fetchall())


@POSTGRESQL
def test_the_gallery_and_my_tasks_search_through_the_prompt_index(client, alice, bob, carol):
    tasks = create_gallery([alice, bob, carol], 10_000)
    vary_prompts(tasks)
    make_result(alice, "A zebra crossing at night")
    middle = Cursor(tasks[5_000].finished_at, tasks[5_000].pk).encode()
    with connection.cursor() as cursor:
        # What autovacuum does: move new entries from the index's pending list into the index
        # proper, and gather statistics.
        cursor.execute("SELECT gin_clean_pending_list('task_prompt_words')")
        cursor.execute("ANALYZE generations_task")
    client.force_login(alice)

    # Rare words, and words in many prompts (for which walking the newest first and checking
    # each prompt would be the planner's first idea).
    urls = ["/gallery/?q=zebra", "/gallery/?q=night+ZEBRA", "/tasks/?q=zebra+night"]
    urls += ["/gallery/?q=detailed", "/gallery/?q=cinematic", "/tasks/?q=detailed"]
    urls += ["/gallery/?q=detailed&member=alice", "/gallery/?q=cinematic&cursor=" + middle]
    for url in urls:
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url)
        assert response.status_code == 200
        assert len(codes(response) or cards(response)) >= 1, url
        searches = [query["sql"] for query in queries if "to_tsquery" in query["sql"]]
        assert searches, url
        for sql in searches:
            assert "task_prompt_words" in plan(sql), (url, plan(sql))


# --- The benchmark command ------------------------------------------------------------------


@pytest.mark.slow
def test_the_benchmark_prints_each_search_against_the_unfiltered_page(tmp_path):
    env = dict(os.environ)
    if connection.vendor != "postgresql":
        # Its own throwaway database is made next to this (never created) one.
        env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'bench.sqlite3'}"
    env.pop("REDIS_URL", None)
    run = subprocess.run(
        [sys.executable, "manage.py", "benchmark_search", "--results", "300", "--repeat", "2"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert re.search(r"^page\s+search\s+matches\s+median ms\s+p95 ms\s+queries\s+ratio", out, re.M)
    assert re.search(r"^gallery\s+\(none\)\s+300\s+[\d.]+\s+[\d.]+\s+\d+\s+1\.0x", out, re.M)
    assert re.search(r"^gallery\s+cinematic\s+\d+\s+[\d.]+\s+[\d.]+\s+\d+\s+[\d.]+x", out, re.M)
    assert re.search(r"^my tasks\s+snow fox\s+\d+\s+[\d.]+\s+[\d.]+\s+\d+\s+[\d.]+x", out, re.M)
    assert "The throwaway database was dropped." in out
    assert list(tmp_path.iterdir()) == []
