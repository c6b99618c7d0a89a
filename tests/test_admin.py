"""The admin: who may open it, moving credits, keys that never show their secret, the read-only
ledger and tasks, prices, quotas, and the gateway cost report."""

import uuid
from datetime import timedelta
from decimal import Decimal
from html import unescape
from html.parser import HTMLParser

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse
from django.utils import timezone
from django.views.debug import SafeExceptionReporterFilter

from accounts import ledger
from accounts.models import LedgerEntry, ProviderKey, Quota, TeamQuota
from generations.models import ModelPrice, Task
from generations.providers import GenerationRequest
from generations.services import fail_task, submit_task

pytestmark = pytest.mark.django_db

CANARY = "sk-canary-SECRET-77aa5511"
CAT = GenerationRequest("apimart", "Omni-Flash-Ext", "a cat", duration=4, resolution="720p")


def own_key(user, label: str = "Mine", secret: str = "sk-test-abcd1234") -> ProviderKey:
    key = ProviderKey(provider="apimart", label=label, owner=user)
    key.set_secret(secret)
    key.save()
    return key


def paid_task(user, key: ProviderKey) -> Task:
    task, _ = submit_task(user, CAT, key=key)
    return task


def notes(client, response) -> list[str]:
    """The messages the page after the redirect shows."""
    assert response.status_code == 302, response.content.decode()[:3000]
    return [str(message) for message in client.get(response["Location"]).context["messages"]]


class FormReader(HTMLParser):
    """What a browser would submit for one form of a page: its fields and their values."""

    def __init__(self, form_id: str):
        super().__init__()
        self.form_id, self.inside, self.data = form_id, False, {}
        self.select = self.textarea = None

    def add(self, name: str, value: str) -> None:
        self.data.setdefault(name, []).append(value)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.inside = attrs.get("id") == self.form_id
        if not self.inside:
            return
        if tag == "option" and self.select:
            name, multiple, offered, chosen = self.select
            offered.append(attrs.get("value", ""))
            if "selected" in attrs:
                chosen.append(attrs.get("value", ""))
        elif "name" not in attrs:
            return
        elif tag == "input":
            kind = attrs.get("type", "text")
            if kind in ("submit", "button", "reset", "file", "image"):
                return
            if kind in ("checkbox", "radio") and "checked" not in attrs:
                return
            self.add(attrs["name"], attrs.get("value", "on" if kind == "checkbox" else ""))
        elif tag == "select":
            self.select = (attrs["name"], "multiple" in attrs, [], [])
        elif tag == "textarea":
            self.textarea = attrs["name"]
            self.add(self.textarea, "")

    def handle_data(self, data):
        if self.textarea:
            self.data[self.textarea][-1] += data

    def handle_endtag(self, tag):
        if tag == "form":
            self.inside = False
        elif tag == "select" and self.select:
            name, multiple, offered, chosen = self.select
            # A single choice with nothing selected sends its first option, as browsers do.
            for value in chosen or ([] if multiple else offered[:1]):
                self.add(name, value)
            self.select = None
        elif tag == "textarea" and self.textarea:
            # Browsers drop the one newline that follows the opening tag.
            self.data[self.textarea][-1] = self.data[self.textarea][-1].removeprefix("\n")
            self.textarea = None


def read_form(response, form_id: str) -> dict[str, list[str]]:
    reader = FormReader(form_id)
    reader.feed(response.content.decode())
    assert reader.data, f"no form {form_id!r} on the page"
    return reader.data


# --- Who may open the admin -------------------------------------------------------------------


@pytest.fixture
def world(alice, bob, carol):
    """One of everything the admin lists."""
    ledger.grant(alice, 100, by=carol, reason="welcome")
    key = own_key(alice)
    task = paid_task(alice, key)
    Quota.objects.create(user=alice, max_active_tasks=2)
    TeamQuota.objects.create(max_credits_per_day=500)
    return {
        "user": alice,
        "providerkey": key,
        "ledgerentry": LedgerEntry.objects.first(),
        "quota": Quota.objects.get(),
        "teamquota": TeamQuota.objects.get(),
        "modelprice": ModelPrice.objects.first(),
        "task": task,
    }


