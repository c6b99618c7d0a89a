"""Who may do what with share links: every share URL (read from the URL configuration, so a new
one cannot be added without its row here) × every kind of visitor.

The visitors: the owner (alice, who owns the private board and result and made the links), a
teammate (bob, facing alice's *team* board and result), another member (bob facing alice's
*private* ones), a signed-out visitor with no link, and signed-out holders of a valid, a revoked
and an expired link. Signed-in visitors hold no link: they guess a token, which must not work.
"""

from datetime import timedelta
from itertools import product

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

from generations.models.shares import ShareLink
from tests.test_shares import board_of, link_to, stored

pytestmark = pytest.mark.django_db

PREFIX = "generations-share"
ROLES = (
    "owner",
    "teammate",
    "other member",
    "anonymous",
    "holder of a valid link",
    "holder of a revoked link",
    "holder of an expired link",
)
HOLDERS = {"holder of a valid link": "valid", "holder of a revoked link": "revoked"}
HOLDERS["holder of an expired link"] = "expired"

# What each visitor gets: a status, "login" (sent to sign in) or "made" (a new link, then the
# list of links). Member pages send every signed-out visitor to sign in, link or not; the
# shared pages answer the holder of a valid link only.
MEMBER_ONLY = {"anonymous": "login", **dict.fromkeys(HOLDERS, "login")}
SHARED = {
    "owner": 404,
    "teammate": 404,
    "other member": 404,
    "anonymous": 404,
    "holder of a valid link": 200,
    "holder of a revoked link": 404,
    "holder of an expired link": 404,
}
EXPECTED = {
    ("generations-share-board", "GET"): {
        "owner": 200,
        "teammate": 200,
        "other member": 404,
        **MEMBER_ONLY,
    },
    ("generations-share-board", "POST"): {
        "owner": "made",
        "teammate": "made",
        "other member": 404,
        **MEMBER_ONLY,
    },
    ("generations-share-task", "GET"): {
        "owner": 200,
        "teammate": 200,
        "other member": 404,
        **MEMBER_ONLY,
    },
    ("generations-share-task", "POST"): {
        "owner": "made",
        "teammate": "made",
        "other member": 404,
        **MEMBER_ONLY,
    },
    # A member's own list: everyone signed in has one.
    ("generations-shares", "GET"): {
        "owner": 200,
        "teammate": 200,
        "other member": 200,
        **MEMBER_ONLY,
    },
    ("generations-share-revoke", "POST"): {
        "owner": 302,
        "teammate": 404,
        "other member": 404,
        **MEMBER_ONLY,
    },
    ("generations-shared", "GET"): SHARED,
    ("generations-shared-file", "GET"): SHARED,
    ("generations-shared-poster", "GET"): SHARED,
}


def share_url_names() -> set[str]:
    """Every URL name in the project's configuration that starts with PREFIX."""

    def walk(patterns):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns)
            elif isinstance(pattern, URLPattern) and (pattern.name or "").startswith(PREFIX):
                yield pattern.name

    return set(walk(get_resolver().url_patterns))


def test_every_share_url_has_a_row_in_the_matrix():
    names = share_url_names()
    assert len(names) >= 7
    assert names == {name for name, _method in EXPECTED}


CASES = [(name, method, role) for (name, method), role in product(EXPECTED, ROLES)]


@pytest.fixture
def world(alice, bob):
    """Alice's things, private and team, and her links to her private board."""
    private_task = stored(alice, "alice private", visibility="private")
    team_task = stored(alice, "alice team")
    private_board = board_of(alice, private_task, team_task, visibility="private")
    team_board = board_of(alice, team_task, visibility="team")
    links = {
        state: link_to(alice, board=private_board) for state in ("valid", "revoked", "expired")
    }
    links["revoked"].revoke()
    ShareLink.objects.filter(pk=links["expired"].pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    return {
        "alice": alice,
        "bob": bob,
        "private": {"board": private_board, "task": private_task},
        "team": {"board": team_board, "task": team_task},
        "links": links,
    }


def visit(world, role: str):
    """The client of `role`, the things it faces, and the token it holds."""
    client = Client()
    if role == "owner":
        client.force_login(world["alice"])
        things = world["private"]
    elif role == "teammate":
        client.force_login(world["bob"])
        things = world["team"]
    elif role == "other member":
        client.force_login(world["bob"])
        things = world["private"]
    else:
        things = world["private"]
    if role in HOLDERS:
        token = world["links"][HOLDERS[role]].token
    else:
        token = ShareLink._meta.get_field("token").default()  # a guess of the right shape
    return client, things, token


def url_for(name: str, world, things, token: str) -> str:
    args = {
        "generations-share-board": [things["board"].code],
        "generations-share-task": [things["task"].code],
        "generations-shares": [],
        "generations-share-revoke": [world["links"]["valid"].pk],
        "generations-shared": [token],
        # The private task is on the private board the links share.
        "generations-shared-file": [token, world["private"]["task"].code, 0],
        "generations-shared-poster": [token, world["private"]["task"].code, 0],
    }[name]
    return reverse(name, args=args)


@pytest.mark.parametrize(("name", "method", "role"), CASES)
def test_share_permission(world, name, method, role):
    client, things, token = visit(world, role)
    url = url_for(name, world, things, token)
    links_before = ShareLink.objects.count()

    response = client.post(url, {"days": "7"}) if method == "POST" else client.get(url)

    expected = EXPECTED[(name, method)][role]
    made = ShareLink.objects.count() - links_before
    if expected == "login":
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")
    elif expected == "made":
        assert response.status_code == 302
        assert response["Location"].startswith("/shares/?new=")
        assert made == 1
    else:
        assert response.status_code == expected
    if expected != "made":
        assert made == 0
    # Only the owner's revoke changes the valid link.
    revoked = ShareLink.objects.get(pk=world["links"]["valid"].pk).revoked_at is not None
    assert revoked == (name == "generations-share-revoke" and role == "owner")
