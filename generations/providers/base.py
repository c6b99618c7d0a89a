"""The small interface every gateway adapter implements, and the types the rest of Omniweb sees.

Outside this package nobody knows a gateway's field names: requests go out as a
GenerationRequest, answers come back as a ProviderStatus, and every failure is a ProviderError
whose `kind` says what the task engine should do (retry, fail and refund, mark the key invalid).

An adapter is a subclass of Provider with pure `build_*` / `parse_*` methods; the HTTP round
trip, timeouts and error classification are shared here so every gateway behaves the same way.

Two rules hold for everything a gateway says (RELIABILITY 28 and 35):
- Texts. A ProviderError's `message` and a ProviderStatus's `error` are our own words for the
  member, never the gateway's. The gateway's words travel separately in `details`, taken only
  from the documented error fields of its answers; `submit` and `status` hand them on redacted
  (our key and anything shaped like a credential become "[redacted]", see text.py) and cut to a
  few hundred characters, and redact `ProviderError.body` and `ProviderStatus.raw` the same way.
- Numbers. Estimates, progress, costs, timestamps and durations pass through the helpers below
  (`as_seconds`, `as_progress`, `as_cost`, `timestamp`, `as_duration`): a value out of range,
  not finite, a boolean or a string where a number belongs is None, never an exception.
"""

from __future__ import annotations

import email.utils
import logging
import math
import reprlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any, ClassVar

import httpx
from django.views.decorators.debug import sensitive_variables

from generations import outbound
from generations.providers.http import shared_client
from generations.providers.http import timeout as default_timeout
from generations.providers.text import bounded_details, describe_answer, redact, redact_value

logger = logging.getLogger(__name__)


class Kind(StrEnum):
    VIDEO = "video"
    IMAGE = "image"


