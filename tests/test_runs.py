"""The run pages: a run's cards, progress and spend, Compare, and the owner's run-wide actions
(cancel the rest, try the failed again), who may see and do what, and what a page costs."""

import re
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection
from django.template.loader import render_to_string
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts import ledger
from accounts.models import LedgerEntry, ProviderKey
from generations import cards
from generations.models import Favourite, Result, Run, Task, TaskEvent
from generations.providers import GenerationRequest
from generations.runs import retry_orders
from generations.services import (
    Order,
    OrderItem,
    cancel_by_member,
    delete_task,
    fail_task,
    retry_task,
    submit_order,
)
from generations.simulator.media import render_png

HX = {"HTTP_HX_REQUEST": "true"}
FOX = GenerationRequest("apimart", "Omni-Flash-Ext", "a fox in the snow", duration=4)
BANANA = GenerationRequest("omnivideo", "nano-banana-2", "a fox in the snow")
SEEDANCE = GenerationRequest("omnivideo", "seedance-2", "a fox in the snow")


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path


@pytest.fixture
def keys(alice, carol):
    ledger.grant(alice, 5000, by=carol, reason="welcome")
    made = {}
    for provider in ("apimart", "omnivideo"):
        key = ProviderKey(provider=provider, label=f"Mine {provider}", owner=alice)
        key.set_secret(f"sk-{provider}-runs-0001")
        key.save()
        made[provider] = key
    return made


def order(user, keys, *requests, visibility="team", name=""):
    """One order of `requests` through the one submit path: one run."""
    items = tuple(OrderItem(request, keys[request.provider]) for request in requests)
    outcome = submit_order(
        user, Order(items=items, visibility=visibility, token=uuid.uuid4(), name=name)
    )
    return outcome.run, outcome.tasks


def succeed(task, *, seconds=65, image=False):
    """The task finished `seconds` after it was made, with a stored result."""
    if image:
        name = default_storage.save(f"results/{task.code}.png", ContentFile(render_png("x", 8, 8)))
        fields = {"content_type": "image/png", "width": 8, "height": 8}
    else:
        name = default_storage.save(f"results/{task.code}.mp4", ContentFile(b"mp4 " * 10))
        fields = {"content_type": "video/mp4", "width": 1280, "height": 720, "duration": 4.0}
    poster = default_storage.save(f"posters/{task.code}.jpg", ContentFile(b"\xff\xd8\xff"))
    Result.objects.create(task=task, file=name, poster=poster, size=40, **fields)
    Task.objects.filter(pk=task.pk).update(
        state=Task.State.SUCCEEDED,
        finished_at=task.created_at + timedelta(seconds=seconds),
        next_check_at=None,
        progress=100,
    )
    task.refresh_from_db()
    return task


def balance(user) -> int:
    return type(user).objects.get(pk=user.pk).credit_balance


def page(client, url, **extra) -> str:
    response = client.get(url, **extra)
    assert response.status_code == 200, url
    return response.content.decode()


def card_codes(html: str) -> list[str]:
    return re.findall(r'<article class="task-card[^"]*" id="task-([0-9a-f-]{36})"', html)


def counts(html: str) -> dict[str, str]:
    """The progress panel's counts, by their names."""
    panel = re.search(r'<dl class="run-counts">(.*?)</dl>', html, re.S).group(1)
    return dict(re.findall(r"<dt>([^<]+)</dt><dd>(\d+)", panel))


def run_url(run, what=""):
    return f"/run/{run.code}/{what}"


# --- the page ---------------------------------------------------------------------------------


def test_the_owner_sees_the_run_with_its_cards_progress_and_spend(client, alice, keys):
    run, (fox, banana, seedance) = order(alice, keys, FOX, BANANA, SEEDANCE, name="Three foxes")
    succeed(fox)
    fail_task(banana, actor="test", reason="The gateway refused the prompt.")
    client.force_login(alice)

    html = page(client, run_url(run))
    assert '<h1 class="run-name">Three foxes</h1>' in html
    assert "Your run" in html
    assert card_codes(html) == [str(fox.code), str(banana.code), str(seedance.code)]
    # The cards are live through the studio's one poller, which watches the running one.
    assert html.count('id="card-poller"') == 1
    assert 'hx-trigger="every 3s, tasks-changed from:body"' in html
    assert f'class="watch" name="watch" value="{seedance.code}"' in html
    assert counts(html) == {"Done": "1", "Running": "0", "Waiting": "1", "Failed or canceled": "1"}
    charged = fox.credits_charged + banana.credits_charged + seedance.credits_charged
    assert f"<dt>Charged</dt><dd>{charged} credits</dd>" in html
    assert f"<dt>Refunded</dt><dd>{banana.credits_charged} credits</dd>" in html
    net = charged - banana.credits_charged
    assert f"<dt>Net</dt><dd><strong>{net} credits</strong></dd>" in html
    assert "Cancel the 1 unfinished and refund" in html
    assert "Try again the 1 failed or canceled" in html
    assert f'href="/run/{run.code}/download">Download all (1 file,' in html


