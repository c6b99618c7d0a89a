"""Presets on Create: saving the settings on screen (with or without the prompt and its
{slot}), the picker's order, filling the form with and without htmx, presets the catalog has
moved away from, the presets page's rename, delete and featuring, and who may do what."""

import dataclasses
import html
import re
import uuid

import pytest
from django.urls import NoReverseMatch, URLPattern, URLResolver, get_resolver, reverse

from accounts.models import LedgerEntry
from generations import presets as preset_views
from generations.models import Task, Visibility
from generations.models.presets import MAX_PRESETS_PER_MEMBER, SLOT, Preset
from generations.providers import catalog
from tests.test_create import HX, Page, form_data, make_key

pytestmark = pytest.mark.django_db

CREATE = "/create/"
FILL = "/create/preset"
PRESETS = "/presets/"
FLASH = "apimart/Omni-Flash-Ext"


@pytest.fixture
def as_alice(client, alice):
    client.force_login(alice)
    return client


@pytest.fixture
def key(alice):
    return make_key(alice, "apimart")


def preset(owner, name="Vertical clip", **fields) -> Preset:
    values = {
        "provider": "apimart",
        "model": "Omni-Flash-Ext",
        "duration": 8,
        "resolution": "1080p",
        "aspect_ratio": "9:16",
        "visibility": Visibility.PRIVATE,
    }
    values.update(fields)
    return Preset.objects.create(owner=owner, name=name, **values)


def save(client, key, htmx=False, **fields):
    data = form_data(
        key,
        duration="8",
        resolution="1080p",
        aspect_ratio="9:16",
        prompt="a heron over a lake at dawn",
        save_preset="1",
        preset_name="Vertical clip",
        preset_visibility="private",
    )
    data.update(fields)
    data = {name: value for name, value in data.items() if value is not None}
    return client.post(CREATE, data, **(HX if htmx else {}))


def text(response) -> str:
    return response.content.decode()


def prompt_text(page: str) -> str:
    found = re.search(r'<textarea name="prompt"[^>]*>(.*?)</textarea>', page, re.S)
    return html.unescape(found.group(1)).removeprefix("\n")


def picked(response) -> dict[str, str]:
    page = Page(text(response))
    return {name: page.selected.get(name) for name in ("model", *preset_views.SETTINGS)}


# --- saving ----------------------------------------------------------------------------------


def test_saving_keeps_the_model_and_settings_but_not_the_prompt_unless_asked(as_alice, alice, key):
    response = save(as_alice, key)

    assert response.status_code == 200
    saved = Preset.objects.get(owner=alice)
    assert (saved.name, saved.visibility, saved.model_key) == ("Vertical clip", "private", FLASH)
    assert (saved.duration, saved.resolution, saved.aspect_ratio) == (8, "1080p", "9:16")
    assert saved.prompt == ""
    page = text(response)
    assert "Saved the preset “Vertical clip”." in page
    # Back on Create with the same settings and prompt; nothing submitted or charged.
    assert picked(response) == {
        "model": FLASH,
        "duration": "8",
        "resolution": "1080p",
        "aspect_ratio": "9:16",
    }
    assert prompt_text(page) == "a heron over a lake at dawn"
    assert f'<option value="{saved.code}">Vertical clip' in page
    assert not Task.objects.exists()
    assert not LedgerEntry.objects.filter(user=alice).exists()


def test_saving_with_the_prompt_keeps_its_slot(as_alice, alice, key):
    save(as_alice, key, prompt="a {slot} over a lake at dawn", preset_prompt="1")

    saved = Preset.objects.get(owner=alice)
    assert saved.prompt == "a {slot} over a lake at dawn"
    assert saved.has_slot
    assert not Task.objects.exists()


def test_saving_with_htmx_answers_the_form_and_the_picker(as_alice, alice, key):
    response = save(as_alice, key, htmx=True, preset_visibility="team")

    page = text(response)
    assert page.lstrip().startswith('<form id="create-form"')
    assert "<html" not in page
    assert "Saved the preset “Vertical clip”." in page
    saved = Preset.objects.get(owner=alice)
    assert saved.visibility == Visibility.TEAM
    # The picker above the form is sent along, with the new preset in it.
    assert 'id="preset-picker" class="preset-picker" hx-swap-oob="true"' in page
    assert f'<option value="{saved.code}">' in page


