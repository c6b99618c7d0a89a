"""Provider secrets at rest (RELIABILITY 1), failing closed (2) and key rotation (3)."""

from io import StringIO

import pytest
import respx
from cryptography.fernet import Fernet, InvalidToken
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from accounts import crypto
from accounts.models import KeyUnusable, ProviderKey
from generations import providers
from generations.providers import GenerationRequest

pytestmark = pytest.mark.django_db

CANARY = "sk-canary-7f3a9c2e5b1d4480"
KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()
KEY_C = Fernet.generate_key().decode()

SUBMIT_URL = "https://api.apimart.ai/v1/videos/generations"
SUBMIT_ANSWER = {"code": 200, "data": [{"status": "submitted", "task_id": "task_01SECRETS"}]}


def save_key(owner, secret: str, *, label: str = "Mine", provider: str = "apimart"):
    key = ProviderKey(provider=provider, label=label, owner=owner)
    key.set_secret(secret)
    key.save()
    return key


def stored_token(key: ProviderKey) -> str:
    return ProviderKey.objects.values_list("secret_ciphertext", flat=True).get(pk=key.pk)


def opens_with(token: str, fernet_key: str) -> bool:
    try:
        Fernet(fernet_key).decrypt(token.removeprefix(crypto.PREFIX).encode())
    except InvalidToken:
        return False
    return True


def rotate(*args: str) -> str:
    out = StringIO()
    call_command("rotate_encryption_keys", *args, stdout=out, stderr=out)
    return out.getvalue()


def rotate_expecting_failure(*args: str) -> tuple[str, CommandError]:
    out = StringIO()
    with pytest.raises(CommandError) as failure:
        call_command("rotate_encryption_keys", *args, stdout=out, stderr=out)
    return out.getvalue(), failure.value


def as_text(value) -> str:
    if isinstance(value, memoryview | bytes):
        return bytes(value).decode("latin-1")
    return str(value)


# --- 1. Encrypted at rest ---------------------------------------------------------------------