def test_the_progress_counts_tasks_waiting_for_a_free_slot_and_being_checked(client, alice, keys):
    run, (first, second, third) = order(alice, keys, FOX, FOX, FOX)
    Task.objects.filter(pk=first.pk).update(
        message="Waiting for a free slot on Mine apimart: 4 of its 4 tasks at APIMart are busy."
    )
    Task.objects.filter(pk=second.pk).update(state=Task.State.RUNNING)
    Task.objects.filter(pk=third.pk).update(state=Task.State.NEEDS_REVIEW)
    client.force_login(alice)
    html = page(client, run_url(run, "progress"), **HX)
    assert "<html" not in html and '<section id="run-progress"' in html
    assert counts(html) == {
        "Done": "0",
        "Running": "1",
        "Waiting": "1",
        "Being checked": "1",
        "Failed or canceled": "0",
    }
    assert "(1 for a free slot on their key)" in html
    # Without htmx the panel's address leads to the page.
    response = client.get(run_url(run, "progress"))
    assert response.status_code == 302 and response["Location"] == run_url(run)


def test_a_teammate_sees_only_the_tasks_shared_with_the_team_and_no_actions(
    client, alice, bob, keys
):
    run, (fox, banana, seedance) = order(alice, keys, FOX, BANANA, SEEDANCE, name="Shared foxes")
    Task.objects.filter(pk=banana.pk).update(visibility=Task.Visibility.PRIVATE)
    fail_task(seedance, actor="test", reason="boom")
    client.force_login(bob)

    html = page(client, run_url(run))
    assert "Shared by Alice A." in html
    assert card_codes(html) == [str(fox.code), str(seedance.code)]
    assert "a fox in the snow" in html
    assert "unfinished and refund" not in html and "Try again the" not in html
    assert f"/run/{run.code}/cancel" not in html and f"/run/{run.code}/retry" not in html
    # The counts and the spend cover only what bob may see.
    assert '<h2 id="run-progress-heading">2 tasks: 1 finished</h2>' in html
    both = fox.credits_charged + seedance.credits_charged
    assert f"<dt>Charged</dt><dd>{both} credits</dd>" in html
    compare = page(client, run_url(run, "compare"))
    assert str(banana.code) not in compare and str(fox.code) in compare


def test_another_member_gets_404_on_every_url_of_a_private_run(client, alice, bob, keys):
    run, (fox, banana) = order(alice, keys, FOX, BANANA, visibility="private")
    succeed(fox)
    fail_task(banana, actor="test", reason="boom")
    before = LedgerEntry.objects.count()
    client.force_login(bob)
    for what in ("", "compare", "download"):
        assert client.get(run_url(run, what)).status_code == 404, what
    assert client.get(run_url(run, "progress"), **HX).status_code == 404
    for what in ("cancel", "retry"):
        assert client.post(run_url(run, what), {"form_token": uuid.uuid4()}).status_code == 404
    assert LedgerEntry.objects.count() == before
    assert Task.objects.filter(run=run).count() == 2
    # The owner sees it all.
    client.force_login(alice)
    assert client.get(run_url(run)).status_code == 200


def test_the_actions_answer_404_to_a_teammate_who_may_see_the_run(client, alice, bob, keys):
    run, (fox, banana) = order(alice, keys, FOX, BANANA)
    fail_task(banana, actor="test", reason="boom")
    before = LedgerEntry.objects.count()
    client.force_login(bob)
    assert client.get(run_url(run)).status_code == 200
    assert client.post(run_url(run, "cancel")).status_code == 404
    assert client.post(run_url(run, "retry"), {"form_token": uuid.uuid4()}).status_code == 404
    fox.refresh_from_db()
    assert fox.state == Task.State.QUEUED
    assert LedgerEntry.objects.count() == before
    assert Task.objects.filter(run=run).count() == 2


