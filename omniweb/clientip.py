"""The client's address as this site believes it (RELIABILITY 32).

Behind reverse proxies every connection comes from the nearest proxy, and each proxy appends
the address it saw to X-Forwarded-For. With OMNIWEB_TRUSTED_PROXY_COUNT = N, the N rightmost
entries were written by our own proxies, and the Nth from the right is the address the
outermost of them saw: the client. Whatever stands left of it came from the client and proves
nothing. Login throttling, the webhook limit, password-reset limits and our own log lines all
use this one rule, so they agree on who a client is.

Assumes every trusted proxy appends a bare address (no port), as the usual proxies do. A
header that does not fit (missing, fewer entries than proxies, anything that is not an
address) is not believed at all: the connection's own address is used instead.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from django.conf import settings
from django.http import HttpRequest

# The unspecified address: what a connection without an address of its own (a Unix socket
# without a proxy) counts as, so callers always get a parseable address.
UNKNOWN = "0.0.0.0"


def _address(text: str) -> str | None:
    """The canonical form of one address, or None if `text` is not one."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped  # the same client, whichever socket family it came in on
    return str(address)


def believed_address(meta: Mapping[str, object], trusted_proxies: int) -> str:
    """RELIABILITY 32: the client's address from a request's META (or a WSGI environ).

    With `trusted_proxies` = N > 0, exactly N entries of X-Forwarded-For, counted from the
    right, are believed, and the leftmost of those is the client. With N = 0, or a header that
    is missing, too short or not made of addresses, it is REMOTE_ADDR. Always an address.
    """
    remote = _address(str(meta.get("REMOTE_ADDR") or "")) or UNKNOWN
    if trusted_proxies <= 0:
        return remote
    header = meta.get("HTTP_X_FORWARDED_FOR")
    if not isinstance(header, str):
        return remote
    # Only the last N entries matter; a long forged prefix is never even split apart.
    entries = header.rsplit(",", trusted_proxies)[-trusted_proxies:]
    if len(entries) < trusted_proxies:
        return remote
    written = [_address(entry) for entry in entries]
    if any(address is None for address in written):
        return remote
    return written[0] or remote


def client_address(request: HttpRequest) -> str:
    """RELIABILITY 32: the client's address, believing OMNIWEB_TRUSTED_PROXY_COUNT proxies."""
    return believed_address(request.META, settings.TRUSTED_PROXY_COUNT)
