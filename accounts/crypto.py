"""Encryption of provider API keys at rest.

MultiFernet over the keys in OMNIWEB_ENCRYPTION_KEYS (newest first): new tokens use the newest
key, old tokens still decrypt until the rotate command has moved them. Stored tokens carry a
version prefix so a future scheme can be told apart. Decryption fails closed: a token that the
configured keys cannot open raises DecryptionError; it never comes back as ciphertext or as an
empty string.
"""

from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

PREFIX = "v1:"


class DecryptionError(Exception):
    """A stored secret cannot be opened with the configured OMNIWEB_ENCRYPTION_KEYS."""


@cache
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key) for key in keys])


def _current() -> MultiFernet:
    return _fernet(tuple(settings.OMNIWEB_ENCRYPTION_KEYS))


def encrypt(plaintext: str) -> str:
    return PREFIX + _current().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    if not token.startswith(PREFIX):
        raise DecryptionError("The stored secret is not in a format Omniweb knows.")
    try:
        return _current().decrypt(token[len(PREFIX) :].encode()).decode()
    except InvalidToken:
        raise DecryptionError(
            "The stored secret cannot be decrypted with the configured OMNIWEB_ENCRYPTION_KEYS."
        ) from None


def rotate(token: str) -> str:
    """The same secret, re-encrypted with the newest key."""
    if not token.startswith(PREFIX):
        raise DecryptionError("The stored secret is not in a format Omniweb knows.")
    try:
        return PREFIX + _current().rotate(token[len(PREFIX) :].encode()).decode()
    except InvalidToken:
        raise DecryptionError(
            "The stored secret cannot be decrypted with the configured OMNIWEB_ENCRYPTION_KEYS."
        ) from None


def is_current(token: str) -> bool:
    """Whether the newest key alone opens `token` (nothing left to rotate)."""
    newest = Fernet(settings.OMNIWEB_ENCRYPTION_KEYS[0])
    try:
        newest.decrypt(token[len(PREFIX) :].encode())
    except InvalidToken:
        return False
    return True
