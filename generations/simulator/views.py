"""A stand-in for the four gateways, over real HTTP, for the demo and the tests.

Each gateway is served under /simulator/<gateway>/ with the paths, field names, envelopes,
status values and error answers of its document, and validates requests the way the document
says the gateway does. A task's state comes from the clock (queued, running, then finished after
SIMULATOR_SECONDS), and a finished task serves a real MP4 or PNG that shows the prompt.

Only this site's own keys get in (RELIABILITY 34): a request must carry, as its bearer key, the
secret of a key stored here whose gateway is the one called and whose base URL points at this
gateway's simulator (the demo's keys, or any key a member points at /simulator/). Anything else
answers 401 in the gateway's own error shape and creates nothing. Result-file links are signed,
like a gateway's CDN links, and the OmniaKey webhook only ever calls this site's own webhook
path under OMNIWEB_PUBLIC_URL.

Steering, for demos and tests:
- API keys containing "invalid" are refused (401); containing "broke", the account is empty
  (402, or Omni Video's `code: 0`).
- Prompt words: fail (the task fails), slow (five times longer), rate-limit / server-error /
  malformed (the first two status requests answer 429 with Retry-After, 500, or a body that is
  not JSON), expired (the result link has expired: 403 from the file URL).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import secrets
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connections, transaction
from django.db.models import F
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils import timezone
from django.utils.crypto import constant_time_compare, salted_hmac
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from accounts import crypto
from accounts.models import ProviderKey
from generations.simulator import media
from generations.simulator.models import BEHAVIOURS, SimulatedJob

logger = logging.getLogger(__name__)

OMNIAKEY_MAX = {"sora": 15, "runway-gen3": 10, "kling-1.5": 10, "pika-1.5": 5}
OMNIVIDEO_MODELS = {"seedance-2": False, "gpt-image-2": True, "nano-banana-2": True}
OMIXA_SIZES = ("1280x720", "720x1280", "1792x1024", "1024x1792")
# Small media: enough to see the prompt and to play, cheap to render.
SMALL = {"16:9": (320, 180), "9:16": (180, 320), "1:1": (240, 240)}
MISBEHAVING_CALLS = 2
OMIXA_MAX_WAIT = 10
# The webhook tokens Omniweb makes (URL-safe base64): one path segment, nothing else.
WEBHOOK_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


def _behaviours(prompt: str) -> list[str]:
    words = set(re.findall(r"[a-z]+(?:-[a-z]+)?", prompt.lower()))
    return [b for b in BEHAVIOURS if b in words]


def _token(request: HttpRequest) -> str | None:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer ") or not header[7:].strip():
        return None
    return header[7:].strip()


def is_simulator_key(token: str, gateway: str) -> bool:
    """RELIABILITY 34: whether `token` is the secret of a key stored on this site for `gateway`
    whose base URL points at that gateway's simulator. Outsiders know no such secret."""
    suffix = f"/simulator/{gateway}"
    candidates = ProviderKey.objects.filter(
        provider=gateway, secret_last4=token[-4:], base_url__contains=suffix
    ).values_list("base_url", "secret_ciphertext")
    found = False
    for base_url, ciphertext in candidates:
        if not urlsplit(base_url).path.rstrip("/").endswith(suffix):
            continue
        try:
            secret = crypto.decrypt(ciphertext)
        except crypto.DecryptionError:
            continue
        # Every candidate is compared, so the answer's timing says nothing about which matched.
        found |= hmac.compare_digest(secret.encode(), token.encode())
    return found


def _key_problem(request: HttpRequest, gateway: str) -> str | None:
    """ "refused" for a missing key, one that is not a simulator key of this site (RELIABILITY
    34) or one containing "invalid"; "empty" for an account with no balance (a key containing
    "broke"); None for a good key."""
    token = _token(request)
    if token is None or "invalid" in token or not is_simulator_key(token, gateway):
        return "refused"
    if "broke" in token:
        return "empty"
    return None


def _json_body(request: HttpRequest) -> dict[str, Any] | None:
    try:
        body = json.loads(request.body or b"null")
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _small_size(aspect_ratio: str | None = None, size: str | None = None) -> tuple[int, int]:
    if size:
        width, height = (int(part) for part in size.split("x"))
        scale = 320 / max(width, height)
        return int(width * scale) // 2 * 2, int(height * scale) // 2 * 2
    return SMALL.get(aspect_ratio or "16:9", SMALL["16:9"])