def test_the_run_pages_answer_404_for_a_run_that_does_not_exist(client, alice):
    client.force_login(alice)
    missing = uuid.uuid4()
    assert client.get(f"/run/{missing}/").status_code == 404
    assert client.get(f"/run/{missing}/compare").status_code == 404
    assert client.post(f"/run/{missing}/cancel").status_code == 404


def test_deleted_tasks_never_show_on_the_run_pages(client, alice, bob, keys):
    run, (fox, banana, seedance) = order(alice, keys, FOX, BANANA, SEEDANCE)
    succeed(fox)
    succeed(banana, image=True)
    delete_task(banana)
    for user in (alice, bob):
        client.force_login(user)
        html = page(client, run_url(run))
        assert card_codes(html) == [str(fox.code), str(seedance.code)]
        assert str(banana.code) not in page(client, run_url(run, "compare"))


# --- cancel the rest --------------------------------------------------------------------------


def refunds(task) -> list[LedgerEntry]:
    return list(LedgerEntry.objects.filter(task=task, kind=LedgerEntry.Kind.REFUND))


def test_cancel_refunds_exactly_the_unfinished_tasks_once(client, alice, keys):
    run, (done, failed, queued, running, review) = order(alice, keys, FOX, FOX, FOX, BANANA, FOX)
    succeed(done)
    fail_task(failed, actor="test", reason="boom")
    Task.objects.filter(pk=running.pk).update(state=Task.State.RUNNING)
    Task.objects.filter(pk=review.pk).update(state=Task.State.NEEDS_REVIEW)
    # A task saving its result is already delivered: it is not canceled.
    saving = order(alice, keys, FOX)[1][0]
    Task.objects.filter(pk=saving.pk).update(run=run, state=Task.State.FETCHING)
    before = balance(alice)
    client.force_login(alice)

    response = client.post(run_url(run, "cancel"), follow=True)
    html = response.content.decode()
    unfinished = [queued, running, review]
    refunded = sum(task.credits_charged for task in unfinished)
    assert f"Canceled 3 tasks and refunded {refunded} credits." in html
    assert response.redirect_chain == [(run_url(run), 302)]
    for task in unfinished:
        task.refresh_from_db()
        assert task.state == Task.State.CANCELED
        (entry,) = refunds(task)
        assert entry.amount == task.credits_charged
        assert entry.idempotency_key == f"task:{task.pk}:refund"
    assert refunds(done) == []
    assert len(refunds(failed)) == 1  # its own, from when it failed
    saving.refresh_from_db()
    assert saving.state == Task.State.FETCHING and refunds(saving) == []
    assert balance(alice) == before + refunded

    # Again: nothing left to cancel, nothing more refunded.
    entries = LedgerEntry.objects.count()
    again = client.post(run_url(run, "cancel"), follow=True).content.decode()
    assert "Nothing in this run is left to cancel." in again
    assert LedgerEntry.objects.count() == entries
    assert balance(alice) == before + refunded


def test_a_task_canceled_elsewhere_meanwhile_is_refunded_once(client, alice, keys):
    run, (first, second) = order(alice, keys, FOX, FOX)
    cancel_by_member(first)
    before = balance(alice)
    client.force_login(alice)
    html = client.post(run_url(run, "cancel"), follow=True).content.decode()
    assert f"Canceled 1 task and refunded {second.credits_charged} credits." in html
    assert len(refunds(first)) == 1 and len(refunds(second)) == 1
    assert balance(alice) == before + second.credits_charged


# --- try the failed again ---------------------------------------------------------------------


