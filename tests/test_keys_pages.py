"""The member's Keys pages: listing, adding, editing, replacing, disabling and deleting keys."""

import re
import uuid

import pytest
from django.urls import reverse

from accounts import crypto
from accounts.models import ProviderKey

pytestmark = pytest.mark.django_db

CANARY = "sk-canary-SECRET-4242abcd"
KEY_ACTIONS = [
    "accounts-key-edit",
    "accounts-key-secret",
    "accounts-key-toggle",
    "accounts-key-delete",
]


def make_key(owner, provider="apimart", label="Mine", secret="sk-test-abcd1234", **fields):
    key = ProviderKey(provider=provider, label=label, owner=owner, **fields)
    key.set_secret(secret)
    key.save()
    return key


def team_key(*members, label="Studio key"):
    key = make_key(None, label=label, secret="sk-team-zzzz9876")
    key.allowed_users.set(members)
    return key


def url(name, key):
    return reverse(name, args=[key.code])


def html(response) -> str:
    return response.content.decode()


def fresh(key) -> ProviderKey:
    return ProviderKey.objects.get(pk=key.pk)


@pytest.fixture
def alices_key(alice):
    return make_key(alice)


@pytest.fixture
def as_alice(client, alice):
    client.force_login(alice)
    return client


def add(client, follow=False, **overrides):
    data = {"provider": "apimart", "label": "Personal", "secret": CANARY, "base_url": ""}
    data.update(overrides)
    return client.post(reverse("accounts-key-add"), data, follow=follow)


# --- who may open what ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["accounts-keys", "accounts-key-add", *KEY_ACTIONS])
def test_anonymous_visitors_are_sent_to_log_in(client, alices_key, name):
    path = reverse(name) if name in ("accounts-keys", "accounts-key-add") else url(name, alices_key)
    for response in (client.get(path), client.post(path)):
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/?next=")
    assert fresh(alices_key).label == "Mine"


@pytest.mark.parametrize(
    "name", ["accounts-key-edit", "accounts-key-secret", "accounts-key-delete"]
)
def test_another_member_gets_404_opening_alices_key(client, bob, alices_key, name):
    client.force_login(bob)
    assert client.get(url(name, alices_key)).status_code == 404


def test_another_member_cannot_change_alices_key_by_posting(client, bob, alices_key):
    client.force_login(bob)
    before = fresh(alices_key)
    posts = {
        "accounts-key-edit": {"label": "Bob's now", "base_url": ""},
        "accounts-key-secret": {"secret": "sk-bob-takes-over-1111"},
        "accounts-key-toggle": {},
        "accounts-key-delete": {},
    }
    for name, data in posts.items():
        assert client.post(url(name, alices_key), data).status_code == 404, name
    after = fresh(alices_key)
    assert (after.label, after.is_disabled, after.secret_ciphertext) == (
        before.label,
        before.is_disabled,
        before.secret_ciphertext,
    )


@pytest.mark.parametrize("name", KEY_ACTIONS)
def test_team_keys_answer_404_even_to_a_member_they_are_shared_with(as_alice, alice, bob, name):
    key = team_key(alice)
    assert as_alice.get(url(name, key)).status_code in (404, 405)
    assert as_alice.post(url(name, key), {"label": "x", "secret": CANARY}).status_code == 404
    as_alice.force_login(bob)
    assert as_alice.post(url(name, key), {"label": "x", "secret": CANARY}).status_code == 404
    after = fresh(key)
    assert (after.label, after.is_disabled, after.secret_last4) == ("Studio key", False, "9876")


def test_an_unknown_key_code_answers_404(as_alice):
    assert as_alice.get(reverse("accounts-key-edit", args=[uuid.uuid4()])).status_code == 404


def test_toggle_takes_only_a_post(as_alice, alices_key):
    assert as_alice.get(url("accounts-key-toggle", alices_key)).status_code == 405
    assert fresh(alices_key).is_disabled is False


