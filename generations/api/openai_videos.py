"""An OpenAI-compatible facade for videos at /v1/videos, so tools that already speak the OpenAI
Videos API (the official `openai` package, LiteLLM) can use Omniweb as their base URL with an
Omniweb personal access token as the API key.

It is a translation and nothing more: OpenAI's fields become an order for the one submit path
(through `orders`), a task becomes OpenAI's Video object, and every refusal is answered in
OpenAI's error shape (`{"error": {"message", "type", "param", "code"}}`), never as a problem
document. Only the token's member's own video tasks exist here: another member's task, team
visible or not, and any image task answer 404, as a foreign id does at OpenAI.

`size` ("WxH") is mapped through the catalog: for a model whose resolutions are sizes (Omixa)
the size is the resolution; for one with named resolutions (720p, 1080p, 4k) and aspect ratios
it stands for both (1280x720 is 720p at 16:9); for one with aspect ratios only, the 720p row of
sizes stands for its ratios and the gateway picks the pixels. Any other size is refused.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from accounts.ledger import effective_quota
from accounts.models import ProviderKey
from generations import views as pages
from generations.api import auth, orders
from generations.forms import check_image
from generations.models import Task
from generations.providers import Kind, catalog
from generations.services import DATA_URI_GATEWAYS, Order, SubmitRefused, delete_task, submit_order

# Omniweb's states as OpenAI's four. Explicit: a state missing here is a bug to see (KeyError),
# not a video silently shown as queued.
STATUS = {
    Task.State.QUEUED: "queued",
    Task.State.SUBMITTED: "in_progress",
    Task.State.RUNNING: "in_progress",
    Task.State.FETCHING: "in_progress",
    Task.State.NEEDS_REVIEW: "in_progress",
    Task.State.SUCCEEDED: "completed",
    Task.State.FAILED: "failed",
    Task.State.CANCELED: "failed",
}

# The model used when a request names none: Sora through Omixa takes OpenAI's own seconds and
# sizes, so a script written for OpenAI works unchanged. Failing that, the first video model the
# member may use and has a key for.
PREFERRED_DEFAULT = "omixa/sora"

# Pixels on the short side of each named resolution.
SHORT_SIDES = {"480p": 480, "720p": 720, "1080p": 1080, "4k": 2160}
# The row of sizes that stands for a model's aspect ratios when it takes no resolution.
RATIO_ONLY_SHORT_SIDE = 720

# The submit path names fields as Omniweb does; OpenAI's callers know them by these names.
PARAMS = {
    "duration": "seconds",
    "resolution": "size",
    "aspect_ratio": "size",
    "reference_images": "input_reference",
    "Idempotency-Key": "Idempotency-Key",
    "prompt": "prompt",
    "model": "model",
    "key": "model",
    "visibility": "visibility",
}

# How each refusal of the submit path is answered: (HTTP status, error type, error code).
# Not enough credits is OpenAI's own 429 `insufficient_quota`, which OpenAI's clients already
# recognise; it is marked not to be retried, as waiting does not add credits.
REFUSALS = {
    "invalid": (400, "invalid_request_error", "invalid_value"),
    "key": (400, "invalid_request_error", "no_usable_key"),
    "price": (400, "invalid_request_error", "model_not_priced"),
    "not_allowed": (403, "permission_error", "model_not_allowed"),
    "balance": (429, "insufficient_quota", "insufficient_quota"),
    "rate_limited": (429, "rate_limit_error", "rate_limit_exceeded"),
    "quota": (429, "rate_limit_error", "quota_exceeded"),
}

# OpenAI's clients wait out a Retry-After only up to about a minute; a longer limit (a day's
# spending) is answered as one not to retry at all.
LONGEST_RETRY_SECONDS = 60
LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX = 20, 100


class OpenAIError(Exception):
    """A refusal answered in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
        retry_after: int | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind, self.retry_after = kind, retry_after

    def response(self) -> JsonResponse:
        body = {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }
        response = JsonResponse(body, status=self.status)
        if self.retry_after is not None:
            response["Retry-After"] = str(self.retry_after)
        if self.status == 429 and (
            self.retry_after is None or self.retry_after > LONGEST_RETRY_SECONDS
        ):
            response["x-should-retry"] = "false"
        if self.status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="omniweb"'
        return response