def test_retry_makes_one_order_with_new_debits_and_the_new_tasks_join_the_run(client, alice, keys):
    run, (done, failed, canceled, queued) = order(alice, keys, FOX, BANANA, SEEDANCE, FOX)
    succeed(done)
    fail_task(failed, actor="test", reason="boom")
    cancel_by_member(canceled)
    before = balance(alice)
    token = uuid.uuid4()
    client.force_login(alice)

    response = client.post(run_url(run, "retry"), {"form_token": token}, follow=True)
    html = response.content.decode()
    new = list(
        Task.objects.filter(run=run)
        .exclude(pk__in=[done.pk, failed.pk, canceled.pk, queued.pk])
        .order_by("pk")
    )
    assert [(t.provider, t.model, t.prompt) for t in new] == [
        (failed.provider, failed.model, failed.prompt),
        (canceled.provider, canceled.model, canceled.prompt),
    ]
    charged = sum(task.credits_charged for task in new)
    assert f"Submitted 2 tasks again as one order; {charged} credits charged." in html
    assert response.redirect_chain == [(run_url(run), 302)]
    # One order: one submit time, the click's token (and the one derived from it), one note.
    assert len({task.created_at for task in new}) == 1
    assert new[0].submit_token == token
    for task in new:
        (debit,) = LedgerEntry.objects.filter(task=task, kind=LedgerEntry.Kind.DEBIT)
        assert debit.amount == -task.credits_charged
        assert task.state == Task.State.QUEUED
    notes = set(TaskEvent.objects.filter(task__in=new).values_list("reason", flat=True))
    assert notes == {f"retry of tasks {failed.code}, {canceled.code}"}
    assert balance(alice) == before - charged
    assert {task.retry_of for task in new} == {failed, canceled}
    # The new cards are on the run page, at its end.
    assert card_codes(page(client, run_url(run)))[-2:] == [str(t.code) for t in new]

    # A double click sends the same token: nothing more is made or charged.
    again = client.post(run_url(run, "retry"), {"form_token": token}, follow=True)
    assert Task.objects.filter(run=run).count() == 6
    assert balance(alice) == before - charged
    assert "every failed task was already" in again.content.decode()
    # A fresh page offers no retry of what was tried again already.
    assert "Try again the" not in page(client, run_url(run))


def test_a_double_click_that_races_the_first_charges_once(alice, keys):
    """Both clicks read the failed tasks before either submitted: the token repeats."""
    run, (failed,) = order(alice, keys, BANANA)
    fail_task(failed, actor="test", reason="boom")
    token = uuid.uuid4()

    orders, problems = retry_orders([Task.objects.get(pk=failed.pk)], token)
    assert problems == [] and len(orders) == 1
    first = submit_order(alice, orders[0])
    second = submit_order(alice, orders[0])
    assert first.created and not second.created
    assert [t.pk for t in second.tasks] == [t.pk for t in first.tasks]
    assert Task.objects.filter(run=run).count() == 2


def test_only_failures_not_tried_again_are_tried_again(client, alice, keys):
    run, (first, second) = order(alice, keys, FOX, BANANA)
    fail_task(first, actor="test", reason="boom")
    fail_task(second, actor="test", reason="boom")
    retry_task(first, token=uuid.uuid4())  # from its own page
    client.force_login(alice)
    assert "Try again the 1 failed or canceled" in page(client, run_url(run))
    client.post(run_url(run, "retry"), {"form_token": uuid.uuid4()})
    made = Task.objects.filter(run=run).exclude(pk__in=[first.pk, second.pk])
    assert sorted(task.model for task in made) == sorted([first.model, second.model])


def test_a_refused_retry_says_why_on_the_run_page_and_charges_nothing(client, alice, keys, carol):
    run, (failed,) = order(alice, keys, SEEDANCE)
    fail_task(failed, actor="test", reason="boom")
    spend = balance(alice)
    ledger.deduct(alice, spend - 5, by=carol, reason="spent elsewhere")
    entries = LedgerEntry.objects.count()
    client.force_login(alice)

    response = client.post(run_url(run, "retry"), {"form_token": uuid.uuid4()}, follow=True)
    html = response.content.decode()
    assert response.redirect_chain == [(run_url(run), 302)]
    assert "This costs 60 credits and your balance is 5." in html
    assert 'class="message message-error"' in html
    assert Task.objects.filter(run=run).count() == 1
    assert LedgerEntry.objects.count() == entries


def test_a_retry_whose_key_is_gone_says_so_and_the_others_go(client, alice, keys):
    run, (fox, banana) = order(alice, keys, FOX, BANANA)
    fail_task(fox, actor="test", reason="boom")
    fail_task(banana, actor="test", reason="boom")
    Task.objects.filter(pk=fox.pk).update(key=None)
    client.force_login(alice)
    html = client.post(run_url(run, "retry"), {"form_token": uuid.uuid4()}, follow=True)
    html = html.content.decode()
    assert "The key that paid for this task is gone" in html
    assert "Submitted 1 task again as one order" in html
    assert Task.objects.filter(run=run, model=banana.model).count() == 2
    assert Task.objects.filter(run=run, model=fox.model).count() == 1


