"""The one address policy for every request Omniweb sends out, and the ways it is enforced.

Gateway base URLs are typed by members and result links are chosen by gateways, so neither may
lead Omniweb to its own network: loopback, private, link-local, carrier-grade, multicast,
reserved and cloud metadata addresses are refused, including their IPv4-mapped, 6to4 and NAT64
spellings and the decimal or hexadecimal forms of IPv4 (RELIABILITY 27). What may be reached
anyway is an administrator's decision:

- ``GATEWAY_ALLOWED_HOSTS`` (``OMNIWEB_GATEWAY_ALLOWED_HOSTS``): host names, addresses or CIDR
  ranges, for a self-hosted Omni Video on a private network. It applies to gateway calls and to
  result downloads, since such a gateway hands out links to itself.
- While the simulator is on, the simulator's own address: the host and port of
  ``PUBLIC_URL``, where this site (and so its /simulator/) is served.
- Downloads alone may also allow loopback (``DOWNLOAD_ALLOW_LOOPBACK``, for the demo).

The policy is applied to the address actually connected to, never to a name that could be looked
up again and answer differently:

- `send_to_checked` (result downloads) resolves and checks first, then sends the request to the
  checked IP itself, with the host name in the Host header and in TLS, and checks the peer of
  the socket it got. The caller checks every redirect hop the same way.
- `gateway_request` (gateway calls) goes through `GatewayTransport`, the shared client's
  transport, which resolves, checks and connects in one step whenever it opens a connection, so
  pooled connections stay keyed by host name. Gateways' redirects are never followed.

`gateway_request` also gives the whole request, from connecting to the last byte of the answer,
one wall-clock deadline (RELIABILITY 29): every socket operation gets only the time left, and
an answer is read up to `GATEWAY_MAX_BYTES`.

What it assumes:

- The resolver (``socket.getaddrinfo``) is trusted, and a lookup is not bounded by the deadline.
- A client passed in to `gateway_request` instead of the shared one (tests pass clients whose
  transport has no network) gets the URL checks only: its scheme, and a host written as an
  address. Host names are checked when a connection is opened, which only `GatewayTransport`
  does; real traffic always uses it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpcore
import httpx
from django.conf import settings

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]

# A gateway's answer is a small JSON document; anything larger is a fault, not a result.
GATEWAY_MAX_BYTES = 1024 * 1024
SCHEMES = ("http", "https")
SETTING = "OMNIWEB_GATEWAY_ALLOWED_HOSTS"

# NAT64 gateways translate these to the IPv4 address in the low 32 bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# What inet_aton reads as IPv4 besides dotted quads: 2130706433, 0x7f000001, 0177.0.0.1, 127.1.
_NUMERIC_HOST = re.compile(r"[0-9a-fA-FxX.]+")
# Hosts in messages are bounded: a member may type a very long one.
_SHOWN_HOST = 100


class Unresolved(Exception):
    """A host name gave no address to check. `reason` says why; `retryable` if it may change."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"{host}: {reason}")
        self.host = host
        self.reason = reason  # no_host | lookup_failed | no_address | not_an_address

    @property
    def retryable(self) -> bool:
        return self.reason in ("lookup_failed", "no_address")


class AddressRefused(Exception):
    """The policy forbids at least one address of `host`."""

    def __init__(self, host: str, refused: Iterable[IPAddress]) -> None:
        self.host = host
        self.refused = [str(ip) for ip in refused]
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """What a member reads, starting in lower case so it can follow a gateway's name."""
        host = self.host[:_SHOWN_HOST]
        addresses = ", ".join(self.refused)
        shown = host if addresses == host else f"{host} ({addresses})"
        return (
            f"the address {shown} is on a private or local network, which Omniweb does not "
            f"call. An administrator can allow it by adding it to {SETTING}."
        )


class PeerMismatch(Exception):
    """The socket a request went out on leads elsewhere than the address that was checked."""


class GatewayRefused(Exception):
    """A gateway call that `gateway_request` stopped, with what the task engine needs to know.

    `message` starts in lower case: the caller puts the gateway's name in front of it.
    """

    def __init__(self, code: str, message: str, *, permanent: bool, request_sent: bool) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.permanent = permanent
        self.request_sent = request_sent


# --- the policy --------------------------------------------------------------------------------


