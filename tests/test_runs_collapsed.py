"""My tasks and the gallery can show one card per run: the starred task of the run, else
its first, with how many more the run holds."""

import pytest

from accounts import ledger
from generations.models import Favourite, Run, Task
from generations.services import Order, OrderItem, submit_order
from tests.test_create import make_key
from tests.test_submit_path import CAT

TASKS = "/tasks/"


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path


@pytest.fixture
def runs(alice, carol):
    ledger.grant(alice, 10_000, by=carol, reason="welcome")
    key = make_key(alice, CAT.provider)
    three = submit_order(alice, Order(items=tuple(OrderItem(CAT, key) for _ in range(3))))
    lone = submit_order(alice, Order(items=(OrderItem(CAT, key),), name="the lone one"))
    return three, lone


def codes_on(html: str) -> set[str]:
    return {str(task.code) for task in Task.objects.all() if str(task.code) in html}


def test_my_tasks_by_run_shows_each_runs_first_task_and_how_many_more(client, alice, runs):
    three, lone = runs
    client.force_login(alice)
    everything = client.get(TASKS).content.decode()
    assert len(codes_on(everything)) == 4

    html = client.get(TASKS, {"by": "run"}).content.decode()
    assert codes_on(html) == {str(three.tasks[0].code), str(lone.tasks[0].code)}
    assert f'<a href="/run/{three.run.code}/">Run: {three.run.name} (3 tasks)</a>' in html
    assert "the lone one" not in html  # a run of one has nothing more to show


def test_the_starred_task_stands_for_its_run(client, alice, runs):
    three, _ = runs
    Favourite.objects.create(user=alice, task=three.tasks[2])
    client.force_login(alice)
    html = client.get(TASKS, {"by": "run"}).content.decode()
    assert str(three.tasks[2].code) in codes_on(html)
    assert str(three.tasks[0].code) not in codes_on(html)


def test_filters_apply_before_runs_are_collapsed(client, alice, runs):
    three, _ = runs
    Task.objects.filter(pk=three.tasks[1].pk).update(state=Task.State.FAILED)
    client.force_login(alice)
    html = client.get(TASKS, {"by": "run", "state": "failed"}).content.decode()
    # The run's only failed task stands for it, alone.
    assert codes_on(html) == {str(three.tasks[1].code)}
    # The page links keep the grouping.
    assert Run.objects.count() == 2


def test_the_gallery_can_show_one_result_per_run_with_a_link_to_the_rest(client, bob, runs):
    three, lone = runs
    Task.objects.update(state=Task.State.SUCCEEDED, finished_at=three.tasks[0].created_at)
    Favourite.objects.create(user=three.run.user, task=three.tasks[1])  # the owner's keeper
    client.force_login(bob)  # a teammate
    everything = client.get("/gallery/").content.decode()
    assert len(codes_on(everything)) == 4

    html = client.get("/gallery/", {"runs": "1"}).content.decode()
    assert codes_on(html) == {str(three.tasks[1].code), str(lone.tasks[0].code)}
    assert html.count("more in this run") == 1
    assert (
        f'<a class="gallery-run small" href="/run/{three.run.code}/">+2 more in this run</a>'
        in (html)
    )
    # The same tiles, kept from the first page, come back without the link when not grouped.
    assert "more in this run" not in client.get("/gallery/").content.decode()


def test_a_star_without_javascript_returns_to_the_page_it_was_clicked_on(client, alice, runs):
    three, _ = runs
    Task.objects.update(state=Task.State.SUCCEEDED)
    client.force_login(alice)
    compare = f"/run/{three.run.code}/compare"
    url = f"/gallery/{three.tasks[0].code}/favourite"
    assert client.post(url, {"next": compare})["Location"] == compare
    assert Favourite.objects.filter(user=alice, task=three.tasks[0]).exists()
    # Another site is never a way back.
    answer = client.post(url, {"next": "https://elsewhere.example/"})
    assert answer["Location"] == f"/gallery/{three.tasks[0].code}/"