# --- the list ------------------------------------------------------------------------------


def test_a_member_without_keys_is_invited_to_add_one(as_alice):
    page = html(as_alice.get(reverse("accounts-keys")))
    assert "You have no keys yet." in page
    assert f'href="{reverse("accounts-key-add")}"' in page
    assert "No team keys are shared with you." in page


def test_the_list_shows_each_key_with_gateway_mask_address_and_status(as_alice, alice, bob):
    make_key(alice, label="Main APIMart")
    make_key(alice, provider="omnivideo", label="Home server", base_url="https://video.example.com")
    make_key(alice, provider="omixa", label="Spare", is_disabled=True)
    make_key(bob, label="Bob's own")
    page = html(as_alice.get(reverse("accounts-keys")))
    for text in ("Main APIMart", "Home server", "Spare", "APIMart", "Omni Video", "Omixa"):
        assert text in page
    assert "…1234" in page
    assert "https://video.example.com" in page
    assert "gateway default" in page
    assert "Active" in page and "Disabled" in page and ">Enable" in page
    assert "Bob's own" not in page
    # One group per gateway, each headed by its name.
    assert re.findall(r'<h3 class="group-title" id="[\w-]+">([^<]+)</h3>', page) == [
        "Omni Video",
        "APIMart",
        "Omixa",
    ]


def test_a_refused_key_says_so_with_the_gateways_message_and_when(as_alice, alices_key):
    alices_key.mark_invalid("401 <Invalid token>")
    page = html(as_alice.get(reverse("accounts-keys")))
    assert "Refused by the gateway" in page
    assert "“401 &lt;Invalid token&gt;”" in page
    assert alices_key.invalid_at.strftime("%Y") in page


def test_a_key_that_needs_reentry_explains_the_secret_must_be_entered_again(as_alice, alices_key):
    ProviderKey.objects.filter(pk=alices_key.pk).update(needs_reentry=True)
    page = html(as_alice.get(reverse("accounts-keys")))
    assert "Needs re-entry" in page
    assert "Enter its secret again to use it." in page


def test_a_team_key_is_listed_for_its_members_without_actions(client, alice, bob):
    key = team_key(alice)
    client.force_login(alice)
    page = html(client.get(reverse("accounts-keys")))
    shared = page[page.index("Team keys shared with you") : page.index("</main>")]
    assert "Studio key" in shared and "…9876" in shared and "Active" in shared
    assert str(key.code) not in page
    for action in ("Edit", "Replace secret", "Disable", "Delete", "<form"):
        assert action not in shared
    client.force_login(bob)
    assert "Studio key" not in html(client.get(reverse("accounts-keys")))


def test_the_nav_links_to_keys_and_credits_and_marks_the_current_page(as_alice):
    page = html(as_alice.get(reverse("accounts-keys")))
    assert f'<a href="{reverse("accounts-keys")}" aria-current="page">Keys</a>' in page
    assert f'<a href="{reverse("accounts-credits")}">Credits</a>' in page


# --- adding --------------------------------------------------------------------------------


def test_a_member_adds_a_key_and_it_is_stored_encrypted(as_alice, alice):
    response = add(as_alice)
    assert response["Location"] == reverse("accounts-keys")
    key = ProviderKey.objects.get(owner=alice)
    assert (key.provider, key.label, key.base_url, key.secret_last4) == (
        "apimart",
        "Personal",
        "",
        "abcd",
    )
    assert CANARY not in key.secret_ciphertext and crypto.decrypt(key.secret_ciphertext) == CANARY
    page = html(as_alice.get(response["Location"]))
    assert "The key “Personal” was saved." in page


def test_an_omni_video_key_is_added_with_the_address_of_its_site(as_alice, alice):
    response = add(as_alice, provider="omnivideo", base_url="https://video.example.com")
    assert response.status_code == 302
    assert ProviderKey.objects.get(owner=alice).base_url == "https://video.example.com"


