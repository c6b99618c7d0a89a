"""A run in headless Chromium, against a live server, a real worker and the simulator: one
prompt on three models with two variations each, watched on its page until it fills in,
compared side by side, the unfinished rest canceled and refunded, and the finished files
downloaded as one ZIP."""

import io
import os
import re
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from accounts import ledger
from accounts.models import LedgerEntry, ProviderKey
from generations.models import Run, Task
from generations.providers import GenerationRequest
from generations.services import submit_task
from tests.test_browser_studio import add_key, log_in, worker  # noqa: F401  (fixture)
from tests.test_engine_live import fresh_cache  # noqa: F401  (fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PROMPT = "a heron lifting off a misty river"
# Where a README screenshot of Compare is written, when asked for.
SCREENSHOTS = os.environ.get("OMNIWEB_SCREENSHOTS", "")


def hold_the_only_slot(key: ProviderKey, member) -> Task:
    """Give `key` one slot and a task that holds it and is never looked at again: the key's
    tasks in the run then wait for a free slot, for as long as the test needs."""
    key.max_in_flight = 1
    key.save(update_fields=["max_in_flight"])
    request = GenerationRequest(provider=key.provider, model="sora", prompt="holding the slot")
    held, _ = submit_task(member, request, key=key)
    Task.objects.filter(pk=held.pk).update(
        state=Task.State.RUNNING,
        provider_task_id="held-elsewhere",
        next_check_at=timezone.now() + timedelta(days=1),
    )
    return held


@pytest.mark.usefixtures("worker")
def test_a_run_on_three_models_fills_in_compares_cancels_the_rest_and_downloads(
    page, live_server, alice, carol
):
    ledger.grant(alice, 2000, by=carol, reason="welcome")
    log_in(page)
    add_key(page, live_server, "APIMart", "apimart")
    add_key(page, live_server, "OmniaKey", "omniakey")
    add_key(page, live_server, "Omni Video", "omnivideo")
    held = hold_the_only_slot(ProviderKey.objects.get(provider="omniakey"), alice)

    # One prompt, three models, two variations each: one submit.
    page.goto("/create/")
    page.get_by_label("Model").select_option("apimart/Omni-Flash-Ext")
    page.wait_for_function(
        "() => !document.querySelector('#create-form .htmx-request') && "
        "document.querySelector('#id_duration option[value=\"6\"]')"
    )
    page.get_by_label("Prompt").fill(PROMPT)
    page.get_by_label("Variations").select_option("2")
    page.get_by_text("Also try on other models").click()
    page.locator("input[name=also][value='omniakey/sora']").check()
    page.locator("input[name=also][value='omnivideo/seedance-2']").check()
    page.locator("#price").get_by_text("6 tasks cost").wait_for()
    page.get_by_role("button", name="Generate").click()
    run_link = page.locator(".task-card .card-run-link a").first
    run_link.wait_for()
    assert page.locator(".task-card", has_text=PROMPT).count() == 6

    run = Run.objects.get(name=PROMPT)
    tasks = list(run.tasks.all())
    assert len(tasks) == 6
    assert {(t.provider, t.model) for t in tasks} == {
        ("apimart", "Omni-Flash-Ext"),
        ("omniakey", "sora"),
        ("omnivideo", "seedance-2"),
    }
    debits = LedgerEntry.objects.filter(task__in=tasks, kind=LedgerEntry.Kind.DEBIT)
    assert sorted(d.task_id for d in debits) == sorted(t.pk for t in tasks)

    # The run page fills in by itself: four finish, Sora's two wait for their key's slot.
    run_link.click()
    page.wait_for_url(re.compile(rf".*/run/{run.code}/$"))
    page.evaluate("window.stayedOnPage = true")
    cards = page.locator("#run-cards .task-card")
    assert cards.count() == 6
    page.wait_for_function(
        "() => document.querySelectorAll('#run-cards .task-card[data-state=succeeded]').length"
        " === 4",
        timeout=90_000,
    )
    assert page.evaluate("window.stayedOnPage") is True
    progress = page.locator("#run-progress")
    progress.get_by_text("2 for a free slot on their key").wait_for()
    waiting = page.locator("#run-cards .task-card[data-state=queued]")
    assert waiting.count() == 2
    assert "Waiting for a free slot on My OmniaKey" in waiting.first.inner_text()

    # Compare: one column per model, each with its players.
    page.get_by_role("link", name="Compare").click()
    page.wait_for_url(re.compile(r".*/compare$"))
    columns = page.locator("[data-compare-column]")
    assert columns.count() == 3
    assert page.locator("[data-compare-column] video").count() == 4
    if SCREENSHOTS:
        page.set_viewport_size({"width": 1280, "height": 900})
        page.screenshot(path=str(Path(SCREENSHOTS) / "run-compare.png"), full_page=True)

    # Cancel the rest: exactly the two that never started are refunded, once each.
    page.goto(f"/run/{run.code}/")
    page.get_by_role("button", name="Cancel the 2 unfinished and refund").click()
    page.wait_for_url(re.compile(rf".*/run/{run.code}/$"))
    refunds = LedgerEntry.objects.filter(task__run=run, kind=LedgerEntry.Kind.REFUND)
    canceled = set(run.tasks.filter(state=Task.State.CANCELED).values_list("pk", flat=True))
    assert {r.task_id for r in refunds} == canceled
    assert {t.provider for t in Task.objects.filter(pk__in=canceled)} == {"omniakey"}
    assert len(canceled) == 2
    assert run.tasks.filter(state=Task.State.SUCCEEDED).count() == 4
    Task.objects.filter(pk=held.pk).update(next_check_at=timezone.now())  # let it go

    # Download all: one ZIP with every finished file, byte for byte.
    link = page.get_by_role("link", name=re.compile(r"Download all \(4 files"))
    response = page.request.get(link.get_attribute("href"))
    assert response.status == 200
    assert response.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.body()))
    stored = {}
    for task in run.tasks.filter(state=Task.State.SUCCEEDED):
        for result in task.results.all():
            with result.file.open("rb") as handle:
                stored[task.code.hex[:8]] = handle.read()
    assert len(archive.namelist()) == 4
    for name in archive.namelist():
        code = name.split("-")[-1].split(".")[0]
        assert archive.read(name) == stored[code]
    assert ledger.audit() == []