def test_the_canary_is_not_in_the_stored_column_and_the_app_still_decrypts_it(alice):
    key = save_key(alice, CANARY)
    table = connection.ops.quote_name(ProviderKey._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT secret_ciphertext FROM {table} WHERE id = %s", [key.pk])
        (column,) = cursor.fetchone()
        cursor.execute(f"SELECT * FROM {table} WHERE id = %s", [key.pk])
        row = cursor.fetchone()

    assert column.startswith("v1:")
    assert CANARY not in column and CANARY[:12] not in column
    for value in row:
        assert CANARY not in as_text(value)
        assert CANARY[:12] not in as_text(value)
    assert ProviderKey.objects.get(pk=key.pk).credentials().api_key == CANARY


def test_the_canary_appears_in_no_table_of_the_database(alice, bob):
    team_key = save_key(None, CANARY, label="Team")
    team_key.allowed_users.add(bob)
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(include_views=False):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            for row in cursor.fetchall():
                text = " ".join(as_text(value) for value in row)
                assert CANARY[:12] not in text, f"the canary is stored in plain text in {table}"


def test_the_secret_does_not_depend_on_secret_key(settings, alice):
    key = save_key(alice, CANARY)

    settings.SECRET_KEY = "an-entirely-different-secret-key-for-this-test-only-0123456789"
    assert ProviderKey.objects.get(pk=key.pk).credentials().api_key == CANARY

    settings.OMNIWEB_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(KeyUnusable):
        ProviderKey.objects.get(pk=key.pk).credentials()


def test_changing_the_configured_keys_takes_effect_without_clearing_caches(settings):
    settings.OMNIWEB_ENCRYPTION_KEYS = [KEY_A]
    under_a = crypto.encrypt(CANARY)
    assert opens_with(under_a, KEY_A)

    settings.OMNIWEB_ENCRYPTION_KEYS = [KEY_B]
    under_b = crypto.encrypt(CANARY)
    assert opens_with(under_b, KEY_B) and not opens_with(under_b, KEY_A)
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(under_a)

    settings.OMNIWEB_ENCRYPTION_KEYS = [KEY_A]
    assert crypto.decrypt(under_a) == CANARY
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(under_b)


# --- 2. Decryption fails closed ---------------------------------------------------------------


def test_a_wrong_key_fails_closed_marks_the_key_and_sends_nothing(settings, alice):
    settings.OMNIWEB_ENCRYPTION_KEYS = [KEY_A]
    key = save_key(alice, CANARY)
    token = stored_token(key)
    request = GenerationRequest("apimart", "Omni-Flash-Ext", "a cat", duration=4, resolution="720p")

    with respx.mock(assert_all_called=False) as gateway:
        submit = gateway.post(SUBMIT_URL).respond(200, json=SUBMIT_ANSWER)

        # With the right key the same path does reach the gateway, so "not called" below means
        # the secret was withheld, not that the route missed.
        providers.get("apimart").submit(request, key.credentials())
        assert submit.call_count == 1

        settings.OMNIWEB_ENCRYPTION_KEYS = [KEY_B]
        key = ProviderKey.objects.get(pk=key.pk)
        with pytest.raises(KeyUnusable, match="cannot be decrypted; its owner must enter it"):
            providers.get("apimart").submit(request, key.credentials())
        assert submit.call_count == 1

    key.refresh_from_db()
    assert key.needs_reentry
    assert key.status == "needs re-entry"
    assert key.secret_ciphertext == token
    with pytest.raises(KeyUnusable, match="needs re-entry"):
        key.credentials()


def test_a_key_that_cannot_be_decrypted_is_no_longer_offered_for_use(settings, alice):
    settings.OMNIWEB_ENCRYPTION_KEYS = [KEY_A]
    key = save_key(alice, CANARY)
    assert list(ProviderKey.objects.usable_by(alice, "apimart")) == [key]

    settings.OMNIWEB_ENCRYPTION_KEYS = [KEY_B]
    with pytest.raises(KeyUnusable):
        key.credentials()

    assert list(ProviderKey.objects.usable_by(alice, "apimart")) == []
    assert list(ProviderKey.objects.visible_to(alice)) == [key]


def test_entering_the_secret_again_makes_the_key_usable(settings, alice):
    settings.OMNIWEB_ENCRYPTION_KEYS = [KEY_A]
    key = save_key(alice, CANARY)
    settings.OMNIWEB_ENCRYPTION_KEYS = [KEY_B]
    with pytest.raises(KeyUnusable):
        key.credentials()

    key.set_secret(CANARY)
    key.save()

    assert list(ProviderKey.objects.usable_by(alice, "apimart")) == [key]
    assert ProviderKey.objects.get(pk=key.pk).credentials().api_key == CANARY


def test_decrypt_raises_with_a_wrong_key_and_never_returns_ciphertext_or_empty(settings):
    settings.OMNIWEB_ENCRYPTION_KEYS = [KEY_A]
    token = crypto.encrypt(CANARY)
    settings.OMNIWEB_ENCRYPTION_KEYS = [KEY_B]

    with pytest.raises(crypto.DecryptionError, match="configured OMNIWEB_ENCRYPTION_KEYS"):
        crypto.decrypt(token)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "v1:",
        "v1:not-a-fernet-token",
        CANARY,
        "v2:" + Fernet(KEY_A).encrypt(CANARY.encode()).decode(),
        # A genuine token for the configured key, but without the version prefix.
        Fernet(KEY_A).encrypt(CANARY.encode()).decode(),
    ],
    ids=["empty", "prefix-only", "garbage", "plain-text", "unknown-version", "unprefixed"],
)
def test_decrypt_refuses_garbage_and_unprefixed_tokens(settings, token):
    settings.OMNIWEB_ENCRYPTION_KEYS = [KEY_A]
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(token)


# --- 3. Rotation ------------------------------------------------------------------------------