def test_a_form_sent_twice_saves_one_preset(as_alice, alice, key):
    save(as_alice, key)
    response = save(as_alice, key)

    assert Preset.objects.filter(owner=alice).count() == 1
    assert "is saved already" in text(response)


def test_settings_the_model_does_not_take_are_refused_in_the_catalogs_words(as_alice, key):
    response = save(as_alice, key, duration="5", aspect_ratio="1:1")

    page = html.unescape(text(response))
    assert "Omni Flash Ext accepts 4, 6, 8 or 10 seconds; 5 s is not possible." in page
    assert "Omni Flash Ext supports the aspect ratios 16:9 or 9:16; '1:1' is not one of them." in (
        page
    )
    assert not Preset.objects.exists()
    # The save fields stay open with what was typed.
    assert 'id="save-preset" open' in page
    assert 'value="Vertical clip"' in page


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"preset_name": "  "}, "Give the preset a name."),
        ({"preset_name": "n" * 81}, "A preset's name has at most 80 characters."),
        (
            {"preset_prompt": "1", "prompt": "x" * (catalog.PROMPT_MAX_CHARS + 1)},
            "The prompt is 4,001 characters long; the limit is 4,000.",
        ),
        ({"preset_prompt": "1", "prompt": ""}, "Write the prompt to include"),
        ({"model": "apimart/Nothing-Like-It"}, "Choose a model from the list."),
    ],
    ids=["no name", "long name", "long prompt", "no prompt", "no model"],
)
def test_a_preset_out_of_bounds_is_refused(as_alice, key, fields, message):
    response = save(as_alice, key, **fields)

    assert message in html.unescape(text(response))
    assert not Preset.objects.exists()


def test_a_member_keeps_a_bounded_number_of_presets(as_alice, alice, key):
    Preset.objects.bulk_create(
        Preset(owner=alice, name=f"p{n}", provider="apimart", model="Omni-Flash-Ext")
        for n in range(MAX_PRESETS_PER_MEMBER)
    )
    response = save(as_alice, key, preset_name="One more")

    assert f"You have {MAX_PRESETS_PER_MEMBER} presets" in text(response)
    assert not Preset.objects.filter(name="One more").exists()


# --- the picker ------------------------------------------------------------------------------


def test_the_picker_offers_featured_then_own_then_team_presets(client, alice, bob, carol):
    team_b = preset(bob, "B team", visibility=Visibility.TEAM)
    featured = preset(bob, "Z featured", visibility=Visibility.TEAM, featured=True)
    own_z = preset(alice, "Z mine")
    own_a = preset(alice, "A mine")
    preset(bob, "Bob's own")  # personal: never offered to alice
    preset(carol, "Carol's own")

    client.force_login(alice)
    page = Page(text(client.get(CREATE)))

    assert page.selects["preset"] == [str(p.code) for p in (featured, own_a, own_z, team_b)]
    assert page.groups["Featured"] == [str(featured.code)]
    assert page.groups["Yours"] == [str(own_a.code), str(own_z.code)]
    assert page.groups["Team"] == [str(team_b.code)]


def test_a_teammate_sees_team_presets_but_not_personal_ones(client, alice, bob):
    team = preset(alice, "For everyone", visibility=Visibility.TEAM)
    personal = preset(alice, "Just mine")

    client.force_login(bob)
    page = text(client.get(CREATE))
    assert str(team.code) in page
    assert str(personal.code) not in page
    listing = text(client.get(PRESETS))
    assert "For everyone" in listing
    assert "Just mine" not in listing


# --- filling the form ------------------------------------------------------------------------


def test_choosing_a_preset_without_javascript_fills_the_form(as_alice, alice):
    chosen = preset(alice, prompt="a heron at dawn")

    response = as_alice.get(CREATE, {"preset": chosen.code})

    assert response.status_code == 200
    assert picked(response) == {
        "model": FLASH,
        "duration": "8",
        "resolution": "1080p",
        "aspect_ratio": "9:16",
    }
    assert prompt_text(text(response)) == "a heron at dawn"
    assert "Used the preset “Vertical clip”." in text(response)


