"""Personal access tokens on API requests: who is calling, what they may do, how often.

A token authenticates API requests only: the browser's session is never consulted here, and the
pages never look at an Authorization header. The token's secret is looked up by its SHA-256 in
one indexed read; it is never logged, and neither is the header that carries it.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import timedelta

from django.conf import settings
from django.http import HttpRequest
from django.utils import timezone

from accounts.models import ApiToken, hash_token
from omniweb import ratelimit

logger = logging.getLogger("omniweb.api")

# How often a token's "last used" is written: once a minute is enough for a person reading it,
# and spares a write on every call of a busy script.
LAST_USED_EVERY = timedelta(minutes=1)


class NotAuthenticated(Exception):
    """No token, or one that is unknown, revoked, expired or of an inactive member."""


class ReadOnlyToken(Exception):
    """A read-only token tried to change something."""


class TokenRateLimited(Exception):
    def __init__(self, retry_after: int):
        super().__init__("rate limited")
        self.retry_after = retry_after


def bearer(request: HttpRequest) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        return None
    return secret.strip()


def authenticate(request: HttpRequest, secret: str | None) -> ApiToken:
    """The live token whose secret the request's `Authorization: Bearer` header carries; sets
    request.user and request.api_token, counts the call against the token's rate, or raises."""
    # A secret longer than any we issue is refused before it is hashed.
    if secret is None or len(secret) > 100:
        raise NotAuthenticated
    token = ApiToken.objects.live().select_related("user").filter(token_hash=hash_token(secret))
    token = token.first()
    if token is None:
        raise NotAuthenticated
    request.user = token.user
    request.api_token = token
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_EVERY:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    limit = settings.API_RATE_PER_MINUTE
    if ratelimit.hit(f"api-token:{token.pk}", ratelimit.MINUTE) > limit:
        window_end = (math.floor(time.time() / 60) + 1) * 60
        raise TokenRateLimited(max(1, math.ceil(window_end - time.time())))
    return token


def require_write(request: HttpRequest) -> None:
    if not request.api_token.can_write:
        raise ReadOnlyToken


def log_call(request: HttpRequest, status: int, started: float) -> None:
    """One line per API call, naming the token (never its secret)."""
    token = getattr(request, "api_token", None)
    logger.info(
        "event=api_call method=%s path=%s status=%s token=%r member=%s ms=%.1f",
        request.method,
        request.path,
        status,
        token.name if token else "",
        token.user_id if token else "",
        (time.perf_counter() - started) * 1000,
    )