@pytest.mark.parametrize(
    "overrides, field_error",
    [
        ({"provider": "nonsense"}, "Choose one of the gateways in the list."),
        ({"provider": ""}, "Choose the gateway this key belongs to."),
        ({"secret": ""}, "Paste the API key; it cannot be empty."),
        ({"secret": "    "}, "Paste the API key; it cannot be empty."),
        ({"secret": "sk-1"}, "That is too short to be an API key."),
        ({"secret": "sk-has a-space-1234"}, "An API key has no spaces or line breaks"),
        ({"base_url": "ftp://files.example.com"}, "Enter an address that starts with http://"),
        ({"base_url": "javascript:alert(1)"}, "Enter an address that starts with http://"),
        ({"provider": "omnivideo"}, "Omni Video has no public address"),
        ({"label": ""}, "Give the key a label."),
    ],
)
def test_bad_input_is_shown_beside_the_field_and_nothing_is_saved(as_alice, overrides, field_error):
    before = ProviderKey.objects.count()
    response = add(as_alice, **overrides)
    assert response.status_code == 200
    page = html(response)
    assert re.search(r'<p class="field-error" role="alert">' + re.escape(field_error), page)
    assert ProviderKey.objects.count() == before
    # The secret typed is never sent back, whatever else was wrong.
    assert CANARY not in page


def test_a_form_with_an_error_keeps_what_was_typed_except_the_secret(as_alice):
    page = html(add(as_alice, label="Client work", base_url="ftp://x.example.com"))
    assert 'value="Client work"' in page
    assert 'value="ftp://x.example.com"' in page
    assert '<option value="apimart" selected>' in page
    assert re.search(r'<input type="password" name="secret"(?![^>]*value=)', page)
    assert "paste it again after fixing the fields marked below" in page


# --- editing, replacing, toggling, deleting ------------------------------------------------


def test_a_member_edits_the_label_and_base_url(as_alice, alices_key):
    response = as_alice.post(
        url("accounts-key-edit", alices_key),
        {"label": "Renamed", "base_url": "https://proxy.example.com"},
        follow=True,
    )
    assert "The key “Renamed” was saved." in html(response)
    key = fresh(alices_key)
    assert (key.label, key.base_url) == ("Renamed", "https://proxy.example.com")
    assert key.secret_ciphertext == alices_key.secret_ciphertext


def test_editing_refuses_a_bad_base_url_and_keeps_the_saved_one(as_alice, alices_key):
    response = as_alice.post(
        url("accounts-key-edit", alices_key), {"label": "Renamed", "base_url": "not a url"}
    )
    assert "Enter an address that starts with http://" in html(response)
    assert "Edit “Mine”" in html(response)
    assert (fresh(alices_key).label, fresh(alices_key).base_url) == ("Mine", "")


def test_editing_an_omni_video_key_keeps_its_address_required(as_alice, alice):
    key = make_key(alice, provider="omnivideo", base_url="https://video.example.com")
    response = as_alice.post(url("accounts-key-edit", key), {"label": "Home", "base_url": ""})
    assert "Omni Video has no public address" in html(response)
    assert fresh(key).base_url == "https://video.example.com"


def test_editing_never_touches_the_gateway_or_the_secret(as_alice, alices_key):
    as_alice.post(
        url("accounts-key-edit", alices_key),
        {"label": "Mine", "base_url": "", "provider": "omixa", "secret": CANARY},
    )
    key = fresh(alices_key)
    assert (key.provider, key.secret_last4) == ("apimart", "1234")


def test_replacing_the_secret_clears_a_refusal(as_alice, alices_key):
    alices_key.mark_invalid("Invalid token")
    response = as_alice.post(
        url("accounts-key-secret", alices_key), {"secret": CANARY}, follow=True
    )
    assert "The secret of “Mine” was replaced (…abcd). It is ready to use." in html(response)
    key = fresh(alices_key)
    assert (key.invalid_at, key.invalid_message, key.status) == (None, "", "active")
    assert crypto.decrypt(key.secret_ciphertext) == CANARY