PAGES = [
    ("accounts", "user", ("changelist", "change", "add")),
    ("accounts", "providerkey", ("changelist", "change", "add", "history")),
    ("accounts", "ledgerentry", ("changelist", "change")),
    ("accounts", "quota", ("changelist", "change", "add")),
    ("accounts", "teamquota", ("changelist", "change")),
    ("generations", "modelprice", ("changelist", "change", "add")),
    ("generations", "task", ("changelist", "change")),
]


def admin_pages(world) -> list[str]:
    urls = [reverse("admin:index"), reverse("admin:generations_task_cost_report")]
    for app, model, views in PAGES:
        for view in views:
            name = f"admin:{app}_{model}_{view}"
            args = [world[model].pk] if view in ("change", "history") else []
            urls.append(reverse(name, args=args))
    return urls


def test_every_admin_page_opens_for_an_admin(client, carol, world):
    client.force_login(carol)
    for url in admin_pages(world):
        response = client.get(url)
        assert response.status_code == 200, url


def test_members_cannot_reach_any_admin_page(client, alice, world):
    client.force_login(alice)
    for url in admin_pages(world):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/admin/login/"), url


def test_the_user_list_shows_each_balance(client, alice, carol):
    ledger.grant(alice, 123, by=carol, reason="welcome")
    client.force_login(carol)
    page = client.get(reverse("admin:accounts_user_changelist")).content.decode()
    assert "Balance" in page
    assert '<td class="field-balance">123</td>' in page


# --- Grant and deduct ---------------------------------------------------------------------------


def move_credits(client, action: str, users, token=None, **fields):
    data = {
        "action": action,
        "_selected_action": [u.pk for u in users],
        "apply": "yes",
        "token": str(token or uuid.uuid4()),
    }
    data.update(fields)
    return client.post(reverse("admin:accounts_user_changelist"), data)


def test_the_grant_action_asks_for_an_amount_first(client, alice, carol):
    client.force_login(carol)
    response = client.post(
        reverse("admin:accounts_user_changelist"),
        {"action": "grant_credits", "_selected_action": [alice.pk], "index": "0"},
    )
    assert response.status_code == 200
    page = response.content.decode()
    assert 'name="amount"' in page and "Alice A." in page
    assert not LedgerEntry.objects.exists()


def test_granting_writes_one_positive_entry_by_the_admin(client, alice, carol):
    client.force_login(carol)
    response = move_credits(client, "grant_credits", [alice], amount="50", reason="")
    assert response.status_code == 302
    entry = LedgerEntry.objects.get()
    assert (entry.user, entry.kind, entry.amount, entry.created_by) == (alice, "grant", 50, carol)
    alice.refresh_from_db()
    assert alice.credit_balance == 50
    assert notes(client, response) == ["Granted 50 credits to Alice A.; balance now 50."]


def test_granting_to_two_members_says_so_for_each(client, alice, bob, carol):
    client.force_login(carol)
    response = move_credits(client, "grant_credits", [alice, bob], amount="7", reason="bonus")
    assert LedgerEntry.objects.filter(kind="grant", amount=7, reason="bonus").count() == 2
    assert notes(client, response) == [
        "Granted 7 credits to Alice A.; balance now 7.",
        "Granted 7 credits to Bob B.; balance now 7.",
    ]


def test_a_grant_form_sent_twice_grants_once(client, alice, carol):
    client.force_login(carol)
    opened = client.post(
        reverse("admin:accounts_user_changelist"),
        {"action": "grant_credits", "_selected_action": [alice.pk], "index": "0"},
    )
    data = read_form(opened, "credits_form")
    data.update(amount=["50"], reason=["bonus"])
    first = client.post(reverse("admin:accounts_user_changelist"), data)
    assert notes(client, first) == ["Granted 50 credits to Alice A.; balance now 50."]
    again = client.post(reverse("admin:accounts_user_changelist"), data)
    assert notes(client, again) == [
        "This form was already sent for Alice A.; nothing more was granted."
    ]
    assert LedgerEntry.objects.count() == 1
    alice.refresh_from_db()
    assert alice.credit_balance == 50


def test_a_credits_form_without_its_token_writes_nothing(client, alice, carol):
    client.force_login(carol)
    response = move_credits(client, "grant_credits", [alice], token="stale", amount="5")
    assert "This form is out of date; start again from the user list." in response.text
    assert not LedgerEntry.objects.exists()