def resolve_host(host: str, port: int) -> list[str]:
    """The addresses of `host`, as strings, from the system resolver."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


def unwrap(ip: IPAddress) -> IPAddress:
    # ::ffff:a.b.c.d is the IPv4 host a.b.c.d; judge (and connect to) that.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_public(ip: IPAddress) -> bool:
    # Python 3.11 counts multicast and some reserved ranges as "global"; we want neither.
    if not ip.is_global or ip.is_multicast or ip.is_reserved:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        # 6to4 and NAT64 addresses lead to the IPv4 address they embed.
        embedded = ip.sixtofour
        if ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public(embedded)
    return True


def literal_address(host: str) -> IPAddress | None:
    """The address `host` spells out, in any form the system would connect to, or None."""
    with contextlib.suppress(ValueError):  # not written as a standard address: read on
        return ipaddress.ip_address(host.strip("[]"))
    if _NUMERIC_HOST.fullmatch(host):
        # The resolver reads these without any lookup; so must we, or 2130706433 is a "name".
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _normal_name(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


@functools.lru_cache(maxsize=16)
def _parse_allowlist(entries: tuple[str, ...]) -> tuple[frozenset[str], tuple[IPNetwork, ...]]:
    names: set[str] = set()
    networks: list[IPNetwork] = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            names.add(_normal_name(entry))
    return frozenset(names), tuple(networks)


def _allowlist() -> tuple[frozenset[str], tuple[IPNetwork, ...]]:
    return _parse_allowlist(tuple(getattr(settings, "GATEWAY_ALLOWED_HOSTS", ())))


def _default_port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


def _is_simulator(ip: IPAddress, host: str, port: int) -> bool:
    """Whether (`host`, `ip`, `port`) is this site's own simulator, while it is on."""
    site_url = getattr(settings, "PUBLIC_URL", "")
    if not getattr(settings, "SIMULATOR_ENABLED", False) or not site_url:
        return False
    try:
        site = httpx.URL(site_url)
    except httpx.InvalidURL:
        return False
    if site.scheme not in SCHEMES or _default_port(site) != port:
        return False
    site_host = site.raw_host.decode("ascii")
    if _normal_name(site_host) == _normal_name(host):
        return True
    literal = literal_address(site_host)
    if literal is not None:
        return unwrap(literal) == ip
    try:
        return ip in {unwrap(ipaddress.ip_address(a)) for a in resolve_host(site_host, port)}
    except (OSError, ValueError):
        return False


def is_allowed(ip: IPAddress, host: str, port: int, *, allow_loopback: bool = False) -> bool:
    """Whether Omniweb may connect to `ip`, reached as `host`:`port`."""
    if is_public(ip):
        return True
    names, networks = _allowlist()
    if _normal_name(host) in names or any(ip in network for network in networks):
        return True
    if ip.is_loopback and allow_loopback:
        return True
    return _is_simulator(ip, host, port)


def checked_addresses(
    host: str, port: int, *, resolve: Resolver | None = None, allow_loopback: bool = False
) -> list[IPAddress]:
    """The addresses of `host`, every one of them allowed; else `Unresolved` or
    `AddressRefused`. `resolve` defaults to `resolve_host`."""
    if not host:
        raise Unresolved(host, "no_host")
    literal = literal_address(host)
    if literal is not None:
        found = [literal]
    else:
        try:
            answers = (resolve or resolve_host)(host, port)
        except OSError as exc:
            logger.info("Could not resolve %s: %s", host[:_SHOWN_HOST], exc)
            raise Unresolved(host, "lookup_failed") from None
        try:
            found = [ipaddress.ip_address(answer) for answer in answers]
        except ValueError:
            raise Unresolved(host, "not_an_address") from None
    if not found:
        raise Unresolved(host, "no_address")
    addresses = list(dict.fromkeys(unwrap(ip) for ip in found))
    # One bad answer is enough to refuse: with round-robin DNS we cannot promise to avoid it.
    refused = [
        ip for ip in addresses if not is_allowed(ip, host, port, allow_loopback=allow_loopback)
    ]
    if refused:
        logger.warning(
            "Refused %s: it resolves to %s", host[:_SHOWN_HOST], ", ".join(map(str, refused))
        )
        raise AddressRefused(host, refused)
    return addresses