class State(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ErrorKind(StrEnum):
    AUTHENTICATION = "authentication"  # 401: the key is wrong or revoked
    PAYMENT = "payment"  # 402: the gateway account is out of balance
    RATE_LIMIT = "rate_limit"  # 429: wait (Retry-After) and try again
    INVALID_REQUEST = "invalid_request"  # 400/403/409/422: this request will never work
    BUSINESS = "business"  # a refusal inside a 200 answer (Omni Video `code: 0`)
    NOT_FOUND = "not_found"  # 404: the gateway does not know the task (yet, or any more)
    TRANSIENT = "transient"  # 5xx, timeouts, broken bodies, unknown statuses: try again later


PERMANENT_KINDS = {
    ErrorKind.AUTHENTICATION,
    ErrorKind.PAYMENT,
    ErrorKind.INVALID_REQUEST,
    ErrorKind.BUSINESS,
}


class ProviderError(Exception):
    """A gateway call that did not give a usable answer.

    `permanent` errors will fail the same way if repeated. `request_sent` is False only when we
    know the gateway never received the request (DNS or connect failure); after a read timeout
    the gateway may have created, and billed, the task.

    `message` is ours, written for the member. `details` is the gateway's own words (a
    documented error field) or, for an answer that is not JSON, what kind of answer it was.
    Adapters may put a gateway's text there as they find it: `Provider.submit` and `status`
    call `scrub` before the error leaves this package.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: ErrorKind,
        code: str | None = None,
        status_code: int | None = None,
        retry_after: float | None = None,
        request_sent: bool = True,
        body: Any = None,
        details: str | None = None,
    ):
        super().__init__(message)
        self.body = body  # the gateway's answer, for admins; never our request
        self.message = message
        self.details = details
        self.kind = kind
        self.code = code
        self.status_code = status_code
        self.retry_after = retry_after
        self.request_sent = request_sent

    @property
    def permanent(self) -> bool:
        return self.kind in PERMANENT_KINDS

    def __repr__(self) -> str:
        return f"ProviderError({self.kind}, {self.code!r}, {self.status_code}, {self.message!r})"

    @sensitive_variables("secret")
    def scrub(self, secret: str | None) -> None:
        """Make every text fit to leave the provider layer: `details` bounded, all texts and the
        body redacted of `secret` and of anything shaped like a credential."""
        self.message = redact(self.message, secret)
        self.args = (self.message,)
        self.details = bounded_details(self.details, secret)
        self.code = bounded_details(self.code, secret, limit=CODE_CHARS)
        self.body = redact_value(self.body, secret)


@dataclass(frozen=True)
class Credentials:
    """An API key and the base URL to use it with. The secret never appears in its repr."""

    api_key: str = field(repr=False)
    base_url: str | None = None

    def __repr__(self) -> str:
        return f"Credentials(api_key='…{self.api_key[-4:]}', base_url={self.base_url!r})"


@dataclass(frozen=True)
class GenerationRequest:
    """What a member asked for, in Omniweb's words. `resolution` carries Omixa's WxH size."""

    provider: str
    model: str
    prompt: str
    duration: int | None = None
    resolution: str | None = None
    aspect_ratio: str | None = None
    reference_images: tuple[str, ...] = ()  # URLs or data URIs
    callback_url: str | None = None  # where the gateway may notify us


@dataclass(frozen=True)
class ResultFile:
    url: str
    expires_at: datetime | None = None


@dataclass(frozen=True)
class ProviderStatus:
    """A gateway's answer about one task, normalized."""

    provider_task_id: str
    state: State
    raw_status: str
    progress: int | None = None
    results: tuple[ResultFile, ...] = ()
    error: str | None = None  # why the task failed, in our words
    error_code: str | None = None
    details: str | None = None  # the gateway's own words about the failure; see scrubbed()
    cost: Decimal | None = None
    estimated_seconds: int | None = None
    media_duration: float | None = None
    media_resolution: str | None = None
    raw: Any = field(default=None, compare=False, repr=False)  # the answer as it came

    @property
    def finished(self) -> bool:
        return self.state in (State.SUCCEEDED, State.FAILED)

    @sensitive_variables("secret")
    def scrubbed(self, secret: str | None) -> ProviderStatus:
        """This status with its texts fit to leave the provider layer (see ProviderError.scrub).
        Result URLs are left alone: they are what we download, and never shown as text."""
        return replace(
            self,
            error=redact(self.error, secret) if self.error else self.error,
            error_code=bounded_details(self.error_code, secret, limit=CODE_CHARS),
            details=bounded_details(self.details, secret),
            raw=redact_value(self.raw, secret),
        )


# A gateway's error code is a short word ("invalid_duration"); a longer one is cut.
CODE_CHARS = 100


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header, given in seconds or as an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


# --- numbers from gateways (RELIABILITY 35) ------------------------------------------------------
#
# A gateway's numbers are untrusted input. A value outside these bounds is ignored (None) rather
# than clamped: a gateway that reports 10**30 seconds has told us nothing about the task.

MAX_SECONDS = 86_400  # estimates, elapsed times and media durations: at most a day
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
# Task.gateway_cost is a DecimalField(max_digits=12, decimal_places=4); a test keeps them equal.
COST_MAX_DIGITS = 12
COST_DECIMAL_PLACES = 4
COST_LIMIT = 10 ** (COST_MAX_DIGITS - COST_DECIMAL_PLACES)  # exclusive
COST_STEP = Decimal(1).scaleb(-COST_DECIMAL_PLACES)


def as_number(value: Any) -> int | float | None:
    """A JSON number, or None for booleans, strings, NaN and infinities."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def whole_number(value: Any, low: int, high: int) -> int | None:
    """A number in low..high as a whole number (fractions dropped), else None."""
    number = as_number(value)
    if number is None or not low <= number <= high:
        return None
    return int(number)


def as_seconds(value: Any) -> int | None:
    """A number of seconds (an estimate, an elapsed time) in 0..MAX_SECONDS, else None."""
    return whole_number(value, 0, MAX_SECONDS)


def as_progress(value: Any) -> int | None:
    """A percentage in 0..100, else None."""
    return whole_number(value, 0, 100)


def as_duration(value: Any) -> float | None:
    """A media duration in seconds, above 0 and at most MAX_SECONDS, else None."""
    number = as_number(value)
    if number is None or not 0 < number <= MAX_SECONDS:
        return None
    return float(number)


def as_cost(value: Any) -> Decimal | None:
    """What a gateway charged (a number, or a number in a string): finite, not negative and small
    enough for Task.gateway_cost, rounded to its decimal places; anything else is None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        # Compared before converting: a 400-digit integer never becomes a Decimal.
        return Decimal(value) if 0 <= value < COST_LIMIT else None
    if isinstance(value, float):
        text = str(value)
    elif isinstance(value, str) and len(value) <= 40:
        text = value.strip()
    else:
        return None
    try:
        amount = Decimal(text)
    except ArithmeticError:
        return None
    if not amount.is_finite() or not 0 <= amount < COST_LIMIT:
        return None
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -COST_DECIMAL_PLACES:
        amount = amount.quantize(COST_STEP, rounding=ROUND_HALF_UP)
        if amount >= COST_LIMIT:
            return None
    return abs(amount)  # -0 is 0


def timestamp(value: Any) -> datetime | None:
    """A Unix timestamp in seconds between EARLIEST and LATEST, else None."""
    number = as_number(value)
    if number is None or not EARLIEST.timestamp() <= number < LATEST.timestamp():
        return None
    return datetime.fromtimestamp(number, UTC)


def gateway_text(value: Any) -> str | None:
    """A gateway's words from one of its documented fields: a non-empty string, else None.
    Kept whole here; `submit` and `status` bound and redact it before it leaves (see scrub)."""
    return value if isinstance(value, str) and value.strip() else None


TASK_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:")
TASK_ID_MAX_CHARS = 200  # Task.provider_task_id


def is_safe_task_id(value: Any) -> bool:
    """A gateway's task id we can put in a URL path and store: letters, digits and - _ . :,
    at most TASK_ID_MAX_CHARS, and not a path segment of its own ("." or "..")."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= TASK_ID_MAX_CHARS
        and set(value) <= TASK_ID_CHARS
        and value.strip(".") != ""
    )


class Provider(ABC):
    """Base class for one gateway dialect.

    Subclasses set the class attributes and implement the build/parse methods; `submit` and
    `status` do the HTTP round trip with the shared client and turn failures into
    ProviderError.
    """

    id: ClassVar[str]
    name: ClassVar[str]
    default_base_url: ClassVar[str | None]
    # The gateway's advice on polling: first check after, and then every, this many seconds.
    first_poll_seconds: ClassVar[tuple[float, float]] = (5, 10)
    poll_interval_seconds: ClassVar[tuple[float, float]] = (5, 10)
    # Whether the gateway calls a URL we give it when a task finishes.
    supports_webhook: ClassVar[bool] = False

    def __init__(self, client: httpx.Client | None = None):
        self._client = client

    @property
    def client(self) -> httpx.Client:
        return self._client or shared_client()

    # --- what each gateway module implements -------------------------------------------------

    @abstractmethod
    def build_submit(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        """(path, JSON body) of the submit call."""

    @abstractmethod
    def parse_submit(self, body: Any) -> ProviderStatus:
        """The submit answer, as the task's first status."""

    @abstractmethod
    def status_path(self, provider_task_id: str) -> str:
        """Path of the status endpoint for one task."""

    @abstractmethod
    def parse_status(self, body: Any) -> ProviderStatus:
        """The status endpoint's answer."""

    def timeout(self) -> httpx.Timeout | None:
        """Per-gateway timeout, when the shared client's default does not fit."""
        return None

    def error_details(self, body: Any) -> tuple[str | None, str | None]:
        """(code, message) from an error answer's body, where the gateway gives them."""
        return None, None

    # --- the shared round trip -------------------------------------------------------------------

    # Both scrub what they return or raise: past this point no text carries the key
    # (RELIABILITY 28). Nothing else in this package may hand a gateway's answer out.
    @sensitive_variables("credentials")
    def submit(self, request: GenerationRequest, credentials: Credentials) -> ProviderStatus:
        try:
            path, payload = self.build_submit(request)
            body = self._call("POST", path, credentials, json=payload)
            status = replace(self._parsed(self.parse_submit, body), raw=body)
        except ProviderError as exc:
            exc.scrub(credentials.api_key)
            raise
        return status.scrubbed(credentials.api_key)

    @sensitive_variables("credentials")
    def status(self, provider_task_id: str, credentials: Credentials) -> ProviderStatus:
        try:
            body = self._call("GET", self.status_path(provider_task_id), credentials)
            status = replace(self._parsed(self.parse_status, body), raw=body)
        except ProviderError as exc:
            exc.scrub(credentials.api_key)
            raise
        return status.scrubbed(credentials.api_key)

    def _parsed(self, parse, body: Any) -> ProviderStatus:
        try:
            status = parse(body)
        except ProviderError as exc:
            exc.body = body if exc.body is None else exc.body
            raise
        if not is_safe_task_id(status.provider_task_id):
            # The id goes into our status URLs and our database: an id that could change the
            # path, or does not fit, is not an id.
            raise ProviderError(
                f"{self.name} answered with a task id Omniweb cannot use.",
                kind=ErrorKind.TRANSIENT,
                code="malformed_body",
                body=body,
            )
        return status

    def url(self, path: str, credentials: Credentials) -> str:
        base = credentials.base_url or self.default_base_url
        if not base:
            raise ProviderError(
                f"{self.name} needs the base URL of your site: add it to the key.",
                kind=ErrorKind.INVALID_REQUEST,
                code="missing_base_url",
                request_sent=False,
            )
        return base.rstrip("/") + path

    # Error reports list local variables; these two hold the bearer token.
    @sensitive_variables("credentials", "headers")
    def _call(self, method: str, path: str, credentials: Credentials, **kwargs) -> Any:
        url = self.url(path, credentials)
        headers = {"Authorization": f"Bearer {credentials.api_key}", "Accept": "application/json"}
        # The read timeout is the deadline of the whole request (RELIABILITY 29); the address
        # policy applies to every connection (RELIABILITY 27).
        timeout = self.timeout() or default_timeout()
        try:
            response = outbound.gateway_request(
                self.client, method, url, headers=headers, timeout=timeout, **kwargs
            )
        except outbound.GatewayRefused as exc:
            raise ProviderError(
                f"{self.name}: {exc.message}",
                kind=ErrorKind.INVALID_REQUEST if exc.permanent else ErrorKind.TRANSIENT,
                code=exc.code,
                request_sent=exc.request_sent,
            ) from None
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise ProviderError(
                f"Could not reach {self.name}: {exc.__class__.__name__}.",
                kind=ErrorKind.TRANSIENT,
                code="connect_failed",
                request_sent=False,
            ) from None
        except httpx.TimeoutException as exc:
            raise ProviderError(
                f"{self.name} did not answer in time ({exc.__class__.__name__}).",
                kind=ErrorKind.TRANSIENT,
                code="timeout",
            ) from None
        except httpx.HTTPError as exc:
            raise ProviderError(
                f"The connection to {self.name} broke: {exc.__class__.__name__}.",
                kind=ErrorKind.TRANSIENT,
                code="connection_error",
            ) from None
        return self.read_response(response)

    def read_response(self, response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_success:
            if body is None:
                raise ProviderError(
                    f"{self.name} answered with a body that is not JSON.",
                    kind=ErrorKind.TRANSIENT,
                    code="malformed_body",
                    status_code=response.status_code,
                    body=response.text[:2000],
                    details=self.describe(response),
                )
            return body
        raise self.http_error(response, body)

    def http_error(self, response: httpx.Response, body: Any) -> ProviderError:
        code, words = self.error_details(body) if body is not None else (None, None)
        status = response.status_code
        kind, message = HTTP_ERRORS.get(status, (None, None))
        if kind is None:
            kind = ErrorKind.TRANSIENT if status >= 500 else ErrorKind.INVALID_REQUEST
            message = (
                "{name} had a server error (HTTP {status})."
                if status >= 500
                else "{name} refused the request (HTTP {status})."
            )
        retry_after = None
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return ProviderError(
            message.format(name=self.name, status=status),
            kind=kind,
            code=code,
            status_code=status,
            retry_after=retry_after,
            body=body if body is not None else response.text[:2000],
            # A body that is not JSON is never shown, only named.
            details=gateway_text(words) if body is not None else self.describe(response),
        )

    @staticmethod
    def describe(response: httpx.Response) -> str:
        return describe_answer(
            response.content, response.headers.get("Content-Type"), response.status_code
        )

    def unknown_status(self, raw: Any) -> ProviderError:
        # Never guess: an unmapped status is retried and logged so somebody adds it.
        shown = redact(reprlib.repr(raw), None)
        logger.warning("%s answered an unknown task status %s", self.name, shown)
        return ProviderError(
            f"{self.name} reported a task status Omniweb does not know.",
            kind=ErrorKind.TRANSIENT,
            code="unknown_status",
            details=shown,
        )

    def task_failed(self, reason: Any) -> dict[str, str | None]:
        """`error` and `details` of a failed task's status: our sentence, the gateway's reason."""
        words = gateway_text(reason)
        return {
            "error": f"{self.name} reported that the task failed."
            if words
            else f"{self.name} reported that the task failed without saying why.",
            "details": words,
        }

    def malformed(self, what: str) -> ProviderError:
        return ProviderError(
            f"{self.name} answered without {what}.",
            kind=ErrorKind.TRANSIENT,
            code="malformed_body",
        )


# What each HTTP status means, and what we tell the member; {name} is the gateway's name.
HTTP_ERRORS: dict[int, tuple[ErrorKind, str]] = {
    400: (ErrorKind.INVALID_REQUEST, "{name} refused the request as invalid."),
    401: (
        ErrorKind.AUTHENTICATION,
        "{name} says the key was refused; check or replace it under Keys.",
    ),
    402: (
        ErrorKind.PAYMENT,
        "{name} says the account behind the key has no balance left; recharge it there.",
    ),
    403: (ErrorKind.INVALID_REQUEST, "{name} says the key may not do this."),
    404: (ErrorKind.NOT_FOUND, "{name} does not know this task."),
    409: (ErrorKind.INVALID_REQUEST, "{name} reported a conflict with this request."),
    422: (ErrorKind.INVALID_REQUEST, "{name} could not process the request."),
    429: (ErrorKind.RATE_LIMIT, "{name} is getting too many requests; Omniweb will try again."),
}