def test_replacing_the_secret_clears_needs_reentry(as_alice, alices_key):
    ProviderKey.objects.filter(pk=alices_key.pk).update(needs_reentry=True)
    page = html(as_alice.get(url("accounts-key-secret", alices_key)))
    assert "Needs re-entry" in page
    as_alice.post(url("accounts-key-secret", alices_key), {"secret": CANARY})
    assert fresh(alices_key).needs_reentry is False


@pytest.mark.parametrize(
    "secret, error",
    [
        ("", "Paste the API key; it cannot be empty."),
        ("   ", "Paste the API key; it cannot be empty."),
        ("short", "That is too short to be an API key."),
    ],
)
def test_a_bad_replacement_secret_is_refused_and_the_old_one_kept(
    as_alice, alices_key, secret, error
):
    alices_key.mark_invalid("Invalid token")
    response = as_alice.post(url("accounts-key-secret", alices_key), {"secret": secret})
    assert response.status_code == 200
    assert error in html(response)
    key = fresh(alices_key)
    assert key.secret_ciphertext == alices_key.secret_ciphertext
    assert key.status == "refused by the gateway"


def test_a_member_disables_and_enables_a_key(as_alice, alices_key):
    response = as_alice.post(url("accounts-key-toggle", alices_key), follow=True)
    assert "“Mine” is disabled: it will not be used until you enable it." in html(response)
    assert fresh(alices_key).is_disabled is True
    response = as_alice.post(url("accounts-key-toggle", alices_key), follow=True)
    assert "“Mine” is enabled again." in html(response)
    assert fresh(alices_key).is_disabled is False


def test_enabling_a_refused_key_says_it_still_needs_a_new_secret(as_alice, alices_key):
    ProviderKey.objects.filter(pk=alices_key.pk).update(is_disabled=True)
    alices_key.mark_invalid("Invalid token")
    response = as_alice.post(url("accounts-key-toggle", alices_key), follow=True)
    assert "still refused by the gateway: replace its secret to use it." in html(response)
    assert fresh(alices_key).is_disabled is False


def test_deleting_asks_first_then_deletes_on_post(as_alice, alices_key):
    page = html(as_alice.get(url("accounts-key-delete", alices_key)))
    assert "Delete “Mine”?" in page and "…1234" in page
    assert ProviderKey.objects.filter(pk=alices_key.pk).exists()
    response = as_alice.post(url("accounts-key-delete", alices_key), follow=True)
    assert "The key “Mine” was deleted." in html(response)
    assert not ProviderKey.objects.filter(pk=alices_key.pk).exists()


# --- the secret stays secret ---------------------------------------------------------------


def test_the_secret_never_appears_on_any_keys_page_after_saving(as_alice, alice):
    saved = add(as_alice, follow=True)
    key = ProviderKey.objects.get(owner=alice)
    pages = {
        "after saving": saved,
        "list": as_alice.get(reverse("accounts-keys")),
        "edit": as_alice.get(url("accounts-key-edit", key)),
        "replace": as_alice.get(url("accounts-key-secret", key)),
        "replace with an error": as_alice.post(url("accounts-key-secret", key), {"secret": "x"}),
        "delete": as_alice.get(url("accounts-key-delete", key)),
    }
    for name, response in pages.items():
        page = html(response)
        assert response.status_code == 200, name
        assert CANARY not in page and "4242" not in page, name
        assert "abcd" in page, name


def test_the_secret_is_never_logged(as_alice, alice, caplog):
    caplog.set_level("DEBUG")
    add(as_alice, base_url="ftp://wrong.example.com")
    add(as_alice)
    key = ProviderKey.objects.get(owner=alice)
    as_alice.post(url("accounts-key-secret", key), {"secret": CANARY + "x"})
    as_alice.post(url("accounts-key-secret", key), {"secret": "short"})
    assert CANARY not in caplog.text