def test_a_retry_without_its_token_is_refused(client, alice, keys):
    run, (failed,) = order(alice, keys, BANANA)
    fail_task(failed, actor="test", reason="boom")
    client.force_login(alice)
    html = client.post(run_url(run, "retry"), follow=True).content.decode()
    assert "This button was incomplete" in html
    assert Task.objects.filter(run=run).count() == 1


def test_tasks_sent_the_same_images_are_tried_again_as_one_order(client, alice, keys):
    from generations.forms import check_image

    image = check_image(ContentFile(render_png("ref", 64, 64), name="ref.png"))
    items = (OrderItem(BANANA, keys["omnivideo"]), OrderItem(SEEDANCE, keys["omnivideo"]))
    outcome = submit_order(alice, Order(items=items, images=(image,), token=uuid.uuid4()))
    run = outcome.run
    for task in outcome.tasks:
        fail_task(task, actor="test", reason="boom")
    other = submit_order(
        alice,
        Order(
            items=(OrderItem(BANANA, keys["omnivideo"]),),
            images=(check_image(ContentFile(render_png("other", 80, 80), name="o.png")),),
            run=run,
            token=uuid.uuid4(),
        ),
    ).tasks[0]
    fail_task(other, actor="test", reason="boom")
    client.force_login(alice)

    html = client.post(run_url(run, "retry"), {"form_token": uuid.uuid4()}, follow=True)
    assert "(one order per set of reference images)" in html.content.decode()
    new = list(Task.objects.filter(run=run).order_by("pk")[3:])
    assert len(new) == 3
    # The two tasks that shared an image went as one order, the other on its own.
    assert new[0].created_at == new[1].created_at != new[2].created_at
    for task in new:
        (reference,) = task.references.all()
        assert reference.width == (80 if task.created_at == new[2].created_at else 64)


# --- Compare ----------------------------------------------------------------------------------


def test_compare_shows_one_column_per_model_with_cost_time_and_player(client, alice, keys):
    run, tasks = order(alice, keys, FOX, BANANA, FOX, SEEDANCE, BANANA)
    fox1, banana1, fox2, seedance, banana2 = tasks
    succeed(fox1, seconds=65)
    succeed(banana1, seconds=12, image=True)
    fail_task(fox2, actor="test", reason="The gateway said no.")
    client.force_login(alice)

    html = page(client, run_url(run, "compare"))
    headings = re.findall(r'<h2 id="column-\d+" class="compare-heading">([^<]+?) <span', html)
    assert headings == ["Omni Flash Ext", "Nano Banana 2", "Seedance 2.0"]
    assert html.count("data-compare-column") == 3
    columns = html.split("data-compare-column")[1:]
    assert columns[0].count("data-compare-item") == 2
    assert columns[1].count("data-compare-item") == 2
    assert columns[2].count("data-compare-item") == 1
    first = columns[0]
    assert f'poster="/t/{fox1.code}/poster/0"' in first
    assert f'<source src="/t/{fox1.code}/file/0" type="video/mp4">' in first
    assert "<dt>Time to result</dt><dd>1 min 5 s</dd>" in first
    assert f"<dt>Cost</dt><dd>{fox1.credits_charged} credits</dd>" in first
    assert "<dt>Gateway</dt><dd>APIMart</dd>" in first
    assert f"{fox2.credits_charged} credits, refunded" in first
    assert "The gateway said no." in first
    assert f'<img src="/t/{banana1.code}/file/0"' in columns[1]
    assert "<dt>Time to result</dt><dd>12 s</dd>" in columns[1]
    # The star only on results, a plain form to the gallery's favourite.
    assert html.count('class="favourite-form"') == 2
    assert f'action="/gallery/{fox1.code}/favourite"' in first
    assert "static/js/runs.js" in html or "/static/js/runs.js" in html


