"""The small interface every gateway adapter implements, and the types the rest of Omniweb sees.

Outside this package nobody knows a gateway's field names: requests go out as a
GenerationRequest, answers come back as a ProviderStatus, and every failure is a ProviderError
whose `kind` says what the task engine should do (retry, fail and refund, mark the key invalid).

An adapter is a subclass of Provider with pure `build_*` / `parse_*` methods; the HTTP round
trip, timeouts and error classification are shared here so every gateway behaves the same way.
"""

from __future__ import annotations

import email.utils
import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, ClassVar

import httpx
from django.views.decorators.debug import sensitive_variables

from generations.providers.http import shared_client

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
    ):
        super().__init__(message)
        self.body = body  # the gateway's answer, for admins; never our request
        self.message = message
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
    error: str | None = None
    error_code: str | None = None
    cost: Decimal | None = None
    estimated_seconds: int | None = None
    media_duration: float | None = None
    media_resolution: str | None = None
    raw: Any = field(default=None, compare=False, repr=False)  # the answer as it came

    @property
    def finished(self) -> bool:
        return self.state in (State.SUCCEEDED, State.FAILED)


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


def timestamp(value: Any) -> datetime | None:
    """A Unix timestamp from a gateway answer, or None when absent or nonsense."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def as_decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return Decimal(str(value))
    except ArithmeticError:
        return None


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

    def submit(self, request: GenerationRequest, credentials: Credentials) -> ProviderStatus:
        path, payload = self.build_submit(request)
        body = self._call("POST", path, credentials, json=payload)
        return replace(self._parsed(self.parse_submit, body), raw=body)

    def status(self, provider_task_id: str, credentials: Credentials) -> ProviderStatus:
        body = self._call("GET", self.status_path(provider_task_id), credentials)
        return replace(self._parsed(self.parse_status, body), raw=body)

    @staticmethod
    def _parsed(parse, body: Any) -> ProviderStatus:
        try:
            return parse(body)
        except ProviderError as exc:
            exc.body = body if exc.body is None else exc.body
            raise

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
        if timeout := self.timeout():
            kwargs["timeout"] = timeout
        try:
            response = self.client.request(method, url, headers=headers, **kwargs)
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
                )
            return body
        raise self.http_error(response, body)

    def http_error(self, response: httpx.Response, body: Any) -> ProviderError:
        code, message = self.error_details(body) if body is not None else (None, None)
        status = response.status_code
        kind, default = HTTP_ERRORS.get(status, (None, None))
        if kind is None:
            kind = ErrorKind.TRANSIENT if status >= 500 else ErrorKind.INVALID_REQUEST
            default = f"{self.name} answered HTTP {status}."
        retry_after = None
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
        text = f"{self.name}: {message}" if message else f"{self.name}: {default}"
        return ProviderError(
            text,
            kind=kind,
            code=code,
            status_code=status,
            retry_after=retry_after,
            body=body if body is not None else response.text[:2000],
        )

    def unknown_status(self, raw: Any) -> ProviderError:
        # Never guess: an unmapped status is retried and logged so somebody adds it.
        logger.warning("%s answered an unknown task status %r", self.name, raw)
        return ProviderError(
            f"{self.name} reported a status Omniweb does not know: {raw!r}.",
            kind=ErrorKind.TRANSIENT,
            code="unknown_status",
        )

    def malformed(self, what: str) -> ProviderError:
        return ProviderError(
            f"{self.name} answered without {what}.",
            kind=ErrorKind.TRANSIENT,
            code="malformed_body",
        )


HTTP_ERRORS: dict[int, tuple[ErrorKind, str]] = {
    400: (ErrorKind.INVALID_REQUEST, "the gateway refused the request as invalid."),
    401: (ErrorKind.AUTHENTICATION, "the API key was refused; check or replace it."),
    402: (ErrorKind.PAYMENT, "the gateway account has no balance left; recharge it."),
    403: (ErrorKind.INVALID_REQUEST, "the API key may not do this."),
    404: (ErrorKind.NOT_FOUND, "the gateway does not know this task."),
    409: (ErrorKind.INVALID_REQUEST, "the gateway reported a conflict."),
    422: (ErrorKind.INVALID_REQUEST, "the gateway could not process the request."),
    429: (ErrorKind.RATE_LIMIT, "too many requests; Omniweb will try again shortly."),
}
