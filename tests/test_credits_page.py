"""The member's Credits page: balance, quota usage and their own ledger history."""

import re

import pytest
from django.urls import reverse

from accounts import ledger
from accounts.models import ProviderKey, Quota, TeamQuota
from generations.providers import GenerationRequest
from generations.services import submit_task

pytestmark = pytest.mark.django_db

CREDITS = "/accounts/credits/"
CAT = GenerationRequest("apimart", "Omni-Flash-Ext", "a cat", duration=4, resolution="720p")


def html(response) -> str:
    return response.content.decode()


def history_rows(page: str) -> list[str]:
    body = page[page.index('id="history-heading"') :]
    return re.findall(r"<tr>\s*<th scope=\"row\"[^>]*>.*?</tr>", body, flags=re.S)


def usage_row(page: str, label: str) -> list[str]:
    row = re.search(r'<th scope="row">' + label + r"</th>(.*?)</tr>", page, flags=re.S)[1]
    return [
        re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row)
    ]


@pytest.fixture
def as_alice(client, alice):
    client.force_login(alice)
    return client


@pytest.fixture
def key(alice):
    key = ProviderKey(provider="apimart", label="Mine", owner=alice)
    key.set_secret("sk-test-abcd1234")
    key.save()
    return key


def test_anonymous_visitors_are_sent_to_log_in(client):
    response = client.get(CREDITS)
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={CREDITS}"


def test_the_url_has_its_name(as_alice):
    assert reverse("accounts-credits") == CREDITS


def test_the_page_shows_balance_spend_and_limits(as_alice, alice, carol, key):
    ledger.grant(alice, 100, by=carol, reason="welcome")
    Quota.objects.create(
        user=alice,
        max_active_tasks=3,
        max_credits_per_day=50,
        max_credits_per_month=500,
        allowed_models=["apimart/Omni-Flash-Ext", "omniakey/*"],
    )
    submit_task(alice, CAT, key=key)
    page = html(as_alice.get(CREDITS))
    assert '<span class="balance-number">68</span>' in page
    assert usage_row(page, "Spent today") == ["32 credits", "50 credits", "18 credits"]
    assert usage_row(page, "Spent this month") == ["32 credits", "500 credits", "468 credits"]
    assert usage_row(page, "Active tasks") == ["1 task", "3 tasks", "2 tasks"]
    assert "APIMart Omni Flash Ext" in page
    assert "Every OmniaKey model" in page


def test_limits_left_unset_read_no_limit(as_alice, alice, carol):
    ledger.grant(alice, 10, by=carol, reason="welcome")
    page = html(as_alice.get(CREDITS))
    assert usage_row(page, "Spent today") == ["0 credits", "no limit", "no limit"]
    assert usage_row(page, "Active tasks") == ["0 tasks", "no limit", "no limit"]
    assert "Every model, no restriction." in page


def test_team_defaults_apply_where_the_member_has_no_own_limit(as_alice, alice):
    TeamQuota.objects.create(max_credits_per_day=20, max_active_tasks=1)
    Quota.objects.create(user=alice, max_credits_per_day=40)
    page = html(as_alice.get(CREDITS))
    assert usage_row(page, "Spent today") == ["0 credits", "40 credits", "40 credits"]
    assert usage_row(page, "Active tasks") == ["0 tasks", "1 task", "1 task"]


def test_a_reached_limit_says_none_left(as_alice, alice, carol, key):
    ledger.grant(alice, 100, by=carol, reason="welcome")
    Quota.objects.create(user=alice, max_active_tasks=1)
    submit_task(alice, CAT, key=key)
    assert usage_row(html(as_alice.get(CREDITS)), "Active tasks") == [
        "1 task",
        "1 task",
        "none left",
    ]


def test_history_shows_kind_signed_amount_balance_reason_and_the_tasks_model(
    as_alice, alice, carol, key
):
    ledger.grant(alice, 100, by=carol, reason="welcome")
    submit_task(alice, CAT, key=key)
    ledger.deduct(alice, 8, by=carol, reason="correction")
    rows = history_rows(html(as_alice.get(CREDITS)))
    assert len(rows) == 3
    newest, debit, grant = rows
    assert "Adjustment by an admin" in newest and "-8" in newest and ">60<" in newest
    assert "correction" in newest
    assert "Charged for a task" in debit and "-32" in debit and ">68<" in debit
    assert "Omni Flash Ext" in debit
    assert "Credits granted" in grant and "+100" in grant and "welcome" in grant
    assert "Omni Flash Ext" not in grant


def test_another_members_entries_never_appear(as_alice, alice, bob, carol):
    ledger.grant(alice, 5, by=carol, reason="for alice")
    ledger.grant(bob, 777, by=carol, reason="for bob only")
    page = html(as_alice.get(CREDITS))
    assert "for alice" in page
    assert "for bob only" not in page and "777" not in page
    assert len(history_rows(page)) == 1


def test_a_member_with_no_entries_sees_an_empty_history(as_alice):
    page = html(as_alice.get(CREDITS))
    assert '<span class="balance-number">0</span>' in page
    assert "No credits have moved yet." in page


def test_history_pages_by_25_newest_first(as_alice, alice, carol):
    for n in range(1, 31):
        ledger.grant(alice, 1, by=carol, reason=f"grant number {n}.")
    first = html(as_alice.get(CREDITS))
    rows = history_rows(first)
    assert len(rows) == 25
    assert "grant number 30." in rows[0] and "grant number 6." in rows[-1]
    assert "Page 1 of 2" in first
    assert 'href="?page=2"' in first and "Previous page" not in first

    second = html(as_alice.get(CREDITS, {"page": 2}))
    rows = history_rows(second)
    assert len(rows) == 5
    assert "grant number 5." in rows[0] and "grant number 1." in rows[-1]
    assert 'href="?page=1"' in second and "Next page" not in second


@pytest.mark.parametrize("value, expected_page", [("999", 2), ("abc", 1), ("-1", 2), ("", 1)])
def test_a_bad_page_number_shows_the_first_or_last_page(
    as_alice, alice, carol, value, expected_page
):
    for n in range(30):
        ledger.grant(alice, 1, by=carol, reason=f"grant {n}")
    response = as_alice.get(CREDITS, {"page": value})
    assert response.status_code == 200
    assert f"Page {expected_page} of 2" in html(response)


def test_the_nav_marks_credits_as_the_current_page(as_alice):
    page = html(as_alice.get(CREDITS))
    assert f'<a href="{CREDITS}" aria-current="page">Credits</a>' in page
    assert f'<a href="{reverse("accounts-keys")}">Keys</a>' in page