def test_deducting_writes_one_negative_adjustment_by_the_admin(client, alice, carol):
    ledger.grant(alice, 100, by=carol, reason="welcome")
    client.force_login(carol)
    response = move_credits(client, "deduct_credits", [alice], amount="30", reason="overgrant")
    assert response.status_code == 302
    entry = LedgerEntry.objects.get(kind="adjustment")
    assert (entry.amount, entry.created_by, entry.reason) == (-30, carol, "overgrant")
    alice.refresh_from_db()
    assert alice.credit_balance == 70
    assert notes(client, response) == ["Deducted 30 credits from Alice A.; balance now 70."]


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("-5", "Enter a number of credits above zero."),
        ("0", "Enter a number of credits above zero."),
        ("2.5", "Enter a whole number of credits, like 50."),
        ("ten", "Enter a whole number of credits, like 50."),
        ("", "Enter how many credits."),
        ("5000000", "At most 1,000,000 credits at a time."),
    ],
)
@pytest.mark.parametrize("action", ["grant_credits", "deduct_credits"])
def test_a_bad_amount_is_refused_beside_the_field_and_nothing_is_written(
    client, alice, carol, action, amount, message
):
    ledger.grant(alice, 10, by=carol, reason="welcome")
    client.force_login(carol)
    response = move_credits(client, action, [alice], amount=amount, reason="because")
    assert response.status_code == 200
    page = response.content.decode()
    assert message in page
    assert 'value="because"' in page and (not amount or f'value="{amount}"' in page)
    assert LedgerEntry.objects.count() == 1


def test_deducting_needs_a_reason(client, alice, carol):
    ledger.grant(alice, 10, by=carol, reason="welcome")
    client.force_login(carol)
    response = move_credits(client, "deduct_credits", [alice], amount="5", reason="   ")
    assert "Say why the credits are taken back." in response.content.decode()
    assert LedgerEntry.objects.count() == 1


def test_deducting_more_than_the_balance_is_refused_and_nothing_is_written(
    client, alice, bob, carol
):
    ledger.grant(alice, 100, by=carol, reason="welcome")
    ledger.grant(bob, 10, by=carol, reason="welcome")
    client.force_login(carol)
    response = move_credits(client, "deduct_credits", [alice, bob], amount="20", reason="oops")
    assert response.status_code == 200
    page = response.content.decode()
    assert "Bob B. has 10 credits, so 20 cannot be deducted." in page
    assert "Nothing was deducted from anyone." in page
    assert not LedgerEntry.objects.filter(kind="adjustment").exists()
    alice.refresh_from_db()
    bob.refresh_from_db()
    assert (alice.credit_balance, bob.credit_balance) == (100, 10)


# --- The user page ------------------------------------------------------------------------------


def test_the_user_page_shows_only_the_twenty_most_recent_entries(client, alice, carol):
    for number in range(1, 22):
        ledger.grant(alice, 1, by=carol, reason=f"welcome #{number:02d}")
    client.force_login(carol)
    page = client.get(reverse("admin:accounts_user_change", args=[alice.pk])).content.decode()
    assert "20 most recent ledger entries" in page
    assert "welcome #21" in page and "welcome #02" in page
    assert "welcome #01" not in page
    assert "All 21 ledger entries" in page
    assert "Add another ledger entry" not in page


def test_an_admin_sets_a_members_limits_on_their_page(client, alice, carol):
    # More entries than the page shows, so the read-only rows are posted back too.
    for _ in range(21):
        ledger.grant(alice, 5, by=carol, reason="welcome")
    client.force_login(carol)
    url = reverse("admin:accounts_user_change", args=[alice.pk])
    data = read_form(client.get(url), "user_form")
    data["quota-0-max_active_tasks"] = ["2"]
    data["quota-0-allowed_models"] = ['["apimart/*"]']
    response = client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:3000]
    quota = Quota.objects.get(user=alice)
    assert (quota.max_active_tasks, quota.allowed_models) == (2, ["apimart/*"])
    assert LedgerEntry.objects.count() == 21