def test_the_star_in_compare_marks_the_keeper_as_a_favourite(client, alice, bob, keys):
    run, (fox, banana) = order(alice, keys, FOX, BANANA)
    succeed(fox)
    succeed(banana, image=True)
    client.force_login(bob)
    response = client.post(f"/gallery/{banana.code}/favourite", **HX)
    assert response.status_code == 200
    assert Favourite.objects.filter(user=bob, task=banana).exists()
    html = page(client, run_url(run, "compare"))
    assert html.count('aria-pressed="true"') == 1
    item = html[html.index(f'id="compare-{banana.code}"') :]
    assert item.index('aria-pressed="true"') < item.index("</article>")
    # Alice has no star of her own.
    client.force_login(alice)
    assert 'aria-pressed="true"' not in page(client, run_url(run, "compare"))


# --- What a page costs ------------------------------------------------------------------------


def bulk_tasks(user, run, count):
    """`count` tasks of `run` in every kind of state, bulk-made, with stored results for the
    succeeded ones and debits for all."""
    states = [
        Task.State.SUCCEEDED,
        Task.State.RUNNING,
        Task.State.QUEUED,
        Task.State.FAILED,
        Task.State.CANCELED,
    ]
    now = timezone.now()
    tasks = Task.objects.bulk_create(
        Task(
            user=user,
            run=run,
            provider=("apimart", "omnivideo")[i % 2],
            model=("Omni-Flash-Ext", "nano-banana-2")[i % 2],
            kind=("video", "image")[i % 2],
            prompt=f"fox {i}",
            params={"duration": 4},
            key_label="Mine",
            state=states[i % len(states)],
            price_unit="task",
            price_credits_per_unit=10,
            price_units=1,
            price_multiplier=Decimal(1),
            credits_charged=10,
            created_at=now - timedelta(seconds=100 + i),
            finished_at=now - timedelta(seconds=i)
            if states[i % len(states)] in Task.TERMINAL_STATES
            else None,
        )
        for i in range(count)
    )
    Result.objects.bulk_create(
        Result(
            task=task,
            file=f"results/{task.code}.mp4",
            poster=f"posters/{task.code}.jpg",
            content_type="video/mp4",
            size=1000,
        )
        for task in tasks
        if task.state == Task.State.SUCCEEDED
    )
    return tasks


def statements(client, url, **extra) -> int:
    cards.CARD_CACHE.clear()
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url, **extra)
    assert response.status_code == 200, url
    return len(queries)


def test_the_run_pages_cost_the_same_statements_at_ten_and_a_hundred_tasks(
    client, alice, bob, django_assert_max_num_queries
):
    run = Run.objects.create(user=alice, name="Many foxes")
    bulk_tasks(alice, run, 10)
    urls = [(run_url(run), {}), (run_url(run, "compare"), {}), (run_url(run, "progress"), HX)]
    client.force_login(alice)
    cards.typical_seconds()  # kept a minute: not the page's own work
    at_ten = [statements(client, url, **extra) for url, extra in urls]
    html = page(client, run_url(run))
    assert len(card_codes(html)) == 10

    bulk_tasks(alice, run, 90)
    at_hundred = [statements(client, url, **extra) for url, extra in urls]
    assert len(card_codes(page(client, run_url(run)))) == 100
    assert at_ten == at_hundred
    # Session, member, run, tasks, their results, counts, ledger, files, retried: few.
    with django_assert_max_num_queries(10):
        client.get(run_url(run))
    # A teammate's view costs the same at either size too.
    client.force_login(bob)
    assert statements(client, run_url(run)) <= at_hundred[0]


# --- the task card's link to its run ----------------------------------------------------------


def card_for(task_pk) -> str:
    (card,) = cards.with_timing(
        cards.run_task_counts(Task.objects.filter(pk=task_pk)).prefetch_related("results")
    )
    return render_to_string("generations/_task_card.html", {"task": card})


def test_a_card_links_to_its_run_when_the_run_has_several_tasks(alice, keys):
    run, (fox, banana, seedance) = order(alice, keys, FOX, BANANA, SEEDANCE, name="Fox trio")
    lone_run, (lone,) = order(alice, keys, FOX)
    html = card_for(fox.pk)
    assert f'<a href="/run/{run.code}/">Run: Fox trio (3 tasks)</a>' in html
    assert "Run:" not in card_for(lone.pk)
    # A deleted task no longer counts.
    fail_task(seedance, actor="test", reason="boom")
    delete_task(seedance)
    assert "Run: Fox trio (2 tasks)" in card_for(fox.pk)
    # Without the run read by run_task_counts, no link and no extra statement.
    (plain,) = cards.with_timing(Task.objects.filter(pk=fox.pk).prefetch_related("results"))
    assert "run" not in plain.links


