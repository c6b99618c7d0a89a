"""A new member's first steps in the demo: the simulator keys are the whole team's, Create says
what to do without a key, signing in and the brand lead to Create, and every page has an icon."""

import re
from io import StringIO

import pytest
from django.core.management import call_command

from accounts.models import LedgerEntry, ProviderKey
from generations.forms import CreateForm
from generations.providers import catalog
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

SITE = "http://127.0.0.1:8000"
GATEWAYS = ["apimart", "omixa", "omniakey", "omnivideo"]
ADMIN_ADDS_DAVE = {
    "username": "dave",
    "display_name": "Dave D.",
    "email": "dave@example.com",
    "password1": "dave-first-passphrase-9",
    "password2": "dave-first-passphrase-9",
    "usable_password": "true",
    "_save": "Save",
}


@pytest.fixture(autouse=True)
def simulator_on(settings):
    settings.SIMULATOR_ENABLED = True


def run_demo(site: str = SITE) -> str:
    out = StringIO()
    call_command("ensure_demo", "--site", site, stdout=out)
    return out.getvalue()


# --- the simulator keys belong to the team ------------------------------------------------------


def test_the_demo_keys_are_team_keys_every_member_may_use(alice, bob, carol):
    run_demo()
    keys = ProviderKey.objects.simulator()
    assert sorted(keys.values_list("provider", flat=True)) == GATEWAYS
    assert all(key.is_team_key for key in keys)
    for member in (alice, bob, carol):
        for gateway in GATEWAYS:
            usable = list(ProviderKey.objects.choices_for(member, gateway))
            assert usable == [keys.get(provider=gateway)], (member, gateway)


def test_a_member_the_admin_adds_later_may_use_them_at_once(
    client, carol, django_user_model, settings
):
    run_demo()
    client.force_login(carol)
    response = client.post("/admin/accounts/user/add/", ADMIN_ADDS_DAVE)
    assert response.status_code == 302, response.content.decode()[:2000]
    dave = django_user_model.objects.get(username="dave")
    for gateway in GATEWAYS:
        key = ProviderKey.objects.usable_by(dave, gateway).get()
        assert key.label.startswith("Simulator (") and key.is_team_key
    # Only in the demo: with the simulator off, nobody gets a key they were not given.
    settings.SIMULATOR_ENABLED = False
    erin = django_user_model.objects.create_user("erin", password=PASSWORD)
    assert not ProviderKey.objects.visible_to(erin).exists()


def test_an_earlier_demo_s_admin_keys_become_team_keys_without_copies(alice, carol):
    old = ProviderKey(
        provider="apimart",
        label="Simulator (APIMart)",
        owner=carol,
        base_url=f"{SITE}/simulator/apimart",
    )
    old.set_secret("sim-apimart-0123456789abcdef")
    old.save()
    run_demo()
    old.refresh_from_db()
    assert old.is_team_key
    assert ProviderKey.objects.filter(provider="apimart").count() == 1
    assert list(ProviderKey.objects.choices_for(alice, "apimart")) == [old]


def test_the_keys_follow_the_site_s_address(alice, carol):
    run_demo()
    run_demo("http://127.0.0.1:8123/")
    keys = ProviderKey.objects.simulator()
    assert keys.count() == 4
    for key in keys:
        assert key.base_url == f"http://127.0.0.1:8123/simulator/{key.provider}"


def test_a_second_run_says_the_credits_were_granted_before(carol):
    first, second = run_demo(), run_demo()
    assert "4 simulator keys added and shared with every member" in first
    assert "1000 starting credits granted to carol" in first
    assert "already granted" not in first
    assert "already granted at the first start" in second and "added" not in second
    grants = LedgerEntry.objects.filter(user=carol, kind="grant")
    assert [grant.amount for grant in grants] == [1000]


# --- Create without a usable key ----------------------------------------------------------------


def test_a_member_without_a_usable_key_is_told_what_to_do(client, alice):
    client.force_login(alice)
    html = client.get("/create/", {"model": "omixa/sora"}).content.decode()
    hint = re.search(r'<p class="no-key" id="no-key">(.*?)</p>', html, re.S)
    assert hint, html
    assert re.sub(r"<[^>]+>", "", hint[1]).endswith(
        "Add your own Omixa key under Keys, or ask an admin to share one."
    )
    assert '<a href="/accounts/keys/">Add your own Omixa key under Keys</a>' in hint[1]
    assert 'name="key"' not in html  # the hint stands where the empty select would be
    assert client.get("/accounts/keys/").status_code == 200


def test_a_submit_without_a_key_says_the_same(alice):
    spec = catalog.get("omixa", "sora")
    form = CreateForm({"model": spec.key, "prompt": "a fox"}, user=alice, spec=spec)
    told = "Add your own Omixa key under Keys, or ask an admin to share one."
    assert form.errors["key"] == [told]


# --- where a member lands -----------------------------------------------------------------------


def test_signing_in_and_the_brand_lead_to_create(client, alice):
    response = client.post(
        "/accounts/login/", {"username": "alice", "password": PASSWORD}, follow=True
    )
    assert response.redirect_chain[-1][0] == "/create/"
    html = response.content.decode()
    assert re.search(r'<a class="brand" href="/create/">', html)
    assert client.get("/")["Location"] == "/create/"


# --- the icon -----------------------------------------------------------------------------------


def test_every_page_links_an_icon_that_is_served(client, alice, settings):
    # As in the demo: WhiteNoise serves the source folders (production serves collectstatic's).
    settings.WHITENOISE_USE_FINDERS = True
    for logged_in in (False, True):
        if logged_in:
            client.force_login(alice)
        page = client.get("/", follow=True)
        assert page.status_code == 200
        link = re.search(r'<link rel="icon" href="([^"]+)" type="([^"]+)">', page.content.decode())
        assert link, page.content.decode()[:1000]
        icon = client.get(link[1])
        assert icon.status_code == 200
        assert icon["Content-Type"].startswith("image/") and link[2] == icon["Content-Type"]
        assert b"<svg" in b"".join(icon.streaming_content)