def test_a_members_page_says_what_empty_limits_fall_back_to(client, alice, carol):
    TeamQuota.objects.create(max_active_tasks=3, allowed_models=["apimart/*"])
    client.force_login(carol)
    page = client.get(reverse("admin:accounts_user_change", args=[alice.pk])).text
    assert (
        "Empty fields use the team defaults: 3 tasks at once, no daily limit, "
        "no monthly limit, models apimart/*." in page
    )


def test_a_quota_naming_an_unknown_model_is_refused(client, alice, carol):
    client.force_login(carol)
    response = client.post(
        reverse("admin:accounts_quota_add"),
        {"user": alice.pk, "allowed_models": '["apimart/no-such-model"]'},
    )
    assert response.status_code == 200
    assert "is not a model of that gateway; it offers Omni-Flash-Ext" in response.content.decode()
    assert not Quota.objects.exists()


def test_team_defaults_can_be_added_once_and_never_deleted(client, carol):
    client.force_login(carol)
    add = reverse("admin:accounts_teamquota_add")
    response = client.post(add, {"max_active_tasks": "3", "allowed_models": "[]"})
    assert response.status_code == 302
    assert client.get(add).status_code == 403
    team = TeamQuota.objects.get()
    assert client.get(reverse("admin:accounts_teamquota_delete", args=[team.pk])).status_code == 403


def test_deleting_a_member_with_ledger_entries_is_refused(client, alice, carol):
    ledger.grant(alice, 10, by=carol, reason="welcome")
    client.force_login(carol)
    url = reverse("admin:accounts_user_delete", args=[alice.pk])
    page = client.get(url).content.decode()
    assert "Cannot delete user" in page
    assert "1 ledger entry of this account (the credits history)" in page
    assert "untick “Active” on their page instead" in page
    assert 'name="post"' not in page  # no confirm button
    response = client.post(url, {"post": "yes"})
    assert "Cannot delete user" in response.content.decode()
    bulk = client.post(
        reverse("admin:accounts_user_changelist"),
        {"action": "delete_selected", "_selected_action": [alice.pk], "post": "yes"},
    )
    assert "protected related objects" in bulk.content.decode()
    assert type(alice).objects.filter(pk=alice.pk).exists()
    assert LedgerEntry.objects.count() == 1


def test_deleting_an_admin_who_granted_credits_is_refused(client, alice, bob, carol):
    ledger.grant(alice, 10, by=bob, reason="welcome")
    ledger.grant(alice, 5, by=bob, reason="bonus")
    client.force_login(carol)
    url = reverse("admin:accounts_user_delete", args=[bob.pk])
    assert "2 ledger entries this account wrote for other members" in client.get(url).text
    client.post(url, {"post": "yes"})
    assert type(bob).objects.filter(pk=bob.pk).exists()