def _create(request: HttpRequest, gateway: str, prefix: str, **fields) -> SimulatedJob:
    behaviours = _behaviours(fields["prompt"])
    # Which key asked, as a gateway's own records would show it: the last four characters.
    fields["key_last4"] = (_token(request) or "")[-4:]
    run_seconds = float(settings.SIMULATOR_SECONDS) * (5 if "slow" in behaviours else 1)
    return SimulatedJob.objects.create(
        gateway=gateway,
        external_id=prefix + secrets.token_hex(6),
        behaviours=behaviours,
        run_seconds=max(run_seconds, 0.1),
        **fields,
    )


def _misbehave(job: SimulatedJob, error_body: dict[str, Any]) -> HttpResponse | None:
    """The first status requests of a task told to misbehave answer badly."""
    if not any(job.has(b) for b in ("rate-limit", "server-error", "malformed")):
        return None
    SimulatedJob.objects.filter(pk=job.pk).update(status_calls=F("status_calls") + 1)
    job.refresh_from_db(fields=["status_calls"])
    if job.status_calls > MISBEHAVING_CALLS:
        return None
    if job.has("rate-limit"):
        response = JsonResponse(error_body, status=429)
        response["Retry-After"] = "1"
        return response
    if job.has("server-error"):
        return HttpResponse("<html><h1>502 Bad Gateway</h1></html>", status=502)
    return HttpResponse("<html>upstream returned garbage", content_type="application/json")


def _site(request: HttpRequest) -> str:
    return request.build_absolute_uri("/").rstrip("/")


def _file_signature(gateway: str, external_id: str, extension: str) -> str:
    value = f"{gateway}/{external_id}.{extension}"
    return salted_hmac("omniweb.simulator.file", value).hexdigest()[:32]


def _file_url(site: str, job: SimulatedJob) -> str:
    """A signed link, like a gateway's CDN gives: only a key holder's status answer has it."""
    signature = _file_signature(job.gateway, job.external_id, job.extension)
    return f"{site}/simulator/{job.gateway}/files/{job.external_id}.{job.extension}?sig={signature}"


def _gateway_view(view):
    """Gateways are called by programs with bearer keys, never by browsers with sessions."""
    return login_not_required(csrf_exempt(view))


# --- OmniaKey (000) --------------------------------------------------------------------------


def _omniakey_error(status: int, message: str, kind: str) -> JsonResponse:
    return JsonResponse({"error": {"message": message, "type": kind}}, status=status)


def _omniakey_task(site: str, job: SimulatedJob) -> dict[str, Any]:
    phase = job.phase()
    body: dict[str, Any] = {
        "id": job.external_id,
        "status": {"queued": "pending", "running": "processing"}.get(phase, phase),
        "created": int(job.created_at.timestamp()),
        "model": job.model,
        "estimated_time": round(job.run_seconds),
    }
    if phase == "succeeded":
        body["status"] = "completed"
        body["output"] = {
            "url": _file_url(site, job),
            "duration": job.media_seconds,
            "resolution": f"{job.width}x{job.height}",
            "format": "mp4",
        }
    elif phase == "failed":
        body["error"] = {"message": "The simulator was asked to fail this video."}
    return body


def _omniakey_auth(request: HttpRequest) -> JsonResponse | None:
    problem = _key_problem(request, "omniakey")
    if problem == "refused":
        return _omniakey_error(401, "Invalid API key", "authentication_error")
    if problem == "empty":
        return _omniakey_error(402, "Insufficient balance", "payment_required")
    return None


@_gateway_view
@require_POST
def omniakey_create(request: HttpRequest) -> HttpResponse:
    if refused := _omniakey_auth(request):
        return refused
    body = _json_body(request)
    if body is None:
        return _omniakey_error(400, "The body must be a JSON object.", "invalid_request_error")
    model = body.get("model")
    if model not in OMNIAKEY_MAX:
        return _omniakey_error(
            400,
            f"Unknown model {model!r}. Options: sora, runway-gen3, kling-1.5, pika-1.5.",
            "invalid_request_error",
        )
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return _omniakey_error(400, "prompt is required.", "invalid_request_error")
    duration = body.get("duration", 5)
    if not isinstance(duration, int) or not 1 <= duration <= OMNIAKEY_MAX[model]:
        return _omniakey_error(
            400,
            f"duration must be 1-{OMNIAKEY_MAX[model]} seconds for {model}.",
            "invalid_request_error",
        )
    if body.get("resolution", "1080p") not in ("720p", "1080p"):
        return _omniakey_error(400, "resolution must be 720p or 1080p.", "invalid_request_error")
    aspect = body.get("aspect_ratio", "16:9")
    if aspect not in SMALL:
        return _omniakey_error(
            400, "aspect_ratio must be 16:9, 9:16 or 1:1.", "invalid_request_error"
        )
    width, height = _small_size(aspect)
    job = _create(
        request,
        "omniakey",
        "vtask-",
        model=model,
        prompt=prompt,
        media_seconds=duration,
        width=width,
        height=height,
        webhook_url=body.get("webhook_url") or "",
    )
    if job.webhook_url:
        site = _site(request)
        transaction.on_commit(lambda: _schedule_webhook(job.pk, site))
    return JsonResponse(_omniakey_task(_site(request), job))