def invalid(message: str, param: str, code: str = "invalid_value") -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def refused(refusal: SubmitRefused) -> OpenAIError:
    status, kind, code = REFUSALS.get(refusal.code, (400, "invalid_request_error", refusal.code))
    field = next(iter(refusal.errors), None)
    message = refusal.message
    if refusal.errors:
        # The field's own words say more than the summary.
        details = " ".join(refusal.errors[field])
        message = details if message == "Some fields need fixing." else f"{message} {details}"
    param = PARAMS.get(field, field) if field else ("model" if refusal.code == "key" else None)
    return OpenAIError(
        status, message, param=param, code=code, kind=kind, retry_after=refusal.retry_after
    )


NOT_FOUND = "No video with that id exists for this API key's member."


def facade(**handlers):
    """A view answering the methods in `handlers` (lower-case names) for a token's member,
    every refusal in OpenAI's error shape. The session is never consulted, so there is no CSRF
    to check: a request that carries no token is refused."""

    @csrf_exempt
    def view(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        handler = handlers.get(request.method.lower())
        try:
            if handler is None:
                allowed = ", ".join(sorted(name.upper() for name in handlers))
                raise OpenAIError(
                    405,
                    f"{request.method} is not supported here; use {allowed}.",
                    code="method_not_allowed",
                )
            auth.authenticate(request, auth.bearer(request))
            return handler(request, *args, **kwargs)
        except OpenAIError as error:
            return error.response()
        except SubmitRefused as refusal:
            return refused(refusal).response()
        except auth.NotAuthenticated:
            return OpenAIError(
                401,
                "Incorrect API key provided. Use an Omniweb personal access token (omw_…) from "
                "your Profile page; it may be expired or revoked.",
                code="invalid_api_key",
            ).response()
        except auth.ReadOnlyToken:
            return OpenAIError(
                403,
                "This token is read only; make a read-and-generate token to create or delete "
                "videos.",
                kind="permission_error",
                code="read_only_token",
            ).response()
        except auth.TokenRateLimited as limited:
            return OpenAIError(
                429,
                f"This token made {settings.API_RATE_PER_MINUTE} calls in the last minute, its "
                "limit; wait and try again.",
                kind="rate_limit_error",
                code="rate_limit_exceeded",
                retry_after=limited.retry_after,
            ).response()
        except Http404:
            return OpenAIError(404, NOT_FOUND, code="not_found").response()
        except RequestDataTooBig:
            megabytes = settings.DATA_UPLOAD_MAX_MEMORY_SIZE // (1024 * 1024)
            return OpenAIError(
                413,
                f"A request may carry at most {megabytes} MB; upload a large image as a file.",
                code="request_too_large",
            ).response()

    return view


# --- Sizes and seconds ----------------------------------------------------------------------


def _ratio(value: str) -> tuple[int, int]:
    width, _, height = value.partition(":")
    return int(width), int(height)


def sizes(spec: catalog.ModelSpec) -> dict[str, tuple[str | None, str | None]]:
    """Every size `spec` accepts, "WxH" -> the (resolution, aspect ratio) it stands for."""
    if spec.resolutions and all("x" in value for value in spec.resolutions):
        return {value: (value, None) for value in spec.resolutions}
    rows = spec.resolutions or (None,)
    table: dict[str, tuple[str | None, str | None]] = {}
    for resolution in rows:
        short = SHORT_SIDES.get(resolution.lower()) if resolution else RATIO_ONLY_SHORT_SIDE
        if short is None:
            continue
        for ratio in spec.aspect_ratios:
            across, down = _ratio(ratio)
            if across >= down:
                width, height = short * across // down, short
            else:
                width, height = short, short * down // across
            table[f"{width}x{height}"] = (resolution, ratio)
    return table


def _listed(values: list[str]) -> str:
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " or " + values[-1]


def settings_for_size(spec: catalog.ModelSpec, size: str) -> tuple[str | None, str | None]:
    """(resolution, aspect ratio) for an OpenAI size, or a 400 naming the sizes allowed."""
    table = sizes(spec)
    value = size.strip().lower()
    if value in table:
        return table[value]
    if not table:
        raise invalid(f"{spec.label} takes no size; leave `size` out.", "size")
    raise invalid(
        f"{spec.label} makes {_listed(list(table))}; {size!r} is not one of them.",
        "size",
    )


def size_of(task: Task, result=None) -> str:
    """The size a task was asked for, as OpenAI writes it."""
    spec = task.spec
    resolution = task.params.get("resolution")
    ratio = task.params.get("aspect_ratio")
    if spec is not None:
        for size, (row, row_ratio) in sizes(spec).items():
            if (row or "").lower() == (resolution or "").lower() and row_ratio == ratio:
                return size
    if result is not None and result.width and result.height:
        return f"{result.width}x{result.height}"
    return ""


def seconds_of(task: Task, result=None) -> str:
    """The length a task was asked for; for a model that picks its own, the stored result's
    (rounded), or "0" until there is one."""
    duration = task.params.get("duration")
    if duration is not None:
        return str(duration)
    if result is not None and result.duration:
        return str(round(result.duration))
    return "0"


def seconds_from(value) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise invalid(
        f'`seconds` must be a whole number of seconds, like "8"; got {value!r}.', "seconds"
    )


# --- The Video object -----------------------------------------------------------------------


def _unix(moment) -> int | None:
    return int(moment.timestamp()) if moment else None


def video_object(task: Task) -> dict:
    """A task as OpenAI's Video object (openai.types.Video)."""
    status = STATUS[task.state]
    results = list(task.results.all())
    result = results[0] if results else None
    error = None
    if task.state == Task.State.FAILED:
        error = {"code": "generation_failed", "message": task.message or "The generation failed."}
    elif task.state == Task.State.CANCELED:
        error = {"code": "canceled", "message": task.message or "The video was canceled."}
    return {
        "id": str(task.code),
        "object": "video",
        "model": f"{task.provider}/{task.model}",
        "status": status,
        "progress": 100 if status == "completed" else min(100, task.progress or 0),
        "created_at": _unix(task.created_at),
        "completed_at": _unix(task.finished_at) if status in ("completed", "failed") else None,
        "expires_at": None,
        "prompt": task.prompt,
        "seconds": seconds_of(task, result),
        "size": size_of(task, result),
        "error": error,
        "remixed_from_video_id": None,
    }


def own_videos(request):
    return Task.objects.owned_by(request.user).filter(kind=Kind.VIDEO).prefetch_related("results")


def own_video(request, video_id: str) -> Task:
    try:
        code = uuid.UUID(video_id)
    except ValueError:
        raise Http404 from None
    task = own_videos(request).filter(code=code).first()
    if task is None:
        raise Http404
    return task


# --- Create ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoInput:
    """The fields of a create request, however they came (JSON or a multipart form)."""

    prompt: object
    model: object
    seconds: object
    size: object
    visibility: object
    references: tuple[str, ...]  # https addresses or data URIs
    upload: object  # an uploaded file, or None


def read_input(request: HttpRequest) -> VideoInput:
    if request.content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = request.POST
        upload = request.FILES.get("input_reference")
        # The SDK sends a reference object {"image_url": ...} as input_reference[image_url].
        reference = form.get("input_reference[image_url]") or form.get("input_reference")
        if form.get("input_reference[file_id]"):
            raise _no_file_ids()
        return VideoInput(
            prompt=form.get("prompt"),
            model=form.get("model"),
            seconds=form.get("seconds"),
            size=form.get("size"),
            visibility=form.get("visibility"),
            references=(reference,) if reference else (),
            upload=upload,
        )
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise OpenAIError(
            400, "We could not parse the JSON body of your request.", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise OpenAIError(400, "The request body must be a JSON object.", code="invalid_json")
    reference = body.get("input_reference")
    if isinstance(reference, dict):
        if reference.get("file_id"):
            raise _no_file_ids()
        reference = reference.get("image_url")
    if reference is not None and not isinstance(reference, str):
        raise invalid(
            "`input_reference` must be an https address, a data:image/...;base64, URI, or "
            '{"image_url": ...}.',
            "input_reference",
        )
    return VideoInput(
        prompt=body.get("prompt"),
        model=body.get("model"),
        seconds=body.get("seconds"),
        size=body.get("size"),
        visibility=body.get("visibility"),
        references=(reference,) if reference else (),
        upload=None,
    )


def _no_file_ids() -> OpenAIError:
    return invalid(
        "Omniweb has no files API; send the image itself, or an https address or data URI as "
        "input_reference.",
        "input_reference",
        "unsupported_value",
    )


def default_model(user) -> catalog.ModelSpec:
    """The model a request without `model` gets: one the member may use and has a key for."""
    limits = effective_quota(user)
    videos = [spec for spec in catalog.MODELS if spec.kind == Kind.VIDEO]
    videos.sort(key=lambda spec: spec.key != PREFERRED_DEFAULT)
    for spec in videos:
        if limits.allows(spec.provider, spec.model) and (
            ProviderKey.objects.choices_for(user, spec.provider).exists()
        ):
            return spec
    raise invalid(
        "You have no video model to use: name one as model=<gateway>/<model> "
        "(GET /api/v1/models lists them) and add a key for its gateway.",
        "model",
        "model_not_found",
    )


def video_spec(request, value) -> catalog.ModelSpec:
    if value is None or value == "":
        return default_model(request.user)
    if not isinstance(value, str):
        raise invalid("`model` must be a string like apimart/Omni-Flash-Ext.", "model")
    spec = catalog.get(*value.partition("/")[::2])
    if spec is None:
        raise invalid(
            f"There is no model {value!r}; write it as <gateway>/<model>, e.g. "
            f"{PREFERRED_DEFAULT} (GET /api/v1/models lists them).",
            "model",
            "model_not_found",
        )
    if spec.kind != Kind.VIDEO:
        raise invalid(
            f"{spec.label} makes images, and /v1/videos makes videos; use /api/v1/tasks for "
            "images.",
            "model",
            "model_not_video",
        )
    return spec


def reference_images(spec: catalog.ModelSpec, data: VideoInput):
    """(checked images, https addresses) for the order, or a 400 on input_reference."""
    checked, urls = orders.reference_images(list(data.references), field="input_reference")
    if data.upload is not None:
        try:
            checked = (*checked, check_image(data.upload))
        except ValidationError as exc:
            raise invalid(" ".join(exc.messages), "input_reference") from None
    if checked and spec.provider not in DATA_URI_GATEWAYS and not settings.PUBLIC_URL:
        # This gateway fetches images from our public address, and the site has none.
        raise invalid(
            f"{spec.label} fetches reference images from this site's public address, which is "
            "not set; send an https address instead.",
            "input_reference",
            "unsupported_value",
        )
    return checked, urls


def create_video(request: HttpRequest) -> JsonResponse:
    """POST /v1/videos: start one video, charged now and refunded if it fails."""
    auth.require_write(request)
    data = read_input(request)
    if not isinstance(data.prompt, str) or not data.prompt.strip():
        raise invalid("Write a prompt: describe what you want to see.", "prompt", "missing")
    visibility = data.visibility or Task.Visibility.TEAM
    if visibility not in Task.Visibility.values:
        raise invalid("`visibility` is team or private.", "visibility")
    token = orders.idempotency_token(
        request.user, request.headers.get("Idempotency-Key"), scope="openai"
    )
    spec = video_spec(request, data.model)
    duration = seconds_from(data.seconds)
    resolution = aspect_ratio = None
    if data.size not in (None, ""):
        if not isinstance(data.size, str):
            raise invalid('`size` is written WIDTHxHEIGHT, like "1280x720".', "size")
        resolution, aspect_ratio = settings_for_size(spec, data.size)
    checked, urls = reference_images(spec, data)
    item = orders.ItemInput(
        model=spec.key,
        prompt=data.prompt,
        duration=duration,
        resolution=resolution,
        aspect_ratio=aspect_ratio,
    )
    order = Order(
        items=(orders.order_item(request.user, item, urls),),
        visibility=visibility,
        images=checked,
        token=token,
        actor="api",
        note=f"submitted through the OpenAI-compatible API ({request.api_token.name})"[:200],
    )
    outcome = submit_order(request.user, order)
    # By pk alone: a repeated Idempotency-Key finds its task even if it was deleted since.
    task = Task.objects.prefetch_related("results").get(pk=outcome.tasks[0].pk)
    return JsonResponse(video_object(task))


# --- Read, list, download, delete -----------------------------------------------------------


def retrieve_video(request: HttpRequest, video_id: str) -> JsonResponse:
    return JsonResponse(video_object(own_video(request, video_id)))


def list_videos(request: HttpRequest) -> JsonResponse:
    """GET /v1/videos: the member's videos, newest first unless order=asc, `limit` a page."""
    limit = request.GET.get("limit", str(LIST_LIMIT_DEFAULT))
    if not limit.isdigit() or not 1 <= int(limit) <= LIST_LIMIT_MAX:
        raise invalid(f"`limit` is a number from 1 to {LIST_LIMIT_MAX}.", "limit")
    limit = int(limit)
    order = request.GET.get("order", "desc")
    if order not in ("asc", "desc"):
        raise invalid("`order` is asc or desc.", "order")
    tasks = own_videos(request)
    after = request.GET.get("after")
    if after:
        try:
            position = own_video(request, after).pk
        except Http404:
            raise invalid("`after` must be the id of one of your videos.", "after") from None
        tasks = tasks.filter(pk__gt=position) if order == "asc" else tasks.filter(pk__lt=position)
    page = list(tasks.order_by("pk" if order == "asc" else "-pk")[: limit + 1])
    more = len(page) > limit
    data = [video_object(task) for task in page[:limit]]
    return JsonResponse(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": more,
        }
    )


def video_content(request: HttpRequest, video_id: str):
    """GET /v1/videos/{id}/content: the video (or its poster, variant=thumbnail), checked like
    the gallery's files: the bytes, or a redirect to a short-lived signed link."""
    variant = request.GET.get("variant", "video")
    if variant not in ("video", "thumbnail", "spritesheet"):
        raise invalid("`variant` is video, thumbnail or spritesheet.", "variant")
    task = own_video(request, video_id)
    if task.state != Task.State.SUCCEEDED:
        raise OpenAIError(
            404,
            f"This video is {STATUS[task.state].replace('_', ' ')}; its content is available "
            "once it is completed.",
            code="not_found",
        )
    if variant == "spritesheet":
        raise OpenAIError(404, "Omniweb makes no spritesheets.", code="not_found")
    result = task.results.all()[:1]
    if not result:
        raise Http404
    view = pages.result_poster if variant == "thumbnail" else pages.result_file
    # Never an attachment: the pages' file view reads ?download, which is no OpenAI parameter.
    request.GET = request.GET.copy()
    request.GET.pop("download", None)
    return view(request, task.code, result[0].position)


def delete_video(request: HttpRequest, video_id: str) -> JsonResponse:
    """DELETE /v1/videos/{id}: delete a finished video of the member's (as its page does)."""
    auth.require_write(request)
    task = own_video(request, video_id)
    if not delete_task(task):
        raise invalid(
            "This video is still being made; wait for it to finish, or cancel it first "
            f"(POST /api/v1/tasks/{task.code}/cancel).",
            "video_id",
            "video_not_finished",
        )
    return JsonResponse({"id": str(task.code), "object": "video.deleted", "deleted": True})


videos = facade(get=list_videos, post=create_video)
video = facade(get=retrieve_video, delete=delete_video)
content = facade(get=video_content)
