"""The team API under /api/v1/: the catalog, quotes, tasks, runs and the member's account, for
scripts holding a personal access token.

Built on django-ninja: the request and response schemas are typed once (schemas.py), and the
OpenAPI document and the docs page are made from them. Every start goes through the one submit
path (services.submit_order), every lookup starts from the token's member, so another member's
private task answers 404 here as on the pages. Errors are RFC 9457 problem documents.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import replace

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import IntegerField, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.http import Http404, HttpRequest, HttpResponse
from django.http.request import RawPostDataException
from django.urls import reverse
from ninja import Header, NinjaAPI, Query, Status
from ninja.errors import HttpError, ValidationError
from ninja.security import HttpBearer

from accounts.ledger import effective_quota, spending
from accounts.models import LedgerEntry
from generations import views as pages
from generations.api import auth, orders, schemas
from generations.api.problems import problem
from generations.gallery import SearchField
from generations.models import ModelPrice, Run, Task
from generations.providers import GenerationRequest, catalog
from generations.services import (
    Order,
    SubmitRefused,
    cancel_by_member,
    quote_order,
    retry_order,
    submit_order,
)


class OmniwebAPI(NinjaAPI):
    def get_openapi_schema(self, *args, **kwargs):
        """The generated document, with every error answer declared as what it is:
        application/problem+json."""
        schema = super().get_openapi_schema(*args, **kwargs)
        for item in schema.get("paths", {}).values():
            for operation in item.values():
                for status, answer in operation.get("responses", {}).items():
                    content = answer.get("content", {})
                    if int(status) >= 400 and "application/json" in content:
                        content["application/problem+json"] = content.pop("application/json")
        return schema


class TokenBearer(HttpBearer):
    """`Authorization: Bearer omw_…`: a personal access token, never a session."""

    def authenticate(self, request: HttpRequest, token: str):
        return auth.authenticate(request, token)


api = OmniwebAPI(
    title="Omniweb API",
    version="1",
    description=(
        "Generate videos and images through the team's gateways, with the team's keys, credits, "
        "quotas and gallery. Authenticate with a personal access token from your Profile page: "
        "`Authorization: Bearer omw_…`. Errors are `application/problem+json` (RFC 9457)."
    ),
    urls_namespace="api-v1",
    auth=TokenBearer(),
    docs_url="/docs",
    openapi_url="/openapi.json",
)

PROBLEMS = {status: schemas.Problem for status in (401, 403, 404, 422, 429)}
WRITE_PROBLEMS = {**PROBLEMS, 402: schemas.Problem, 409: schemas.Problem}

# How each refusal of the submit path is answered.
REFUSAL_STATUS = {
    "not_allowed": 403,
    "balance": 402,
    "rate_limited": 429,
    "quota": 429,
    "price": 409,
    "state": 409,
}


# --- Errors as problem documents -----------------------------------------------------------


@api.exception_handler(SubmitRefused)
def _refused(request, exc: SubmitRefused):
    status = REFUSAL_STATUS.get(exc.code, 422)
    return problem(status, exc.code, exc.message, exc.errors, retry_after=exc.retry_after)


@api.exception_handler(auth.TokenRateLimited)
def _rate_limited(request, exc: auth.TokenRateLimited):
    limit = settings.API_RATE_PER_MINUTE
    return problem(
        429,
        "token_rate_limited",
        f"This token made {limit} calls in the last minute, its limit; wait and try again.",
        retry_after=exc.retry_after,
    )


@api.exception_handler(auth.NotAuthenticated)
def _not_authenticated(request, exc):
    return _unauthorized()


def _unauthorized() -> HttpResponse:
    response = problem(
        401,
        "not_authenticated",
        "Send a valid personal access token: Authorization: Bearer omw_… . It may be "
        "expired or revoked; make one on your Profile page.",
    )
    response["WWW-Authenticate"] = 'Bearer realm="omniweb"'
    return response


@api.exception_handler(auth.ReadOnlyToken)
def _read_only(request, exc):
    return problem(
        403, "read_only_token", "This token is read only; make a read-and-generate token."
    )


@api.exception_handler(Http404)
def _not_found(request, exc):
    return problem(404, "not_found", "There is nothing here that you may see.")


@api.exception_handler(ValidationError)
def _invalid(request, exc: ValidationError):
    errors: dict[str, list[str]] = {}
    for error in exc.errors:
        # ("body", "body", "items", 0, "model") -> "items[0].model"; the source is dropped.
        where = [part for part in error.get("loc", ()) if part not in ("body", "query", "path")]
        name = ""
        for part in where:
            name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
        errors.setdefault(name or "request", []).append(error.get("msg", "Invalid."))
    return problem(422, "invalid", "Some fields need fixing.", errors)


@api.exception_handler(HttpError)
def _http_error(request, exc: HttpError):
    if exc.status_code == 401:
        return _unauthorized()
    return problem(exc.status_code, "bad_request", str(exc))


@api.exception_handler(RequestDataTooBig)
def _too_big(request, exc):
    megabytes = settings.DATA_UPLOAD_MAX_MEMORY_SIZE // (1024 * 1024)
    return problem(413, "too_large", f"A request may carry at most {megabytes} MB.")


@api.exception_handler(RawPostDataException)
def _unreadable(request, exc):
    return problem(400, "bad_request", "The request body could not be read.")


# --- The catalog, quotes and the member -----------------------------------------------------


@api.get("/models", response={200: list[schemas.ModelOut], **PROBLEMS}, tags=["catalog"])
def list_models(request):
    """Every model with its settings' allowed values and its price; `allowed` says whether
    your quota lets you use it."""
    prices = {(p.provider, p.model): p for p in ModelPrice.objects.all()}
    limits = effective_quota(request.user)
    return [
        {
            "id": spec.key,
            "gateway": spec.provider,
            "label": spec.label,
            "kind": spec.kind.value,
            "summary": spec.summary,
            "durations": list(spec.durations),
            "default_duration": spec.default_duration,
            "resolutions": list(spec.resolutions),
            "default_resolution": spec.default_resolution,
            "aspect_ratios": list(spec.aspect_ratios),
            "default_aspect_ratio": spec.default_aspect_ratio,
            "reference_image_counts": list(spec.image_counts),
            "price": _price(prices.get((spec.provider, spec.model))),
            "allowed": limits.allows(spec.provider, spec.model),
        }
        for spec in catalog.MODELS
    ]


def _price(price: ModelPrice | None) -> dict | None:
    if price is None:
        return None
    return {
        "unit": price.unit,
        "credits_per_unit": price.credits_per_unit,
        "resolution_multipliers": {k: float(v) for k, v in price.resolution_multipliers.items()},
    }


@api.post("/quote", response={200: schemas.QuoteOut, **WRITE_PROBLEMS}, tags=["catalog"])
def quote(request, body: schemas.QuoteIn):
    """The price of one request or of a run, checked as a submit would check it (settings,
    keys, quotas, balance), charging nothing."""
    stand_ins = tuple("https://example.invalid/" for _ in range(body.reference_images))
    order = Order(items=_items(request, body.items, stand_ins))
    outcome = quote_order(request.user, order)
    return {
        "items": [
            {
                "model": spec.key,
                "unit": price.unit,
                "credits_per_unit": price.credits_per_unit,
                "units": price.units,
                "multiplier": float(price.multiplier),
                "credits": price.total,
            }
            for _item, spec, price in outcome.items
        ],
        "total": outcome.total,
        "balance": outcome.balance,
        "balance_after": outcome.balance - outcome.total,
    }


@api.get("/me", response={200: schemas.MeOut, **PROBLEMS}, tags=["account"])
def me(request):
    """Your balance, what you spent against your limits, and the models you may use."""
    user = request.user
    limits = effective_quota(user)
    spent = spending(user)
    return {
        "username": user.username,
        "display_name": user.display_name,
        "balance": user.credit_balance,
        "spent_today": spent["today"],
        "spent_this_month": spent["month"],
        "active_tasks": Task.objects.owned_by(user).active().count(),
        "limits": {
            "max_active_tasks": limits.max_active_tasks,
            "max_credits_per_day": limits.max_credits_per_day,
            "max_credits_per_month": limits.max_credits_per_month,
            "max_tasks_per_run": limits.max_tasks_per_run,
            "submits_per_minute": settings.SUBMIT_RATE_PER_MINUTE,
            "api_calls_per_minute": settings.API_RATE_PER_MINUTE,
        },
        "allowed_models": [
            spec.key for spec in catalog.MODELS if limits.allows(spec.provider, spec.model)
        ],
        "token": request.api_token.name,
        "scope": request.api_token.scope,
    }


# --- Tasks ----------------------------------------------------------------------------------


def with_refunds(tasks):
    """Tasks with what the API shows of them, read in one statement plus one for results."""
    refund = LedgerEntry.objects.filter(task=OuterRef("pk"), kind=LedgerEntry.Kind.REFUND)
    return (
        tasks.select_related("run", "retry_of")
        .prefetch_related("results")
        .annotate(
            refunded=Coalesce(Subquery(refund.values("amount")[:1]), 0, output_field=IntegerField())
        )
    )


def site(request) -> str:
    """This site's address as the caller reached it, for the links in an answer."""
    return request.build_absolute_uri("/")[:-1]