@_gateway_view
@require_GET
def omniakey_task(request: HttpRequest, external_id: str) -> HttpResponse:
    if refused := _omniakey_auth(request):
        return refused
    job = SimulatedJob.objects.filter(gateway="omniakey", external_id=external_id).first()
    if job is None:
        return _omniakey_error(404, "Task not found.", "not_found")
    misbehaving = _misbehave(job, {"error": {"message": "Rate limit", "type": "rate_limit"}})
    return misbehaving or JsonResponse(_omniakey_task(_site(request), job))


def _schedule_webhook(job_pk: int, site: str) -> None:
    job = SimulatedJob.objects.get(pk=job_pk)
    delay = max(0.0, (job.finished_at - timezone.now()).total_seconds()) + 0.2
    timer = threading.Timer(delay, _send_webhook, args=(job_pk, site))
    timer.daemon = True
    timer.start()


def is_own_webhook(url: str) -> bool:
    """RELIABILITY 34: whether `url` is this site's own webhook (OMNIWEB_PUBLIC_URL, the
    webhook route, one token): the only address the simulator ever calls back."""
    if not settings.PUBLIC_URL:
        return False
    prefix = settings.PUBLIC_URL + reverse("generations-webhook", args=["-"]).removesuffix("-")
    if not url.startswith(prefix):
        return False
    return WEBHOOK_TOKEN.fullmatch(url[len(prefix) :]) is not None


def _send_webhook(job_pk: int, site: str) -> None:
    """POST the completion response to the task's webhook_url, as the document describes, when
    that is this site's own webhook; anything else is not called, and is logged."""
    try:
        job = SimulatedJob.objects.get(pk=job_pk)
        if not is_own_webhook(job.webhook_url):
            logger.warning(
                "event=simulator_webhook_refused job=%s host=%s",
                job_pk,
                urlsplit(job.webhook_url).netloc[:100] or "-",
            )
            return
        httpx.post(job.webhook_url, json=_omniakey_task(site, job), timeout=5)
    except Exception:  # a demo stand-in: log and move on, like a real gateway would
        logger.exception("simulator: webhook for job %s failed", job_pk)
    finally:
        connections.close_all()


# --- Omni Video (001) ------------------------------------------------------------------------


def _envelope(code: int, msg: str, data: Any = None, status: int = 200) -> JsonResponse:
    return JsonResponse({"code": code, "msg": msg, "data": data}, status=status)


def _omnivideo_auth(request: HttpRequest) -> JsonResponse | None:
    if _key_problem(request, "omnivideo") == "refused":
        return _envelope(401, "无效的 API Key", status=401)
    return None


def _omnivideo_credits(job: SimulatedJob) -> int:
    return 10 if job.is_image else 30


@_gateway_view
@require_POST
def omnivideo_create(request: HttpRequest) -> HttpResponse:
    if refused := _omnivideo_auth(request):
        return refused
    body = _json_body(request)
    if body is None:
        return _envelope(0, "请求格式错误")
    model = body.get("model_id")
    if model not in OMNIVIDEO_MODELS:
        return _envelope(0, f"不支持的模型: {model}")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return _envelope(0, "提示词不能为空")
    images = body.get("image_urls", [])
    if not isinstance(images, list) or not all(isinstance(u, str) for u in images):
        return _envelope(0, "image_urls 格式错误")
    if _key_problem(request, "omnivideo") == "empty":
        return _envelope(0, "积分不足,请充值")
    width, height = _small_size(body.get("aspect_ratio"))
    job = _create(
        request,
        "omnivideo",
        "",
        model=model,
        prompt=prompt,
        is_image=OMNIVIDEO_MODELS[model],
        width=width,
        height=height,
    )
    data = {
        "task_id": job.external_id,
        "request_id": "kie_" + secrets.token_hex(6),
        "credits": _omnivideo_credits(job),
    }
    return _envelope(200, "提交成功,等待生成", data)