def test_choosing_a_preset_with_htmx_swaps_the_form(as_alice, alice):
    chosen = preset(alice, duration=10, resolution="4k", aspect_ratio="16:9")

    response = as_alice.get(FILL, {"preset": chosen.code}, **HX)

    page = text(response)
    assert page.lstrip().startswith('<form id="create-form"')
    assert "<html" not in page
    assert picked(response) == {
        "model": FLASH,
        "duration": "10",
        "resolution": "4k",
        "aspect_ratio": "16:9",
    }
    assert "Used the preset “Vertical clip”." in page
    # Without htmx the picker's own address leads to the whole page.
    plain = as_alice.get(FILL, {"preset": chosen.code})
    assert plain.status_code == 302
    assert plain["Location"] == f"{CREATE}?preset={chosen.code}"


def test_a_prompt_with_a_slot_comes_ready_to_type_in(as_alice, alice):
    chosen = preset(alice, prompt="a {slot} over a lake at dawn")

    for response in (
        as_alice.get(CREATE, {"preset": chosen.code}),
        as_alice.get(FILL, {"preset": chosen.code}, **HX),
    ):
        page = text(response)
        assert prompt_text(page) == "a {slot} over a lake at dawn"
        textarea = re.search(r'<textarea name="prompt"[^>]*>', page).group(0)
        assert 'data-slot="{slot}"' in textarea
        assert "autofocus" in textarea
        assert "Type your words in place of {slot}" in page


def test_a_prompt_still_holding_its_slot_is_not_submitted(as_alice, alice, key, carol):
    from accounts import ledger

    ledger.grant(alice, 500, by=carol, reason="welcome")
    response = as_alice.post(CREATE, form_data(key, prompt="a {slot} over a lake"))

    assert f"Replace {SLOT} in the prompt with your words" in text(response)
    assert not Task.objects.exists()


def test_a_preset_whose_model_is_gone_fills_nothing_and_says_so(as_alice, alice):
    gone = preset(alice, "Old model", model="Omni-Flash-Retired", prompt="a heron")

    response = as_alice.get(CREATE, {"preset": gone.code})

    page = html.unescape(text(response))
    assert "The preset “Old model” no longer fits" in page
    assert "The model apimart/Omni-Flash-Retired is no longer offered." in page
    assert "Nothing was filled in." in page
    assert Page(text(response)).selected.get("model") == catalog.MODELS[0].key
    assert prompt_text(text(response)) == ""
    # The picker and the presets page say so before it is chosen.
    assert "(no longer fits: The model apimart/Omni-Flash-Retired" in page
    assert "No longer fits: The model apimart/Omni-Flash-Retired is no longer offered." in (
        html.unescape(text(as_alice.get(PRESETS)))
    )


def test_a_value_no_longer_allowed_is_left_out_and_named(as_alice, alice, monkeypatch):
    stale = preset(alice, "Long take", duration=12, resolution="1080p", prompt="a heron")

    response = as_alice.get(FILL, {"preset": stale.code}, **HX)

    page = html.unescape(text(response))
    assert "left at the model's defaults" in page
    assert "Omni Flash Ext accepts 4, 6, 8 or 10 seconds; 12 s is not possible." in page
    # The rest still fits and is filled; the duration is the model's default, not 12.
    assert picked(response) == {
        "model": FLASH,
        "duration": "6",
        "resolution": "1080p",
        "aspect_ratio": "9:16",
    }
    assert prompt_text(text(response)) == "a heron"


def test_a_catalog_that_moved_on_is_noticed_without_a_change_to_the_preset(
    as_alice, alice, monkeypatch
):
    kept = preset(alice, "Crisp", resolution="4k")
    spec = catalog.get("apimart", "Omni-Flash-Ext")
    narrower = dataclasses.replace(spec, resolutions=("720p", "1080p"))
    monkeypatch.setitem(catalog._BY_KEY, spec.key, narrower)

    page = html.unescape(text(as_alice.get(CREATE, {"preset": kept.code})))

    assert "'4k' is not one of them" in page
    assert Page(page).selected["resolution"] == "720p"


# --- who may do what -------------------------------------------------------------------------