def present(request, task) -> dict:
    return schemas.task_out(task, getattr(task, "refunded", 0), site(request))


def code_of(value: str) -> uuid.UUID:
    """A task's or run's code from the path; anything else is simply not found."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise Http404 from None


def visible_task(request, code: str) -> Task:
    task = with_refunds(Task.objects.visible_to(request.user)).filter(code=code_of(code)).first()
    if task is None:
        raise Http404
    return task


def own_task(request, code: str) -> Task:
    task = Task.objects.owned_by(request.user).filter(code=code_of(code)).first()
    if task is None:
        raise Http404
    return task


ITEM_FIELDS = {"model", "prompt", "duration", "resolution", "aspect_ratio", "key"}


def _items(request, items, urls: tuple[str, ...] = ()):
    """Order items of API generations; each item's problems are named by its place."""
    result, errors = [], {}
    for number, item in enumerate(items):
        where = f"items[{number}]." if len(items) > 1 else ""
        try:
            entry = orders.order_item(
                request.user, orders.ItemInput(**item.dict(include=ITEM_FIELDS)), urls, where=where
            )
        except SubmitRefused as refusal:
            if not refusal.errors or len(items) == 1:
                raise
            errors.update(refusal.errors)
            continue
        problems = _settings_problems(entry.request, len(urls))
        errors.update({f"{where}{name}": messages for name, messages in problems.items()})
        result.append(entry)
    if errors:
        raise SubmitRefused("Some fields need fixing.", errors, code="invalid")
    return tuple(result)