def test_a_member_without_entries_can_be_deleted(client, bob, carol):
    client.force_login(carol)
    response = client.post(reverse("admin:accounts_user_delete", args=[bob.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not type(bob).objects.filter(pk=bob.pk).exists()


# --- The ledger ---------------------------------------------------------------------------------


def test_ledger_entries_cannot_be_added_changed_or_deleted(client, alice, carol):
    entry = ledger.grant(alice, 10, by=carol, reason="welcome")
    client.force_login(carol)
    changelist = client.get(reverse("admin:accounts_ledgerentry_changelist")).content.decode()
    assert reverse("admin:accounts_ledgerentry_add") not in changelist
    assert "delete_selected" not in changelist
    assert client.get(reverse("admin:accounts_ledgerentry_add")).status_code == 403
    change = reverse("admin:accounts_ledgerentry_change", args=[entry.pk])
    page = client.get(change).content.decode()
    assert '<div class="readonly">welcome</div>' in page and 'name="amount"' not in page
    assert client.post(change, {"amount": "999", "reason": "x"}).status_code == 403
    delete = reverse("admin:accounts_ledgerentry_delete", args=[entry.pk])
    assert client.get(delete).status_code == 403
    assert client.post(delete, {"post": "yes"}).status_code == 403
    entry.refresh_from_db()
    assert (entry.amount, entry.reason) == (10, "welcome")


def test_ledger_entries_are_found_by_task_code_and_filtered_by_kind(client, alice, carol):
    ledger.grant(alice, 100, by=carol, reason="welcome")
    task = paid_task(alice, own_key(alice))
    client.force_login(carol)
    url = reverse("admin:accounts_ledgerentry_changelist")
    found = client.get(url, {"q": str(task.code)}).context["cl"].result_list
    assert [e.kind for e in found] == ["debit"]
    grants = client.get(url, {"kind__exact": "grant"}).context["cl"].result_list
    assert [e.amount for e in grants] == [100]


# --- Provider keys ------------------------------------------------------------------------------


def test_a_team_key_added_in_the_admin_never_shows_its_secret(client, alice, bob, carol):
    client.force_login(carol)
    response = client.post(
        reverse("admin:accounts_providerkey_add"),
        {
            "provider": "apimart",
            "label": "Team",
            "owner": "",
            "allowed_users": [alice.pk, bob.pk],
            "base_url": "",
            "secret": CANARY,
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    key = ProviderKey.objects.get(label="Team")
    assert key.is_team_key and set(key.allowed_users.all()) == {alice, bob}
    assert key.credentials().api_key == CANARY
    assert ProviderKey.objects.usable_by(alice, "apimart").filter(pk=key.pk).exists()

    # An edit that leaves the secret empty keeps it.
    change = reverse("admin:accounts_providerkey_change", args=[key.pk])
    data = read_form(client.get(change), "providerkey_form")
    data["label"] = ["Team shared"]
    assert client.post(change, data).status_code == 302
    key.refresh_from_db()
    assert key.credentials().api_key == CANARY

    pages = [
        reverse("admin:accounts_providerkey_changelist"),
        change,
        reverse("admin:accounts_providerkey_history", args=[key.pk]),
        reverse("admin:accounts_providerkey_delete", args=[key.pk]),
        reverse("admin:index"),
    ]
    for url in pages:
        page = client.get(url).content.decode()
        assert "SECRET" not in page and key.secret_ciphertext not in page, url
    for url in pages[:3]:
        assert "5511" in client.get(url).content.decode(), url
    logged = " ".join(e.object_repr + e.change_message for e in LogEntry.objects.all())
    assert "SECRET" not in logged


def test_error_reports_never_show_a_posted_secret(client, carol):
    client.force_login(carol)
    response = client.post(
        reverse("admin:accounts_providerkey_add"),
        {"provider": "apimart", "label": "", "secret": CANARY},
    )
    shown = SafeExceptionReporterFilter().get_post_parameters(response.wsgi_request)
    assert shown["secret"] != CANARY and "SECRET" not in shown["secret"]


def test_a_new_secret_replaces_the_old_one_and_clears_a_refusal(client, alice, carol):
    key = own_key(alice)
    key.mark_invalid("401 from the gateway")
    client.force_login(carol)
    change = reverse("admin:accounts_providerkey_change", args=[key.pk])
    data = read_form(client.get(change), "providerkey_form")
    data["secret"] = [CANARY]
    assert client.post(change, data).status_code == 302
    key.refresh_from_db()
    assert key.credentials().api_key == CANARY and key.status == "active"
    assert "SECRET" not in client.get(change).content.decode()


@pytest.mark.parametrize("secret", ["", "   "])
def test_adding_a_key_without_a_secret_is_refused_beside_the_field(client, carol, secret):
    client.force_login(carol)
    response = client.post(
        reverse("admin:accounts_providerkey_add"),
        {"provider": "apimart", "label": "Team", "owner": "", "base_url": "", "secret": secret},
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["secret"] == [
        "Paste the API key; it cannot be empty."
    ]
    assert not ProviderKey.objects.exists()


def test_a_whitespace_secret_on_edit_is_refused_and_the_old_one_kept(client, alice, carol):
    key = own_key(alice)
    client.force_login(carol)
    change = reverse("admin:accounts_providerkey_change", args=[key.pk])
    data = read_form(client.get(change), "providerkey_form")
    data["secret"] = ["  "]
    response = client.post(change, data)
    assert response.context["adminform"].form.errors["secret"] == [
        "Paste the API key; it cannot be empty."
    ]
    key.refresh_from_db()
    assert key.credentials().api_key == "sk-test-abcd1234"


def test_a_form_shown_again_after_a_mistake_does_not_echo_the_secret(client, carol):
    client.force_login(carol)
    response = client.post(
        reverse("admin:accounts_providerkey_add"),
        {"provider": "apimart", "label": "", "owner": "", "base_url": "", "secret": CANARY},
    )
    assert response.status_code == 200
    assert "SECRET" not in response.content.decode()
    assert not ProviderKey.objects.exists()


def test_a_members_own_key_cannot_also_be_shared(client, alice, bob, carol):
    client.force_login(carol)
    response = client.post(
        reverse("admin:accounts_providerkey_add"),
        {
            "provider": "apimart",
            "label": "Hers",
            "owner": alice.pk,
            "allowed_users": [bob.pk],
            "secret": "sk-test-abcd1234",
        },
    )
    assert "Only team keys are shared." in response.content.decode()
    assert not ProviderKey.objects.exists()


def test_the_key_list_shows_team_or_owner_and_the_masked_secret(client, alice, carol):
    own_key(alice, label="Hers", secret="sk-test-aaaa9876")
    team = ProviderKey(provider="apimart", label="Shared")
    team.set_secret("sk-test-bbbb4321")
    team.save()
    client.force_login(carol)
    page = client.get(reverse("admin:accounts_providerkey_changelist")).content.decode()
    assert '<td class="field-owner_or_team">Alice A.</td>' in page
    assert '<td class="field-owner_or_team">Team</td>' in page
    assert "…9876" in page and "…4321" in page
    assert "sk-test" not in page


# --- Prices -------------------------------------------------------------------------------------


def test_prices_are_edited_in_the_list_and_must_be_at_least_one_credit(client, carol):
    price = ModelPrice.objects.get(provider="apimart", model="Omni-Flash-Ext")
    client.force_login(carol)
    url = reverse("admin:generations_modelprice_changelist") + "?q=Omni-Flash-Ext"
    data = {
        "form-TOTAL_FORMS": "1",
        "form-INITIAL_FORMS": "1",
        "form-MIN_NUM_FORMS": "0",
        "form-MAX_NUM_FORMS": "1000",
        "form-0-id": str(price.pk),
        "_save": "Save",
    }
    refused = client.post(url, {**data, "form-0-credits_per_unit": "0"})
    assert "A price is at least 1 credit." in refused.content.decode()
    price.refresh_from_db()
    assert price.credits_per_unit == 8
    assert client.post(url, {**data, "form-0-credits_per_unit": "9"}).status_code == 302
    price.refresh_from_db()
    assert price.credits_per_unit == 9


@pytest.mark.parametrize(
    ("multipliers", "message"),
    [
        ("[1, 2]", "Enter an object that maps each resolution to a multiplier"),
        ('{"720p": -1}', "The multiplier for '720p' must be above 0"),
        ('{"720p": 0}', "The multiplier for '720p' must be above 0"),
        ('{"720p": "two"}', "The multiplier for '720p' must be a number"),
        ('{"720p": true}', "The multiplier for '720p' must be a number"),
        ('{"720p": 1.2345}', "has more than three decimals"),
        ('{"720p": 5000}', "at most 999.999"),
        ('{"8k": 2}', "has no resolution '8k'; it offers 720p, 1080p, 4k"),
        ("{nope", "Enter a valid JSON."),
    ],
)
def test_a_bad_multiplier_is_refused_with_a_clear_message(client, carol, multipliers, message):
    price = ModelPrice.objects.get(provider="apimart", model="Omni-Flash-Ext")
    client.force_login(carol)
    url = reverse("admin:generations_modelprice_change", args=[price.pk])
    response = client.post(
        url,
        {
            "provider": "apimart",
            "model": "Omni-Flash-Ext",
            "unit": "second",
            "credits_per_unit": "8",
            "resolution_multipliers": multipliers,
        },
    )
    assert response.status_code == 200
    assert message in unescape(response.content.decode())
    price.refresh_from_db()
    assert price.resolution_multipliers == {"720p": 1, "1080p": 1.5, "4k": 3}


def test_a_model_without_durations_cannot_be_priced_per_second(client, carol):
    price = ModelPrice.objects.get(provider="omnivideo", model="seedance-2")
    client.force_login(carol)
    response = client.post(
        reverse("admin:generations_modelprice_change", args=[price.pk]),
        {
            "provider": "omnivideo",
            "model": "seedance-2",
            "unit": "second",
            "credits_per_unit": "5",
            "resolution_multipliers": "{}",
        },
    )
    assert "takes no duration, so it cannot be priced per second" in response.text
    price.refresh_from_db()
    assert (price.unit, price.credits_per_unit) == ("task", 60)


def test_good_multipliers_are_saved(client, carol):
    price = ModelPrice.objects.get(provider="apimart", model="Omni-Flash-Ext")
    client.force_login(carol)
    response = client.post(
        reverse("admin:generations_modelprice_change", args=[price.pk]),
        {
            "provider": "apimart",
            "model": "Omni-Flash-Ext",
            "unit": "second",
            "credits_per_unit": "8",
            "resolution_multipliers": '{"720p": 1, "1080p": 2.5}',
        },
    )
    assert response.status_code == 302
    price.refresh_from_db()
    assert price.resolution_multipliers == {"720p": 1, "1080p": 2.5}


def test_a_price_for_a_model_the_catalog_lacks_is_refused(client, carol):
    client.force_login(carol)
    response = client.post(
        reverse("admin:generations_modelprice_add"),
        {"provider": "apimart", "model": "Nope", "unit": "task", "credits_per_unit": "3"},
    )
    page = unescape(response.content.decode())
    assert "That gateway has no model 'Nope'; it has Omni-Flash-Ext." in page
    assert not ModelPrice.objects.filter(model="Nope").exists()


# --- Tasks and the cost report ------------------------------------------------------------------


def test_admins_see_every_members_tasks_read_only(client, alice, bob, carol):
    for member in (alice, bob):
        ledger.grant(member, 100, by=carol, reason="welcome")
    tasks = [paid_task(alice, own_key(alice)), paid_task(bob, own_key(bob))]
    client.force_login(carol)
    listed = client.get(reverse("admin:generations_task_changelist")).context["cl"].result_list
    assert set(listed) == set(tasks)
    change = reverse("admin:generations_task_change", args=[tasks[0].pk])
    page = client.get(change).content.decode()
    assert '<div class="readonly">a cat</div>' in page and 'name="prompt"' not in page
    assert "submitted" in page  # the event history
    assert client.post(change, {"prompt": "a dog"}).status_code == 403
    assert client.get(reverse("admin:generations_task_add")).status_code == 403


def test_fail_and_refund_refunds_once_even_when_run_twice(client, alice, carol):
    ledger.grant(alice, 100, by=carol, reason="welcome")
    task = paid_task(alice, own_key(alice))
    client.force_login(carol)
    url = reverse("admin:generations_task_changelist")
    data = {"action": "fail_and_refund", "_selected_action": [task.pk], "index": "0"}
    first = client.post(url, data)
    assert notes(client, first) == ["Failed and refunded 1 task."]
    second = client.post(url, data)
    assert notes(client, second) == [
        "1 of the selected tasks had already ended; nothing was refunded for it."
    ]
    task.refresh_from_db()
    assert task.state == Task.State.FAILED
    refund = LedgerEntry.objects.get(kind="refund")
    assert (refund.task, refund.amount) == (task, 32)
    assert task.events.last().actor == "admin:carol"
    alice.refresh_from_db()
    assert alice.credit_balance == 100
    assert ledger.audit() == []


def test_the_cost_report_adds_up_tasks_credits_and_gateway_cost(client, alice, bob, carol):
    ledger.grant(alice, 200, by=carol, reason="welcome")
    ledger.grant(bob, 100, by=carol, reason="welcome")
    hers, his = own_key(alice, label="Hers"), own_key(bob, label="His")
    first, second, third = paid_task(alice, hers), paid_task(alice, hers), paid_task(bob, his)
    Task.objects.filter(pk=first.pk).update(gateway_cost=Decimal("0.5"))
    Task.objects.filter(pk=second.pk).update(gateway_cost=Decimal("0.25"))
    client.force_login(carol)
    client.post(
        reverse("admin:generations_task_changelist"),
        {"action": "fail_and_refund", "_selected_action": [second.pk], "index": "0"},
    )

    response = client.get(reverse("admin:generations_task_cost_report"))
    rows = {row.key_label: row for row in response.context["rows"]}
    her_row, his_row = rows[first.key_label], rows[third.key_label]
    assert (her_row.provider, her_row.tasks, her_row.debited, her_row.refunded) == (
        "apimart",
        2,
        64,
        32,
    )
    assert (her_row.net, her_row.gateway_cost, her_row.with_cost) == (32, Decimal("0.75"), 2)
    assert (his_row.tasks, his_row.debited, his_row.refunded, his_row.gateway_cost) == (
        1,
        32,
        0,
        None,
    )
    totals = response.context["totals"]
    assert (totals.tasks, totals.debited, totals.refunded, totals.gateway_cost) == (
        3,
        96,
        32,
        Decimal("0.75"),
    )
    page = response.content.decode()
    assert "not reported" in page and "Hers (APIMart …1234)" in page
    assert "<td>0.7500</td>" in page and "<td>APIMart</td>" in page


def test_the_task_and_price_lists_link_to_the_cost_report(client, carol):
    client.force_login(carol)
    report = reverse("admin:generations_task_cost_report")
    for name in ("admin:generations_task_changelist", "admin:generations_modelprice_changelist"):
        assert f'href="{report}"' in client.get(reverse(name)).content.decode()


def test_the_cost_report_shows_what_refunded_tasks_cost_at_the_gateway(client, alice, carol):
    ledger.grant(alice, 100, by=carol, reason="welcome")
    key = own_key(alice)
    delivered, lost = paid_task(alice, key), paid_task(alice, key)
    Task.objects.filter(pk=delivered.pk).update(gateway_cost=Decimal("0.4"))
    Task.objects.filter(pk=lost.pk).update(gateway_cost=Decimal("0.16"))
    fail_task(lost, actor="worker", reason="The result could not be saved: expired.")
    client.force_login(carol)
    response = client.get(reverse("admin:generations_task_cost_report"))
    assert response.context["totals"].lost_cost == Decimal("0.16")
    assert "<td>0.1600</td>" in response.content.decode()


def test_the_review_list_shows_only_tasks_needing_review_with_their_actions(client, alice, carol):
    ledger.grant(alice, 100, by=carol, reason="welcome")
    key = own_key(alice)
    waiting, running = paid_task(alice, key), paid_task(alice, key)
    Task.objects.filter(pk=waiting.pk).update(
        state=Task.State.NEEDS_REVIEW, message="APIMart did not answer in time."
    )
    client.force_login(carol)
    url = reverse("admin:generations_taskinreview_changelist")
    response = client.get(url)
    assert list(response.context["cl"].result_list) == [waiting]
    page = response.content.decode()
    assert "APIMart did not answer in time." in page
    for action in ("recheck", "fail_and_refund", "mark_as_delivered"):
        assert f'value="{action}"' in page
    assert running.state == Task.State.QUEUED


def test_re_check_now_makes_the_task_due_at_once(client, alice, carol):
    ledger.grant(alice, 100, by=carol, reason="welcome")
    task = paid_task(alice, own_key(alice))
    later = timezone.now() + timedelta(hours=1)
    Task.objects.filter(pk=task.pk).update(state=Task.State.NEEDS_REVIEW, next_check_at=later)
    client.force_login(carol)
    data = {"action": "recheck", "_selected_action": [task.pk], "index": "0"}
    client.post(reverse("admin:generations_taskinreview_changelist"), data)
    task.refresh_from_db()
    assert task.next_check_at <= timezone.now()


def test_mark_as_delivered_ends_a_review_without_a_refund(client, alice, carol):
    ledger.grant(alice, 100, by=carol, reason="welcome")
    key = own_key(alice)
    task, queued = paid_task(alice, key), paid_task(alice, key)
    Task.objects.filter(pk=task.pk).update(state=Task.State.NEEDS_REVIEW)
    client.force_login(carol)
    data = {"action": "mark_as_delivered", "_selected_action": [task.pk, queued.pk], "index": "0"}
    response = client.post(reverse("admin:generations_task_changelist"), data)
    assert notes(client, response) == [
        "Marked 1 task as delivered.",
        "1 of the selected tasks were not waiting for review; they were left alone.",
    ]
    task.refresh_from_db()
    queued.refresh_from_db()
    assert (task.state, queued.state) == (Task.State.SUCCEEDED, Task.State.QUEUED)
    assert task.events.last().actor == "admin:carol"
    assert not LedgerEntry.objects.filter(kind="refund").exists()