@_gateway_view
@require_GET
def omnivideo_task(request: HttpRequest, external_id: str) -> HttpResponse:
    if refused := _omnivideo_auth(request):
        return refused
    job = SimulatedJob.objects.filter(gateway="omnivideo", external_id=external_id).first()
    if job is None:
        return _envelope(0, "任务不存在")
    if misbehaving := _misbehave(job, {"code": 429, "msg": "请求过于频繁"}):
        return misbehaving
    phase = job.phase()
    url = _file_url(_site(request), job) if phase == "succeeded" else None
    data = {
        "task_id": job.external_id,
        "task_status": {"queued": 1, "running": 2, "succeeded": 3, "failed": 4}[phase],
        "task_type": "image" if job.is_image else "video",
        "model_id": job.model,
        "image_url": url if job.is_image else None,
        "video_url": None if job.is_image else url,
        "audio_url": None,
        "credits": _omnivideo_credits(job),
        "created_at": int(job.created_at.timestamp()),
    }
    return _envelope(200, "生成失败: 模拟器按要求失败" if phase == "failed" else "ok", data)


# --- APIMart (002, 004) ----------------------------------------------------------------------


def _apimart_error(status: int, kind: str, message: str) -> JsonResponse:
    return JsonResponse(
        {"code": status, "error": {"code": status, "type": kind, "message": message}},
        status=status,
    )


def _apimart_auth(request: HttpRequest) -> JsonResponse | None:
    problem = _key_problem(request, "apimart")
    if problem == "refused":
        return _apimart_error(401, "authentication_error", "Invalid token")
    if problem == "empty":
        return _apimart_error(402, "payment_required", "Insufficient balance")
    return None


@_gateway_view
@require_POST
def apimart_create(request: HttpRequest) -> HttpResponse:
    if refused := _apimart_auth(request):
        return refused
    body = _json_body(request)
    if body is None:
        return _apimart_error(400, "invalid_request_error", "The JSON format is invalid.")
    if body.get("model") != "Omni-Flash-Ext":
        return _apimart_error(400, "invalid_request_error", "model must be Omni-Flash-Ext.")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return _apimart_error(400, "invalid_request_error", "prompt is empty.")
    duration = body.get("duration", 6)
    if duration not in (4, 6, 8, 10) or isinstance(duration, bool):
        return _apimart_error(
            400, "invalid_duration", f"invalid duration {duration}, must be one of 4/6/8/10"
        )
    resolution = body.get("resolution", "720p")
    if not isinstance(resolution, str) or resolution.lower() not in ("720p", "1080p", "4k"):
        return _apimart_error(
            400, "invalid_resolution", f"invalid resolution {resolution}, use 720p, 1080p or 4k"
        )
    aspect = body.get("aspect_ratio") or body.get("size") or "16:9"
    images = body.get("image_urls") or []
    if not isinstance(images, list) or len(images) == 2:
        return _apimart_error(
            400, "unsupported_image_count", f"{len(images)} images are not supported; use 0, 1 or 3"
        )
    width, height = _small_size(aspect)
    job = _create(
        request,
        "apimart",
        "task_01",
        model="Omni-Flash-Ext",
        prompt=prompt,
        media_seconds=duration,
        width=width,
        height=height,
    )
    return JsonResponse(
        {"code": 200, "data": [{"status": "submitted", "task_id": job.external_id}]}
    )


@_gateway_view
@require_GET
def apimart_task(request: HttpRequest, external_id: str) -> HttpResponse:
    if refused := _apimart_auth(request):
        return refused
    job = SimulatedJob.objects.filter(gateway="apimart", external_id=external_id).first()
    if job is None:
        return _apimart_error(404, "not_found", "task not found")
    if misbehaving := _misbehave(
        job, {"code": 429, "error": {"type": "rate_limit_error", "message": "Rate limit exceeded"}}
    ):
        return misbehaving
    phase = job.phase()
    data: dict[str, Any] = {
        "id": job.external_id,
        "status": {"queued": "submitted", "running": "processing"}.get(phase, phase),
        "progress": job.progress() if phase != "failed" else 100,
        "created": int(job.created_at.timestamp()),
        "estimated_time": round(job.run_seconds),
        "cost": round(job.media_seconds * 0.04, 2),
    }
    if phase in ("succeeded", "failed"):
        data["completed"] = int(job.finished_at.timestamp())
        data["actual_time"] = round(job.run_seconds)
    if phase == "succeeded":
        data["status"] = "completed"
        lifetime = -60 if job.has("expired") else 86400
        data["result"] = {
            "videos": [
                {
                    "url": [_file_url(_site(request), job)],
                    "expires_at": int(time.time()) + lifetime,
                }
            ]
        }
    elif phase == "failed":
        data["cost"] = 0
        data["error"] = {
            "message": "The simulator was asked to fail this task.",
            "code": "task_failed",
        }
    return JsonResponse({"code": 200, "data": data})