def three_keys(alice, bob):
    secrets = {
        "Alice's": "sk-alice-0000aaaa1111",
        "Bob's": "sk-bob-2222bbbb3333",
        "Team": "sk-team-4444cccc5555",
    }
    keys = [
        save_key(alice, secrets["Alice's"], label="Alice's"),
        save_key(bob, secrets["Bob's"], label="Bob's", provider="omixa"),
        save_key(None, secrets["Team"], label="Team"),
    ]
    return keys, secrets


def test_rotation_moves_every_secret_to_the_newest_key_and_the_old_key_can_go(settings, alice, bob):
    settings.OMNIWEB_ENCRYPTION_KEYS = [KEY_A]
    keys, secrets = three_keys(alice, bob)

    settings.OMNIWEB_ENCRYPTION_KEYS = [KEY_B, KEY_A]
    output = rotate()

    assert "rotated 3, already current 0, unreadable 0" in output
    for key in keys:
        token = stored_token(key)
        assert crypto.is_current(token)
        assert opens_with(token, KEY_B) and not opens_with(token, KEY_A)

    settings.OMNIWEB_ENCRYPTION_KEYS = [KEY_B]
    for key in ProviderKey.objects.all():
        assert key.credentials().api_key == secrets[key.label]
        assert not key.needs_reentry

    assert "rotated 0, already current 3, unreadable 0" in rotate()


def test_a_secret_no_configured_key_opens_is_reported_marked_and_fails_the_command(
    settings, alice, bob
):
    settings.OMNIWEB_ENCRYPTION_KEYS = [KEY_C]
    lost = save_key(bob, CANARY, label="Bob's old key")
    settings.OMNIWEB_ENCRYPTION_KEYS = [KEY_A]
    fine = save_key(alice, "sk-alice-0000aaaa1111", label="Alice's")
    lost_token = stored_token(lost)

    settings.OMNIWEB_ENCRYPTION_KEYS = [KEY_B, KEY_A]
    output, failure = rotate_expecting_failure()

    assert "rotated 1, already current 0, unreadable 1" in output
    assert "Bob's old key" in output and "bob" in output
    report = output + str(failure)
    assert CANARY[:12] not in report and "sk-alice" not in report
    assert lost_token not in report
    assert failure.returncode == 1

    lost.refresh_from_db()
    assert lost.needs_reentry
    assert lost.secret_ciphertext == lost_token
    fine.refresh_from_db()
    assert not fine.needs_reentry
    assert crypto.is_current(fine.secret_ciphertext)


def test_a_dry_run_counts_but_changes_nothing(settings, alice, bob):
    settings.OMNIWEB_ENCRYPTION_KEYS = [KEY_A]
    three_keys(alice, bob)
    settings.OMNIWEB_ENCRYPTION_KEYS = [KEY_C]
    save_key(alice, CANARY, label="Lost")
    settings.OMNIWEB_ENCRYPTION_KEYS = [KEY_B, KEY_A]
    before = list(ProviderKey.objects.order_by("pk").values())

    output, _ = rotate_expecting_failure("--dry-run")

    assert "Dry run, nothing changed: would rotate 3, already current 0, unreadable 1" in output
    assert "Lost" in output
    assert list(ProviderKey.objects.order_by("pk").values()) == before


def test_a_dry_run_with_nothing_unreadable_succeeds(settings, alice, bob):
    settings.OMNIWEB_ENCRYPTION_KEYS = [KEY_A]
    keys, _ = three_keys(alice, bob)
    settings.OMNIWEB_ENCRYPTION_KEYS = [KEY_B, KEY_A]

    assert "would rotate 3, already current 0, unreadable 0" in rotate("--dry-run")
    assert not any(crypto.is_current(stored_token(key)) for key in keys)