def preset_urls() -> list[str]:
    """Every preset URL name, found in the URL configuration by its prefix."""
    names = []

    def walk(patterns):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns)
            elif isinstance(pattern, URLPattern) and (pattern.name or "").startswith(
                "generations-preset"
            ):
                names.append(pattern.name)

    walk(get_resolver().url_patterns)
    return sorted(set(names))


def addresses(chosen: Preset) -> list[str]:
    """Every address that names `chosen`: by its code in the path or in the query."""
    found = [f"{CREATE}?preset={chosen.code}"]
    for name in preset_urls():
        try:
            found.append(reverse(name, kwargs={"code": chosen.code}))
        except NoReverseMatch:
            found.append(f"{reverse(name)}?preset={chosen.code}")
    return found


def test_the_preset_urls_are_found():
    assert set(preset_urls()) >= {
        "generations-preset-fill",
        "generations-presets",
        "generations-preset-rename",
        "generations-preset-delete",
        "generations-preset-feature",
    }


@pytest.mark.parametrize("who", ["bob", "carol"])
def test_another_members_personal_preset_is_404_on_every_url(client, alice, bob, carol, who):
    hidden = preset(alice, "Mine alone")
    client.force_login({"bob": bob, "carol": carol}[who])

    urls = [url for url in addresses(hidden) if url != PRESETS + f"?preset={hidden.code}"]
    assert len(urls) >= 5
    for url in urls:
        if url.startswith(CREATE) or url.startswith(FILL):
            assert client.get(url).status_code == 404, url
            assert client.get(url, **HX).status_code == 404, url
        else:
            for headers in ({}, HX):
                response = client.post(url, {"name": "Taken", "featured": "1"}, **headers)
                assert response.status_code == 404, url
    hidden.refresh_from_db()
    assert (hidden.name, hidden.featured) == ("Mine alone", False)
    assert "Mine alone" not in text(client.get(PRESETS))


def test_an_unknown_or_malformed_preset_code_is_404(as_alice):
    assert as_alice.get(CREATE, {"preset": uuid.uuid4()}).status_code == 404
    assert as_alice.get(CREATE, {"preset": "not-a-code"}).status_code == 404
    assert as_alice.get(FILL, {"preset": "not-a-code"}, **HX).status_code == 404


def test_anonymous_visitors_are_sent_to_log_in(client, alice):
    chosen = preset(alice, visibility=Visibility.TEAM)
    for url in addresses(chosen):
        response = client.post(url) if "/presets/" in url and url != PRESETS else client.get(url)
        assert response.status_code == 302, url
        assert "/login/" in response["Location"], url


def test_the_owner_renames_and_deletes_their_preset(as_alice, alice):
    mine = preset(alice)

    response = as_alice.post(reverse("generations-preset-rename", args=[mine.code]), {"name": "X"})
    assert response.status_code == 302
    mine.refresh_from_db()
    assert mine.name == "X"

    row = as_alice.post(
        reverse("generations-preset-rename", args=[mine.code]), {"name": "Tall"}, **HX
    )
    assert f'id="preset-{mine.code}"' in text(row)
    assert "Renamed the preset to “Tall”." in text(row)

    refused = as_alice.post(reverse("generations-preset-rename", args=[mine.code]), {"name": ""})
    assert refused.status_code == 302
    mine.refresh_from_db()
    assert mine.name == "Tall"

    gone = as_alice.post(reverse("generations-preset-delete", args=[mine.code]), **HX)
    assert "Deleted the preset “Tall”." in text(gone)
    assert not Preset.objects.exists()


def test_a_teammate_uses_a_team_preset_but_cannot_change_it(client, alice, bob):
    team = preset(alice, "Shared", visibility=Visibility.TEAM)
    client.force_login(bob)

    assert client.get(CREATE, {"preset": team.code}).status_code == 200
    assert client.get(FILL, {"preset": team.code}, **HX).status_code == 200
    for name in ("generations-preset-rename", "generations-preset-delete"):
        url = reverse(name, args=[team.code])
        assert client.post(url, {"name": "Mine now"}).status_code == 404
    page = text(client.get(PRESETS))
    assert "Shared" in page
    assert reverse("generations-preset-delete", args=[team.code]) not in page
    team.refresh_from_db()
    assert team.name == "Shared"