def gateway_address_problem(url: str) -> str | None:
    """Why gateway calls to `url` would be refused, as a sentence for a form; None if they
    would not be, or if its host name cannot be looked up now (every connection is checked)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return None  # the field's own validator explains a malformed address
    if parsed.scheme not in SCHEMES:
        return None
    try:
        checked_addresses(parsed.raw_host.decode("ascii"), _default_port(parsed))
    except Unresolved:
        return None
    except AddressRefused as exc:
        return exc.message[0].upper() + exc.message[1:]
    return None


# --- downloads: one request, sent to the checked address itself ------------------------------


def send_to_checked(
    client: httpx.Client,
    url: httpx.URL,
    addresses: list[IPAddress],
    *,
    headers: dict[str, str],
    timeout: Callable[[], httpx.Timeout],
    method: str = "GET",
) -> httpx.Response:
    """Send to the first of `url`'s checked `addresses` that accepts a connection; the
    response is streamed. `timeout()` is asked before each attempt. Raises `PeerMismatch`.

    The connection is closed after the response: connections are pooled by IP, and another host
    name served from the same IP must never reuse this one's TLS session.
    """
    headers = {
        **headers,
        # The request goes to an IP; the server still needs the name it serves.
        "Host": url.netloc.decode("ascii"),
        "Connection": "close",
    }
    # TLS must still verify the certificate against the host name, not the IP.
    extensions = {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else {}
    for index, address in enumerate(addresses):
        request = client.build_request(
            method,
            url.copy_with(host=str(address)),
            headers=headers,
            extensions=extensions,
            timeout=timeout(),
        )
        try:
            response = client.send(request, stream=True, follow_redirects=False)
        except httpx.ConnectError:
            if index == len(addresses) - 1:
                raise
            continue
        check_peer(response, address, url.host)
        return response
    raise AssertionError("unreachable: addresses is never empty")


def check_peer(response: httpx.Response, address: IPAddress, host: str) -> None:
    """Belt and braces: the socket read from must lead to the address checked (a proxy, for
    one, would not). Closes `response` and raises `PeerMismatch` when it does not."""
    stream = response.extensions.get("network_stream")
    if stream is None:
        return
    try:
        peer = stream.get_extra_info("server_addr")
    except (AttributeError, OSError):
        return
    if not peer:
        return
    connected = unwrap(ipaddress.ip_address(peer[0]))
    if connected != address:
        response.close()
        logger.warning("Refused %s: connected to %s instead of %s", host, connected, address)
        raise PeerMismatch(f"{host}: connected to {connected} instead of {address}")


# --- gateway calls: checked connections and one deadline --------------------------------------

# The monotonic time the gateway request running in this thread must end by.
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "omniweb_gateway_deadline", default=None
)


def _time_left(timeout: float | None, error: type[Exception]) -> float | None:
    """`timeout`, shortened to what is left of the current deadline; `error` once none is."""
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the request's deadline has passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read, write and handshake waits at most the time left."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _time_left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _time_left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _CheckedBackend(httpcore.NetworkBackend):
    """Opens connections only to checked addresses of the host asked for."""

    def __init__(self) -> None:
        self._system = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = checked_addresses(host, port)
        except Unresolved as exc:
            raise httpcore.ConnectError(f"could not look up {host[:_SHOWN_HOST]}") from exc
        for index, address in enumerate(addresses):
            try:
                stream = self._system.connect_tcp(
                    str(address),
                    port,
                    timeout=_time_left(timeout, httpcore.ConnectTimeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError:
                if index == len(addresses) - 1:
                    raise
                continue
            peer = stream.get_extra_info("server_addr")
            if peer and unwrap(ipaddress.ip_address(peer[0])) != address:
                stream.close()
                raise AddressRefused(host, [unwrap(ipaddress.ip_address(peer[0]))])
            return _DeadlineStream(stream)
        raise AssertionError("unreachable: addresses is never empty")

    def sleep(self, seconds: float) -> None:
        self._system.sleep(seconds)


class GatewayTransport(httpx.HTTPTransport):
    """httpx's own transport, except that every connection it opens is checked by the policy."""

    def __init__(self, *, limits: httpx.Limits, verify: Any = True) -> None:
        super().__init__(verify=verify, limits=limits)
        # httpx has no public way to choose how its pool opens connections: the pool is built
        # again with the same settings and the checking backend. Direct connections only, so
        # the address checked is the address connected to.
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_CheckedBackend(),
        )