def test_rotation_never_overwrites_a_secret_replaced_meanwhile(settings, monkeypatch, alice, bob):
    settings.OMNIWEB_ENCRYPTION_KEYS = [KEY_A]
    keys, secrets = three_keys(alice, bob)
    settings.OMNIWEB_ENCRYPTION_KEYS = [KEY_B, KEY_A]
    real_rotate = crypto.rotate
    replaced = []

    def owner_replaces_the_secret_first(token: str) -> str:
        if not replaced:
            key = ProviderKey.objects.get(secret_ciphertext=token)
            key.set_secret("sk-replaced-9999dddd")
            key.save()
            replaced.append(key)
        return real_rotate(token)

    monkeypatch.setattr(crypto, "rotate", owner_replaces_the_secret_first)
    output = rotate()

    assert "rotated 2, already current 1, unreadable 0" in output
    (key,) = replaced
    assert ProviderKey.objects.get(pk=key.pk).credentials().api_key == "sk-replaced-9999dddd"
    others = ProviderKey.objects.exclude(pk=key.pk)
    assert {k.credentials().api_key for k in others} == {
        secrets[k.label] for k in keys if k.pk != key.pk
    }


def test_an_unreadable_secret_replaced_meanwhile_is_not_marked(settings, monkeypatch, alice):
    settings.OMNIWEB_ENCRYPTION_KEYS = [KEY_C]
    key = save_key(alice, CANARY, label="Lost")
    settings.OMNIWEB_ENCRYPTION_KEYS = [KEY_B, KEY_A]
    real_rotate = crypto.rotate

    def owner_enters_the_secret_again_first(token: str) -> str:
        if stored_token(key) == token:
            fresh = ProviderKey.objects.get(pk=key.pk)
            fresh.set_secret("sk-entered-again-1234")
            fresh.save()
        return real_rotate(token)

    monkeypatch.setattr(crypto, "rotate", owner_enters_the_secret_again_first)
    output = rotate()

    assert "rotated 0, already current 1, unreadable 0" in output
    key.refresh_from_db()
    assert not key.needs_reentry
    assert key.credentials().api_key == "sk-entered-again-1234"


def test_a_key_deleted_meanwhile_is_simply_left_out(settings, monkeypatch, alice, bob):
    settings.OMNIWEB_ENCRYPTION_KEYS = [KEY_A]
    three_keys(alice, bob)
    settings.OMNIWEB_ENCRYPTION_KEYS = [KEY_B, KEY_A]
    real_rotate = crypto.rotate

    def team_key_deleted_first(token: str) -> str:
        ProviderKey.objects.filter(label="Team", secret_ciphertext=token).delete()
        return real_rotate(token)

    monkeypatch.setattr(crypto, "rotate", team_key_deleted_first)

    assert "rotated 2, already current 0, unreadable 0" in rotate()
    assert not ProviderKey.objects.filter(label="Team").exists()


def test_a_secret_that_keeps_changing_is_skipped_and_the_command_asks_for_another_run(
    settings, monkeypatch, alice
):
    settings.OMNIWEB_ENCRYPTION_KEYS = [KEY_A]
    key = save_key(alice, CANARY)
    settings.OMNIWEB_ENCRYPTION_KEYS = [KEY_B, KEY_A]
    real_rotate = crypto.rotate

    def a_process_still_on_the_old_key_writes_each_time(token: str) -> str:
        # A web process not yet restarted keeps saving with KEY_A alone.
        stale = crypto.PREFIX + Fernet(KEY_A).encrypt(b"sk-written-by-a-stale-process").decode()
        ProviderKey.objects.filter(pk=key.pk).update(secret_ciphertext=stale)
        return real_rotate(token)

    monkeypatch.setattr(crypto, "rotate", a_process_still_on_the_old_key_writes_each_time)
    output, failure = rotate_expecting_failure()

    assert "rotated 0, already current 0, unreadable 0, skipped 1" in output
    assert "Mine" in output
    assert "run the command again" in str(failure)
    key.refresh_from_db()
    assert key.credentials().api_key == "sk-written-by-a-stale-process"
