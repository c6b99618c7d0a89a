"""Errors as problem documents (RFC 9457), the one error shape of /api/v1/."""

from __future__ import annotations

import json

from django.http import HttpResponse

TITLES = {
    400: "Bad request",
    401: "Not authenticated",
    402: "Not enough credits",
    403: "Not allowed",
    404: "Not found",
    409: "Conflict",
    413: "Too large",
    422: "Invalid request",
    429: "Too many requests",
}


def problem(
    status: int,
    code: str,
    detail: str,
    errors: dict[str, list[str]] | None = None,
    *,
    retry_after: int | None = None,
) -> HttpResponse:
    """An `application/problem+json` answer; `code` is a stable word a script can test, and
    `errors` names each field's problems."""
    body = {
        "type": f"urn:omniweb:problem:{code}",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
        "errors": errors or {},
    }
    response = HttpResponse(
        json.dumps(body), status=status, content_type="application/problem+json"
    )
    if retry_after is not None:
        response["Retry-After"] = str(retry_after)
    return response