def _settings_problems(request: GenerationRequest, images: int) -> dict[str, list[str]]:
    """The catalog's objections to a request's settings, before the submit path's own check,
    so each item of a run is named in them."""
    stand_ins = ("data:image/png;base64,",) * images
    return catalog.validate(catalog.with_defaults(replace(request, reference_images=stand_ins)))


def _submit(request, body, generations, idempotency_key: str | None, name: str = ""):
    """The order a write call makes, through the one submit path: its generations, with the
    body's reference images and visibility, and a token from its Idempotency-Key."""
    auth.require_write(request)
    token = orders.idempotency_token(request.user, idempotency_key)
    images, urls = orders.reference_images(body.reference_images)
    items = _items(request, generations, urls)
    orders.check_reachable(items, images)
    order = Order(
        items=items,
        visibility=body.visibility,
        images=images,
        token=token,
        actor="api",
        note=f"submitted through the API ({request.api_token.name})"[:200],
        name=name,
    )
    return submit_order(request.user, order)


@api.post(
    "/tasks",
    response={200: schemas.TaskOut, 201: schemas.TaskOut, **WRITE_PROBLEMS, 413: schemas.Problem},
    tags=["tasks"],
)
def create_task(
    request,
    body: schemas.TaskIn,
    idempotency_key: str | None = Header(default=None, alias="Idempotency-Key"),
):
    """Start one task: charged now, refunded if it fails. Reference images are https addresses
    or data:image/...;base64, URIs (PNG, JPEG, WebP; up to 10 MB each). The same
    Idempotency-Key returns the first answer again (200) and charges nothing."""
    outcome = _submit(request, body, [body], idempotency_key)
    task = with_refunds(Task.objects.filter(pk=outcome.tasks[0].pk)).get()
    return Status(201 if outcome.created else 200, present(request, task))


@api.get("/tasks", response={200: schemas.TaskPage, **PROBLEMS}, tags=["tasks"])
def list_tasks(request, filters: Query[schemas.TaskFilters]):
    """Your tasks, newest first, a page at a time (pass `next_cursor` back as `cursor`),
    filtered as on My tasks: by state, gateway, kind, run and words of the prompt."""
    tasks = Task.objects.owned_by(request.user)
    if filters.state:
        tasks = tasks.filter(state=filters.state)
    if filters.gateway:
        tasks = tasks.filter(provider=filters.gateway)
    if filters.kind:
        tasks = tasks.filter(kind=filters.kind)
    if filters.run:
        tasks = tasks.filter(run__code=filters.run)
    if filters.q:
        try:
            words = SearchField().clean(filters.q)
        except DjangoValidationError as error:
            raise SubmitRefused(error.messages[0], {"q": error.messages}, code="invalid") from None
        if words:
            tasks = tasks.search(words)
    if filters.cursor:
        tasks = tasks.filter(pk__lt=_cursor_position(filters.cursor))
    page = list(with_refunds(tasks).order_by("-pk")[: filters.limit + 1])
    more = len(page) > filters.limit
    page = page[: filters.limit]
    return {
        "data": [present(request, task) for task in page],
        "next_cursor": _cursor(page[-1].pk) if more else None,
    }


def _cursor(pk: int) -> str:
    return base64.urlsafe_b64encode(f"t{pk}".encode()).decode().rstrip("=")


