"""Personal access tokens on the Profile page and in the admin: made with a name, a scope and
an expiry, shown once, listed with their last use, revoked by their member or an admin."""

import re

import pytest
from django.utils import timezone

from accounts.models import MAX_TOKENS_PER_MEMBER, ApiToken, hash_token

pytestmark = pytest.mark.django_db


def make(client, follow=False, **fields):
    data = {"name": "storyboard", "scope": "write", "days": 90} | fields
    return client.post("/accounts/tokens/add/", data, follow=follow)


def test_a_new_token_is_shown_once_and_only_its_hash_is_kept(client, alice):
    client.force_login(alice)
    response = make(client)
    assert response.status_code == 302 and response["Location"] == "/accounts/profile/#new-token"
    response = client.get(response["Location"])
    page = response.content.decode()
    secret = re.search(r'data-testid="new-token-secret">(omw_[^<]+)<', page).group(1)
    assert "shown only this once" in page and response["Cache-Control"] == "no-store"
    token = ApiToken.objects.get(user=alice)
    assert token.token_hash == hash_token(secret) and token.scope == "write"
    assert (token.expires_at - token.created_at).days == 90
    later = client.get("/accounts/profile/").content.decode()
    assert secret not in later and token.hint in later and "storyboard" in later
    assert "Read and generate" in later and "never" in later
    assert client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 200


def test_the_form_refuses_bad_values_with_messages(client, alice):
    client.force_login(alice)
    for fields, words in [
        ({"name": "  "}, "This field is required."),
        ({"days": 0}, "greater than or equal to 1"),
        ({"days": 367}, "less than or equal to 366"),
        ({"scope": "admin"}, "Select a valid choice"),
    ]:
        response = make(client, **fields)
        assert response.status_code == 200 and words in response.content.decode()
    assert not ApiToken.objects.exists()


def test_a_member_may_hold_a_bounded_number_of_live_tokens(client, alice):
    for n in range(MAX_TOKENS_PER_MEMBER):
        ApiToken.issue(alice, name=f"t{n}", scope="read", days=1)
    client.force_login(alice)
    assert "revoke one first" in make(client).content.decode()
    assert ApiToken.objects.count() == MAX_TOKENS_PER_MEMBER
    ApiToken.objects.first().revoke()
    assert "shown only this once" in make(client, follow=True).content.decode()


def test_a_member_revokes_their_own_token_and_no_one_elses(client, alice, bob):
    mine, secret = ApiToken.issue(alice, name="mine", scope="read", days=1)
    theirs, _ = ApiToken.issue(bob, name="theirs", scope="read", days=1)
    client.force_login(alice)
    assert client.post(f"/accounts/tokens/{theirs.pk}/revoke/").status_code == 404
    assert client.get(f"/accounts/tokens/{mine.pk}/revoke/").status_code == 405
    response = client.post(f"/accounts/tokens/{mine.pk}/revoke/", follow=True)
    assert "was revoked" in response.content.decode()
    mine.refresh_from_db()
    theirs.refresh_from_db()
    assert mine.status == "revoked" and theirs.status == "active"
    assert client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 401
    assert "Revoked" in client.get("/accounts/profile/").content.decode()


def test_an_admin_lists_and_revokes_anyones_tokens(client, alice, bob, carol):
    token, secret = ApiToken.issue(alice, name="leaked", scope="write", days=30)
    ApiToken.issue(bob, name="fine", scope="read", days=30)
    client.force_login(carol)
    listing = client.get("/admin/accounts/apitoken/").content.decode()
    assert "leaked" in listing and "fine" in listing and secret not in listing
    assert client.get("/admin/accounts/apitoken/add/").status_code == 403
    detail = client.get(f"/admin/accounts/apitoken/{token.pk}/change/").content.decode()
    assert token.hint in detail and secret not in detail and token.token_hash not in detail
    client.post(
        "/admin/accounts/apitoken/",
        {"action": "revoke", "_selected_action": [token.pk]},
    )
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert ApiToken.objects.get(name="fine").revoked_at is None
    active = client.get("/admin/accounts/apitoken/", {"status": "active"}).content.decode()
    assert "fine" in active and "leaked" not in active


def test_members_cannot_reach_the_token_admin(client, alice):
    client.force_login(alice)
    response = client.get("/admin/accounts/apitoken/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_expired_tokens_are_marked_on_the_profile(client, alice):
    token, _ = ApiToken.issue(alice, name="old", scope="read", days=1)
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now())
    client.force_login(alice)
    page = client.get("/accounts/profile/").content.decode()
    assert "Expired" in page and f"/accounts/tokens/{token.pk}/revoke/" not in page