def test_a_card_never_links_a_shared_task_to_a_private_run(alice, keys):
    run, (fox, banana) = order(alice, keys, FOX, BANANA, visibility="private")
    assert "Run:" in card_for(fox.pk)  # a private task: only alice sees its card
    Task.objects.filter(pk=fox.pk).update(visibility=Task.Visibility.TEAM)
    assert "Run:" not in card_for(fox.pk)  # teammates see it, and could not open the run


def test_a_kept_card_shows_the_run_growing_when_a_task_is_tried_again(alice, keys):
    run, (fox, banana) = order(alice, keys, FOX, BANANA, name="Growing")
    fail_task(banana, actor="test", reason="boom")

    def kept(pk):
        (card,) = cards.with_timing(
            cards.run_task_counts(Task.objects.filter(pk=pk)).prefetch_related("results")
        )
        cards.keep_ended_cards([card])
        return str(card.kept_card)

    assert "Run: Growing (2 tasks)" in kept(banana.pk)
    retry_task(Task.objects.get(pk=banana.pk), token=uuid.uuid4())
    assert "Run: Growing (3 tasks)" in kept(banana.pk)


def test_run_task_counts_costs_no_statement_per_card(alice, keys):
    for _ in range(3):
        order(alice, keys, FOX, BANANA)
    with CaptureQueriesContext(connection) as queries:
        shown = cards.with_timing(
            cards.run_task_counts(Task.objects.filter(user=alice)).prefetch_related("results")
        )
    assert len(shown) == 6 and all("run" in task.links for task in shown)
    assert len(queries) <= 3  # the tasks (with runs and sizes), their results, typical times


# --- in a browser -----------------------------------------------------------------------------


@pytest.mark.browser
def test_in_a_browser_the_progress_follows_the_cards_and_arrows_step_through_compare(
    page, alice, keys
):
    from tests.test_browser_cards import log_in
    from tests.test_browser_csp import Console

    run, (fox, banana) = order(alice, keys, FOX, BANANA, name="Browser foxes")
    succeed(banana, image=True)
    Task.objects.filter(pk=fox.pk).update(state=Task.State.RUNNING, next_check_at=None)
    console = Console(page)
    log_in(page)

    page.goto(run_url(run))
    done = page.locator("#run-progress .count-done dd")
    assert done.inner_text() == "1"
    assert page.locator("#run-progress .count-running dd").inner_text() == "1"
    # The gateway finishes the running task: the page's one poller brings its new card, and
    # the panel follows without a reload.
    page.evaluate("window.stayedOnPage = true")
    succeed(Task.objects.get(pk=fox.pk))
    page.wait_for_function(
        "code => document.querySelector('#task-' + code).dataset.state === 'succeeded'",
        arg=str(fox.code),
    )
    page.wait_for_function(
        "() => document.querySelector('#run-progress .count-done dd').textContent.trim() === '2'"
    )
    assert page.locator("#run-progress .count-running dd").inner_text() == "0"
    assert page.evaluate("window.stayedOnPage") is True
    assert "Download all (2 files" in page.locator("#run-progress").inner_text()

    # Compare: right and left step from one model's column to the other.
    page.goto(run_url(run, "compare"))
    focused = "() => document.activeElement && document.activeElement.id"
    page.keyboard.press("ArrowRight")
    assert page.evaluate(focused) == f"compare-{fox.code}"
    page.keyboard.press("ArrowRight")
    assert page.evaluate(focused) == f"compare-{banana.code}"
    page.keyboard.press("ArrowRight")  # the last column: stays
    assert page.evaluate(focused) == f"compare-{banana.code}"
    page.keyboard.press("ArrowLeft")
    assert page.evaluate(focused) == f"compare-{fox.code}"
    # The star works in place with htmx.
    page.locator(f"#compare-{fox.code}").get_by_role("button", name="Favourite").click()
    page.wait_for_selector(f'#compare-{fox.code} button[aria-pressed="true"]')
    assert Favourite.objects.filter(user=alice, task=fox).exists()
    assert console.violations() == [] and console.errors == []