def _cursor_position(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not text.startswith("t"):
            raise ValueError
        return int(text[1:])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise SubmitRefused(
            "That cursor is not one this API gave out.",
            {"cursor": ["Pass next_cursor from the previous page."]},
            code="invalid",
        ) from None


@api.get("/tasks/{code}", response={200: schemas.TaskOut, **PROBLEMS}, tags=["tasks"])
def get_task(request, code: str):
    """A task you may see (yours, or a teammate's team task): its state, progress, message,
    cost, refund and result links."""
    return present(request, visible_task(request, code))


@api.post("/tasks/{code}/cancel", response={200: schemas.TaskOut, **WRITE_PROBLEMS}, tags=["tasks"])
def cancel_task(request, code: str):
    """Cancel your unfinished task and refund it (once, however often this is called)."""
    auth.require_write(request)
    task = own_task(request, code)
    if not cancel_by_member(task, actor="api") and task.state != Task.State.CANCELED:
        task.refresh_from_db(fields=["state"])
        if task.state != Task.State.CANCELED:
            raise SubmitRefused(
                f"This task is {task.get_state_display().lower()}; it can no longer be canceled.",
                code="state",
            )
    return present(request, visible_task(request, code))


@api.post(
    "/tasks/{code}/retry",
    response={200: schemas.TaskOut, 201: schemas.TaskOut, **WRITE_PROBLEMS},
    tags=["tasks"],
)
def retry_task(
    request,
    code: str,
    idempotency_key: str | None = Header(default=None, alias="Idempotency-Key"),
):
    """Try a failed or canceled task of yours again, as a new task in the same run, charged
    like any submit."""
    auth.require_write(request)
    task = own_task(request, code)
    token = orders.idempotency_token(request.user, idempotency_key)
    outcome = submit_order(request.user, retry_order(task, token=token, actor="api"))
    new = with_refunds(Task.objects.filter(pk=outcome.tasks[0].pk)).get()
    return Status(201 if outcome.created else 200, present(request, new))


@api.get(
    "/tasks/{code}/results/{position}",
    response={200: None, 302: None, **PROBLEMS},
    url_name="task_result",
    tags=["tasks"],
)
def task_result(request, code: str, position: int, download: bool = False):
    """A result file, checked like the gallery's: the file itself, or a redirect to a link
    signed for a few minutes where media are in object storage."""
    task = visible_task(request, code)
    return pages.result_file(_as_page(request, download), task.code, position)


@api.get(
    "/tasks/{code}/results/{position}/poster",
    response={200: None, 302: None, **PROBLEMS},
    url_name="task_poster",
    tags=["tasks"],
)
def task_poster(request, code: str, position: int):
    """A video result's poster image (JPEG)."""
    task = visible_task(request, code)
    return pages.result_poster(_as_page(request, False), task.code, position)


def _as_page(request, download: bool):
    # The pages' file views read ?download; the API names it the same.
    request.GET = request.GET.copy()
    if download:
        request.GET["download"] = "1"
    else:
        request.GET.pop("download", None)
    return request


# --- Runs -----------------------------------------------------------------------------------


@api.post(
    "/runs",
    response={200: schemas.RunOut, 201: schemas.RunOut, **WRITE_PROBLEMS, 413: schemas.Problem},
    tags=["runs"],
)
def create_run(
    request,
    body: schemas.RunIn,
    idempotency_key: str | None = Header(default=None, alias="Idempotency-Key"),
):
    """Start a run: several tasks (variations, models, prompts) submitted, charged and refused
    together. `reference_images` go with every item."""
    outcome = _submit(request, body, body.items, idempotency_key, name=body.name.strip())
    return Status(201 if outcome.created else 200, run_out(request, outcome.run))


@api.get("/runs/{code}", response={200: schemas.RunOut, **PROBLEMS}, tags=["runs"])
def get_run(request, code: str):
    """A run you may see, with the tasks of it you may see."""
    run = Run.objects.visible_to(request.user).filter(code=code_of(code)).first()
    if run is None:
        raise Http404
    return run_out(request, run)


def run_out(request, run: Run) -> dict:
    tasks = list(with_refunds(Task.objects.visible_to(request.user).filter(run=run)).order_by("pk"))
    for task in tasks:
        task.run = run
    states = [task.state for task in tasks]
    return {
        "id": run.code,
        "name": run.name,
        "visibility": run.visibility,
        "created_at": run.created_at,
        "counts": {
            "total": len(tasks),
            "active": sum(state in Task.ACTIVE_STATES for state in states),
            "succeeded": states.count(Task.State.SUCCEEDED),
            "failed": states.count(Task.State.FAILED),
            "canceled": states.count(Task.State.CANCELED),
        },
        "credits_charged": sum(task.credits_charged for task in tasks),
        "credits_refunded": sum(task.refunded for task in tasks),
        "tasks": [present(request, task) for task in tasks],
        "web_url": schemas.absolute(reverse("generations-run", args=[run.code]), site(request)),
    }
