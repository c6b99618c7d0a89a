"""The one HTTP client every gateway adapter shares.

Explicit timeouts (a gateway that hangs must not hold a worker forever) and a connection pool
(polling hundreds of tasks reuses connections instead of opening one per request). httpx's own
logging of request lines is quieted in settings, since URLs may carry task ids but we never
want headers in logs.
"""

import threading

import httpx
from django.conf import settings

CONNECT_SECONDS = 5.0


def timeout(extra_read: float = 0) -> httpx.Timeout:
    """Connect quickly or not at all; wait GATEWAY_TIMEOUT_SECONDS for an answer."""
    read = float(settings.GATEWAY_TIMEOUT_SECONDS)
    return httpx.Timeout(connect=CONNECT_SECONDS, read=read + extra_read, write=read, pool=10.0)


LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=16, keepalive_expiry=30)

_lock = threading.Lock()
_client: httpx.Client | None = None


def shared_client() -> httpx.Client:
    global _client
    with _lock:
        if _client is None or _client.is_closed:
            _client = httpx.Client(
                timeout=timeout(),
                limits=LIMITS,
                follow_redirects=False,
                headers={"User-Agent": "Omniweb"},
            )
        return _client