def test_an_admin_may_delete_a_team_preset(client, alice, carol):
    team = preset(alice, "Shared", visibility=Visibility.TEAM)
    client.force_login(carol)
    assert reverse("generations-preset-delete", args=[team.code]) in text(client.get(PRESETS))

    response = client.post(reverse("generations-preset-delete", args=[team.code]))

    assert response.status_code == 302
    assert not Preset.objects.exists()


# --- featuring -------------------------------------------------------------------------------


def test_an_admin_features_a_team_preset_and_it_comes_first(client, alice, bob, carol):
    preset(alice, "A mine")
    team = preset(bob, "Z team", visibility=Visibility.TEAM)
    client.force_login(carol)
    assert "Feature</button>" in text(client.get(PRESETS))

    response = client.post(
        reverse("generations-preset-feature", args=[team.code]), {"featured": "1"}
    )

    assert response.status_code == 302
    team.refresh_from_db()
    assert team.featured
    client.force_login(alice)
    assert Page(text(client.get(CREATE))).selects["preset"][0] == str(team.code)
    assert "Feature</button>" not in text(client.get(PRESETS))


def test_a_member_cannot_feature_and_a_personal_preset_is_never_featured(client, alice, carol):
    team = preset(alice, "Shared", visibility=Visibility.TEAM)
    own = preset(carol, "Carol's own")
    url = reverse("generations-preset-feature", args=[team.code])

    client.force_login(alice)
    assert client.post(url, {"featured": "1"}).status_code == 404
    client.force_login(carol)
    assert (
        client.post(
            reverse("generations-preset-feature", args=[own.code]), {"featured": "1"}
        ).status_code
        == 404
    )
    team.refresh_from_db()
    own.refresh_from_db()
    assert not team.featured and not own.featured


def test_the_admin_action_toggles_featured_team_presets(client, alice, carol):
    team = preset(alice, "Shared", visibility=Visibility.TEAM)
    already = preset(alice, "Old favourite", visibility=Visibility.TEAM, featured=True)
    personal = preset(alice, "Mine alone")
    client.force_login(carol)

    response = client.post(
        reverse("admin:generations_preset_changelist"),
        {
            "action": "toggle_featured",
            "_selected_action": [team.pk, already.pk, personal.pk],
        },
        follow=True,
    )

    page = text(response)
    assert "1 preset(s) now featured, 1 no longer featured." in page
    assert "1 personal preset(s) left as they are" in page
    for item in (team, already, personal):
        item.refresh_from_db()
    assert (team.featured, already.featured, personal.featured) == (True, False, False)


# --- the presets page ------------------------------------------------------------------------


def test_the_presets_page_lists_own_and_team_presets_with_their_settings(client, alice, bob):
    preset(alice, "Vertical clip", prompt="a heron over a lake at dawn, mist rising slowly")
    preset(bob, "Bob's wide", visibility=Visibility.TEAM, featured=True, aspect_ratio="16:9")
    client.force_login(alice)

    page = html.unescape(text(client.get(PRESETS)))

    mine, team = page.split('id="team-heading"')
    assert "Vertical clip" in mine
    assert "Omni Flash Ext · 8 s · 1080p · 9:16" in mine
    assert "“a heron over a lake at dawn, mist rising slowly”" in mine
    assert "Bob's wide" in team
    assert "by Bob B." in team
    assert "Featured" in team


def test_the_admin_form_refuses_a_featured_personal_preset(client, alice, carol):
    personal = preset(alice, "Mine alone")
    client.force_login(carol)
    url = reverse("admin:generations_preset_change", args=[personal.pk])
    assert client.get(url).status_code == 200

    response = client.post(
        url,
        {
            "owner": alice.pk,
            "name": "Mine alone",
            "visibility": "private",
            "provider": "apimart",
            "model": "Omni-Flash-Ext",
            "duration": "8",
            "resolution": "1080p",
            "aspect_ratio": "9:16",
            "prompt": "",
            "featured": "on",
            "created_at_0": "2025-06-15",
            "created_at_1": "12:00:00",
        },
    )

    assert response.status_code == 200
    assert "Only team presets can be featured." in text(response)
    personal.refresh_from_db()
    assert not personal.featured