def _gateway_url(url: str) -> httpx.URL:
    """`url` if its scheme and (when written as an address) its host are allowed."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        parsed = None
    if parsed is None or not parsed.raw_host:
        raise GatewayRefused(
            "address_refused",
            "the key's base URL is not a valid web address.",
            permanent=True,
            request_sent=False,
        )
    if parsed.scheme not in SCHEMES:
        raise GatewayRefused(
            "address_refused",
            "only http:// and https:// addresses are called; check the key's base URL.",
            permanent=True,
            request_sent=False,
        )
    host = parsed.raw_host.decode("ascii")
    literal = literal_address(host)
    if literal is not None:
        address = unwrap(literal)
        if not is_allowed(address, host, _default_port(parsed)):
            refused = AddressRefused(host, [address])
            logger.warning("Refused %s: a private or local address", host[:_SHOWN_HOST])
            raise GatewayRefused(
                "address_refused", refused.message, permanent=True, request_sent=False
            )
    return parsed


def _redirect_refusal(url: httpx.URL, response: httpx.Response) -> GatewayRefused:
    status = response.status_code
    location = response.headers.get("location")
    target = None
    if location:
        with contextlib.suppress(httpx.InvalidURL):
            target = url.join(location)
    if target is not None and target.scheme in SCHEMES and target.raw_host:
        # A target nobody can look up is refused as a plain redirect, below.
        with contextlib.suppress(Unresolved):
            try:
                checked_addresses(target.raw_host.decode("ascii"), _default_port(target))
            except AddressRefused:
                return GatewayRefused(
                    "address_refused",
                    f"it redirected to {target.host[:_SHOWN_HOST]}, which is on a private or "
                    "local network; Omniweb neither follows gateways' redirects nor calls such "
                    "addresses.",
                    permanent=True,
                    request_sent=True,
                )
    where = f" to {target.host[:_SHOWN_HOST]}" if target is not None and target.host else ""
    return GatewayRefused(
        "redirected",
        f"it answered HTTP {status}, a redirect{where}. Omniweb does not follow redirects from "
        "gateways: check the key's base URL (https:// rather than http://, or the path).",
        permanent=True,
        request_sent=True,
    )


def _read_answer(response: httpx.Response, deadline: float, limit: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    for chunk in response.iter_bytes():
        if time.monotonic() > deadline:
            raise httpx.ReadTimeout("the request's deadline has passed", request=response.request)
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


def _too_large(limit: int) -> GatewayRefused:
    return GatewayRefused(
        "answer_too_large",
        f"its answer was larger than {limit / 1048576:g} MB, which no gateway answer should be.",
        permanent=False,
        request_sent=True,
    )


_DROPPED_HEADERS = ("content-encoding", "content-length", "transfer-encoding")


def gateway_request(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    timeout: httpx.Timeout,
    json: Any = None,
    max_bytes: int = GATEWAY_MAX_BYTES,
) -> httpx.Response:
    """Send one gateway request and read its whole answer within one deadline.

    `timeout.read` is the budget of the whole request (connecting, sending, waiting and reading);
    `timeout.connect` and `timeout.pool` cap those steps within it. The response returned has
    been read in full and closed. Raises `GatewayRefused` for a refused address, a redirect or
    an answer over `max_bytes`; httpx's errors otherwise, a timeout once the deadline passes.
    """
    budget = timeout.read if timeout.read is not None else float(settings.GATEWAY_TIMEOUT_SECONDS)
    deadline = time.monotonic() + budget
    target = _gateway_url(url)
    token = _deadline.set(deadline)
    try:
        request = client.build_request(
            method, target, headers=headers, json=json, timeout=_request_timeout(timeout, budget)
        )
        response = client.send(request, stream=True, follow_redirects=False)
        try:
            if 300 <= response.status_code < 400:
                raise _redirect_refusal(target, response)
            content = _read_answer(response, deadline, max_bytes)
        finally:
            response.close()
    except AddressRefused as exc:
        raise GatewayRefused(
            "address_refused", exc.message, permanent=True, request_sent=False
        ) from None
    finally:
        _deadline.reset(token)
    # Read in full and decoded: the copy carries the body as plain bytes.
    kept = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _DROPPED_HEADERS]
    return httpx.Response(response.status_code, headers=kept, content=content, request=request)


def _request_timeout(timeout: httpx.Timeout, budget: float) -> httpx.Timeout:
    def capped(value: float | None) -> float:
        return budget if value is None else min(value, budget)

    return httpx.Timeout(
        budget, connect=capped(timeout.connect), pool=capped(timeout.pool), write=budget
    )
