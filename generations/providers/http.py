"""The one HTTP client every gateway adapter shares.

A connection pool (polling hundreds of tasks reuses connections instead of opening one per
request) whose every new connection goes through the outbound address policy
(generations/outbound.py): the address connected to is the address checked, and no proxy from
the environment stands in between. Each request carries its own deadline (`timeout`), set by
`Provider._call`. httpx's own logging of request lines is quieted in settings, since URLs may
carry task ids but we never want headers in logs.
"""

import threading

import httpx
from django.conf import settings

from generations.outbound import GatewayTransport

CONNECT_SECONDS = 5.0


def timeout(extra_read: float = 0) -> httpx.Timeout:
    """Connect quickly or not at all; the whole request, answer included, within
    GATEWAY_TIMEOUT_SECONDS (plus `extra_read` for a gateway that holds its answer back)."""
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
                transport=GatewayTransport(limits=LIMITS),
                timeout=timeout(),
                follow_redirects=False,
                trust_env=False,
                headers={"User-Agent": "Omniweb"},
            )
        return _client