# --- Omixa (003) -----------------------------------------------------------------------------


def _omixa_error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


def _omixa_auth(request: HttpRequest) -> JsonResponse | None:
    problem = _key_problem(request, "omixa")
    if problem == "refused":
        return _omixa_error(401, "unauthorized", "Invalid workspace key")
    if problem == "empty":
        return _omixa_error(402, "insufficient_credits", "Workspace is out of credits")
    return None


def _omixa_job(site: str, job: SimulatedJob) -> dict[str, Any]:
    phase = job.phase()
    body: dict[str, Any] = {
        "id": job.external_id,
        "status": {"running": "in_progress", "succeeded": "completed"}.get(phase, phase),
        "model": job.model,
        "progress": job.progress() if phase != "failed" else 100,
    }
    if phase == "succeeded":
        body["video_url"] = _file_url(site, job)
    elif phase == "failed":
        body["error"] = {"message": "The simulator was asked to fail this job."}
    return body


@_gateway_view
@require_POST
def omixa_create(request: HttpRequest) -> HttpResponse:
    if refused := _omixa_auth(request):
        return refused
    body = _json_body(request)
    if body is None:
        return _omixa_error(400, "invalid_json", "The body must be a JSON object.")
    if body.get("model") != "sora":
        return _omixa_error(400, "invalid_model", "model must be sora.")
    if body.get("video_operation") != "text_to_video":
        return _omixa_error(400, "invalid_operation", "video_operation must be text_to_video.")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return _omixa_error(400, "invalid_prompt", "prompt is required.")
    seconds = body.get("seconds", 8)
    if seconds not in (4, 8, 12) or isinstance(seconds, bool):
        return _omixa_error(400, "invalid_seconds", "seconds must be 4, 8 or 12.")
    size = body.get("size", "1280x720")
    if size not in OMIXA_SIZES:
        return _omixa_error(400, "invalid_size", f"size must be one of {', '.join(OMIXA_SIZES)}.")
    width, height = _small_size(size=size)
    job = _create(
        request,
        "omixa",
        "job_",
        model="sora",
        prompt=prompt,
        media_seconds=seconds,
        width=width,
        height=height,
    )
    # wait_seconds: hold the request while the job may still finish within it.
    wait = body.get("wait_seconds", 0)
    if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > 0:
        remaining = (job.finished_at - timezone.now()).total_seconds()
        if remaining <= min(wait, OMIXA_MAX_WAIT):
            time.sleep(max(0.0, remaining) + 0.05)
    return JsonResponse(_omixa_job(_site(request), job))


@_gateway_view
@require_GET
def omixa_job(request: HttpRequest, external_id: str) -> HttpResponse:
    if refused := _omixa_auth(request):
        return refused
    job = SimulatedJob.objects.filter(gateway="omixa", external_id=external_id).first()
    if job is None:
        return _omixa_error(404, "not_found", "Job not found.")
    misbehaving = _misbehave(job, {"error": {"code": "rate_limited", "message": "Slow down"}})
    return misbehaving or JsonResponse(_omixa_job(_site(request), job))


# --- Result files, like a gateway's CDN ------------------------------------------------------


def _access_denied(message: str) -> HttpResponse:
    return HttpResponse(
        f"<Error><Code>AccessDenied</Code><Message>{message}</Message></Error>",
        status=403,
        content_type="application/xml",
    )


@_gateway_view
@require_GET
def result_file(request: HttpRequest, gateway: str, external_id: str, extension: str):
    expected = _file_signature(gateway, external_id, extension)
    if not constant_time_compare(request.GET.get("sig", ""), expected):
        return _access_denied("Signature does not match")
    job = get_object_or_404(SimulatedJob, gateway=gateway, external_id=external_id)
    if extension != job.extension or job.phase() != "succeeded":
        return HttpResponse("Not found", status=404, content_type="text/plain")
    if job.has("expired"):
        return _access_denied("Request has expired")
    name = f"simulator/{job.external_id}.{job.extension}"
    if not default_storage.exists(name):
        if job.is_image:
            data = media.render_png(job.prompt, job.width * 2, job.height * 2)
        else:
            data = media.render_mp4(job.prompt, job.media_seconds, job.width, job.height)
        name = default_storage.save(name, ContentFile(data))
    with default_storage.open(name) as handle:
        data = handle.read()
    response = HttpResponse(data, content_type="image/png" if job.is_image else "video/mp4")
    response["Content-Length"] = str(len(data))
    return response
