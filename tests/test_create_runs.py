"""Create makes runs: variations of one request and the same prompt on other models, priced
as a whole, checked per model, charged all or nothing through the one submit path."""

import pytest
from django.urls import reverse

from accounts import ledger
from accounts.models import LedgerEntry, Quota, TeamQuota
from generations.models import Run, Task
from tests.test_create import CREATE, charged, form_data, make_key, text

PRICE = "/create/price"


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.PUBLIC_URL = ""


@pytest.fixture
def member(client, alice, carol):
    ledger.grant(alice, 1000, by=carol, reason="welcome")
    client.force_login(alice)
    return client


@pytest.fixture
def keys(alice):
    return {
        "apimart": make_key(alice, "apimart"),
        "omniakey": make_key(alice, "omniakey"),
        "omnivideo": make_key(alice, "omnivideo"),
    }


def test_variations_and_other_models_make_one_run_with_one_debit_per_task(member, alice, keys):
    balance, entries = charged(alice)
    data = form_data(keys["apimart"], variations="2")
    data["also"] = ["omniakey/sora", "omnivideo/seedance-2"]
    response = member.post(CREATE, data)

    run = Run.objects.get()
    tasks = list(run.tasks.order_by("id"))
    assert response.status_code == 302
    assert response["Location"] == reverse("generations-run", args=[run.code])
    assert [t.model for t in tasks] == ["Omni-Flash-Ext"] * 2 + ["sora"] * 2 + ["seedance-2"] * 2
    # Each model takes the settings it has: Sora the duration and resolution, Seedance (which
    # has no duration) only the aspect ratio.
    assert tasks[2].params["duration"] == 6 and tasks[2].params["resolution"] == "720p"
    assert tasks[4].params["duration"] is None
    # Each model is paid with the member's key of its gateway.
    assert [t.key for t in tasks[::2]] == [keys["apimart"], keys["omniakey"], keys["omnivideo"]]
    total = sum(t.credits_charged for t in tasks)
    assert charged(alice) == (balance - total, entries + 6)
    assert run.name == "A red fox in the snow"
    assert f"Submitted a run of 6 tasks, {total} credits charged" in text(member.get(CREATE))


def test_the_price_is_the_whole_runs_itemised_per_model(member, alice, keys):
    data = form_data(keys["apimart"], variations="2")
    data["also"] = ["omniakey/sora"]
    html = text(member.post(PRICE, data))
    # Omni Flash Ext: 8 credits a second x 6 s = 48; Sora's price is read the same way.
    sora = Task(provider="omniakey", model="sora")
    assert "4 tasks cost" in html
    assert "Omni Flash Ext: 2 × 48 = <strong>96</strong> credits" in html
    assert f"{sora.spec.label}: 2 ×" in html
    assert "your balance after:" in html


def test_a_value_another_model_does_not_allow_is_refused_beside_the_field(member, alice, keys):
    balance, entries = charged(alice)
    data = form_data(keys["apimart"])
    data["also"] = ["omniakey/pika-1.5"]
    response = member.post(CREATE, data)
    html = text(response)
    assert response.status_code == 200
    # The catalog's own words, saying what Pika does allow; the duration is not changed.
    assert "Pika 1.5 makes videos of 3 to 5 seconds; 6 s is not possible." in html
    assert 'id="id_also_error"' in html
    assert charged(alice) == (balance, entries)
    assert not Run.objects.exists() and not Task.objects.exists()


def test_another_model_without_a_key_for_its_gateway_is_refused(member, alice, keys):
    balance, entries = charged(alice)
    data = form_data(keys["apimart"])
    data["also"] = ["omixa/sora"]
    html = text(member.post(CREATE, data))
    assert "you have no usable Omixa key" in html
    assert charged(alice) == (balance, entries)
    assert not Task.objects.exists()


def test_a_run_above_the_balance_is_refused_whole(member, alice, keys):
    ledger.deduct(alice, 1000 - 100, by=alice, reason="spent elsewhere")
    balance, entries = charged(alice)
    data = form_data(keys["apimart"], variations="3")  # 3 x 48 = 144 > 100
    html = text(member.post(CREATE, data))
    assert "These 3 tasks cost 144 credits and your balance is 100." in html
    assert charged(alice) == (balance, entries)
    assert not Task.objects.exists()


def test_a_model_the_quota_does_not_allow_refuses_the_whole_run(member, alice, keys):
    Quota.objects.create(user=alice, allowed_models=["apimart/*"])
    balance, entries = charged(alice)
    data = form_data(keys["apimart"], variations="2")
    data["also"] = ["omniakey/sora"]
    html = text(member.post(CREATE, data))
    assert "Your quota does not include Sora" in html
    assert charged(alice) == (balance, entries)
    assert not Task.objects.exists()


def test_the_team_cap_on_tasks_per_run_holds(member, alice, keys):
    TeamQuota.objects.create(max_tasks_per_run=5)
    data = form_data(keys["apimart"], variations="3")
    data["also"] = ["omniakey/sora"]
    html = text(member.post(CREATE, data))
    assert "This makes 6 tasks; one submit may make at most 5." in html
    assert not LedgerEntry.objects.filter(kind="debit").exists()


def test_variations_out_of_range_are_refused(member, alice, keys):
    html = text(member.post(CREATE, form_data(keys["apimart"], variations="9")))
    assert "Choose 1 to 4 variations." in html
    assert not Task.objects.exists()


def test_with_htmx_a_run_answers_with_every_new_card(member, alice, keys):
    data = form_data(keys["apimart"], variations="2")
    data["also"] = ["omniakey/sora"]
    html = text(member.post(CREATE, data, HTTP_HX_REQUEST="true"))
    run = Run.objects.get()
    for task in Task.objects.all():
        assert f'id="task-{task.code}"' in html
    # Each new card links to its run.
    assert html.count(f'<a href="/run/{run.code}/">Run: {run.name} (4 tasks)</a>') == 4
    # The chosen models stay chosen for the next try.
    assert 'value="omniakey/sora" class="price-input" id="id_also_0_0" checked>' in html
    assert '<option value="2" selected>2</option>' in html


def test_admins_see_runs_with_their_size_and_members_do_not(client, member, alice, carol, keys):
    data = form_data(keys["apimart"], variations="3")
    member.post(CREATE, data)
    run = Run.objects.get()
    client.force_login(carol)
    html = text(client.get("/admin/generations/run/"))
    assert run.name in html and '<td class="field-task_count">3</td>' in html
    assert client.get(f"/admin/generations/run/{run.pk}/change/").status_code == 200
    member.force_login(alice)
    assert member.get("/admin/generations/run/").status_code == 302  # to the admin's login
