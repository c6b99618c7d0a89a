"""The Create page: write a prompt, pick a model, see the price, submit a paid task.

The page works as a plain form (POST, then a redirect to the task); with htmx the model's fields
and the price update in place and a submit answers with a fresh form plus the new task's card.
Charging happens only in services.submit_task; before it, a member's submits are limited to
SUBMIT_RATE_PER_MINUTE a minute (check_submit_rate). Uploaded reference images are stored in the
same transaction as the task, so a refused submit leaves nothing behind, and are served to the
gateways from an unguessable public URL (or sent inline where the gateway takes a data URI).
"""

from __future__ import annotations

import secrets
import uuid
from datetime import timedelta

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import (
    require_GET,
    require_http_methods,
    require_POST,
    require_safe,
)

from accounts.ledger import lock_user
from generations import services
from generations.cards import with_timing
from generations.forms import (
    DATA_URI_GATEWAYS,
    DEFAULT_SPEC,
    CheckedImage,
    CreateForm,
    initial_from,
    spec_for,
)
from generations.models import PriceMissing, ReferenceImage, Task, quote
from generations.providers import GenerationRequest, catalog

RECENT_TASKS = 12
PRICE_UNAVAILABLE = "The price shows once the duration, resolution and aspect ratio are valid."


# --- the price -------------------------------------------------------------------------------


def price_for(user, data) -> dict:
    """What the price partial shows for the posted values: a quote and the balance after it, or
    a short neutral note when the values do not make a price."""
    spec = spec_for(data.get("model"))
    if spec is None:
        return {"note": "Choose a model to see the price."}

    def offered(name: str, values) -> str | None:
        return (data.get(name) or None) if values else None

    try:
        duration = offered("duration", spec.durations)
        request = catalog.with_defaults(
            GenerationRequest(
                provider=spec.provider,
                model=spec.model,
                prompt="",
                duration=int(duration) if duration else None,
                resolution=offered("resolution", spec.resolutions),
                aspect_ratio=offered("aspect_ratio", spec.aspect_ratios),
            )
        )
    except ValueError:
        return {"note": PRICE_UNAVAILABLE}
    if {"duration", "resolution", "aspect_ratio"} & catalog.validate(request).keys():
        return {"note": PRICE_UNAVAILABLE}
    try:
        price = quote(request)
    except PriceMissing:
        return {"note": f"{spec.label} has no price yet; an admin has to set one."}
    balance = user.credit_balance
    return {
        "quote": price,
        "request": request,
        "balance": balance,
        "after": balance - price.total,
        "short": max(price.total - balance, 0),
    }


@require_POST
def create_price(request: HttpRequest) -> HttpResponse:
    return render(
        request, "generations/_price.html", {"price": price_for(request.user, request.POST)}
    )


# --- the model's fields ----------------------------------------------------------------------


@require_GET
def create_fields(request: HttpRequest) -> HttpResponse:
    """The fields the chosen model accepts, keeping the member's choices where they fit."""
    spec = spec_for(request.GET.get("model")) or DEFAULT_SPEC
    form = CreateForm(user=request.user, spec=spec, initial=initial_from(request.GET, spec))
    return render(
        request,
        "generations/_model_fields.html",
        {"form": form, "price": price_for(request.user, form.price_inputs())},
    )


# --- the page and the submit -----------------------------------------------------------------


def _render(
    request: HttpRequest, form: CreateForm, *, summary: str = "", card: Task | None = None
) -> HttpResponse:
    context = {
        "form": form,
        "price": price_for(request.user, form.price_inputs()),
        "summary": summary,
        "card": card,
    }
    # Only a submit answers with the bare form; a GET is always the whole page (deep links,
    # history restores).
    if request.htmx and request.method == "POST":
        return render(request, "generations/_create_form.html", context)
    context["recent"] = with_timing(
        Task.objects.owned_by(request.user).prefetch_related("results")[:RECENT_TASKS]
    )
    context["watching"] = any(task.is_active for task in context["recent"])
    context["simulator_enabled"] = settings.SIMULATOR_ENABLED
    return render(request, "generations/create.html", context)


@require_http_methods(["GET", "POST"])
def create(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _submit(request)
    initial = _reuse(request, request.GET["from"]) if request.GET.get("from") else {}
    spec = spec_for(request.GET.get("model") or initial.get("model")) or DEFAULT_SPEC
    return _render(request, CreateForm(user=request.user, spec=spec, initial=initial))


def _submit(request: HttpRequest) -> HttpResponse:
    spec = spec_for(request.POST.get("model")) or DEFAULT_SPEC
    if "show_fields" in request.POST:
        # Without JavaScript the model is changed by this button: show the new model's fields,
        # keeping what was typed. Nothing is submitted.
        initial = initial_from(request.POST, spec)
        return _render(request, CreateForm(user=request.user, spec=spec, initial=initial))

    form = CreateForm(request.POST, request.FILES, user=request.user, spec=spec)
    if not form.is_valid():
        return _render(request, form, summary="Some fields need fixing; see the notes below.")
    try:
        task, created = submit(request.user, form)
    except services.SubmitRefused as refusal:
        form.apply_refusal(refusal)
        return _render(request, form, summary=refusal.message)

    if created:
        messages.success(
            request,
            f"Submitted: {spec.label} task, {task.credits_charged} credits charged. "
            "It appears in your tasks and updates as it runs.",
        )
    else:
        messages.info(request, "This form was already submitted; nothing more was charged.")
    if not request.htmx:
        return redirect("generations-task", code=task.code)
    initial = initial_from(request.POST, spec)
    initial.update(prompt="", reference_urls="", form_token=uuid.uuid4())
    fresh = CreateForm(user=request.user, spec=spec, initial=initial)
    card = None
    if created:
        (card,) = with_timing([Task.objects.prefetch_related("results").get(pk=task.pk)])
    response = _render(request, fresh, card=card)
    # Wakes the page's card poller (which may have gone quiet with nothing active) once the
    # new card, with its .watch input, is on the page.
    response["HX-Trigger-After-Settle"] = "tasks-changed"
    return response


def submit(user, form: CreateForm) -> tuple[Task, bool]:
    """Pay for and create the task the valid `form` describes, storing its uploads with it.

    Raises services.SubmitRefused; then nothing is charged and nothing is stored.
    """
    data = form.cleaned_data
    spec = form.spec
    uploads: list[CheckedImage] = data.get("reference_files") or []
    tokens = [secrets.token_urlsafe(24) for _ in uploads]
    if spec.provider in DATA_URI_GATEWAYS:
        sent = tuple(image.data_uri for image in uploads)
    else:
        sent = tuple(reference_url(token) for token in tokens)
    saved: list[str] = []
    try:
        # One transaction: the job that sends the task is enqueued on commit, by which time the
        # reference images it points at are stored.
        with transaction.atomic():
            check_submit_rate(user, data["form_token"])
            task, created = services.submit_task(
                user, form.generation_request(sent), key=data["key"], token=data["form_token"]
            )
            if created:
                for token, image in zip(tokens, uploads, strict=True):
                    name = default_storage.save(
                        f"references/{token}.{image.extension}", ContentFile(image.data)
                    )
                    saved.append(name)
                    ReferenceImage.objects.create(
                        user=user,
                        token=token,
                        file=name,
                        content_type=image.content_type,
                        width=image.width,
                        height=image.height,
                        size=len(image.data),
                    )
                Task.objects.filter(pk=task.pk).update(visibility=data["visibility"])
                task.visibility = data["visibility"]
    except Exception:
        for name in saved:
            default_storage.delete(name)
        raise
    return task, created


def check_submit_rate(user, token: uuid.UUID | None) -> None:
    """Refuse a new submit once the member made SUBMIT_RATE_PER_MINUTE tasks in the last
    minute, so a stuck key or a script cannot flood a gateway. Call it inside the submit's
    transaction.

    The window rolls: it counts the member's tasks created in the 60 seconds before now, from
    the database every web process shares. Refused submits made no task, so they do not count;
    a resent form whose token already made a task is not a new submit and passes (services
    answers it with the first task, charging nothing).
    """
    if token is not None and Task.objects.filter(user=user, submit_token=token).exists():
        return
    # Two submits at once wait for each other here, so both cannot slip under the limit.
    lock_user(user.pk)
    limit = settings.SUBMIT_RATE_PER_MINUTE
    since = timezone.now() - timedelta(minutes=1)
    if Task.objects.filter(user=user, created_at__gt=since).count() >= limit:
        raise services.SubmitRefused(
            f"You have submitted {limit} tasks in the last minute, the limit; "
            "wait a moment and submit again."
        )


def reference_url(token: str) -> str:
    return f"{settings.PUBLIC_URL}{reverse('generations-reference', args=[token])}"


def _reuse(request: HttpRequest, value: str) -> dict:
    """The form's starting values copied from a task the member may see; uploads are not
    copied (they were the other task's), pasted image addresses are."""
    try:
        code = uuid.UUID(value)
    except ValueError:
        code = None
    task = Task.objects.visible_to(request.user).filter(code=code).first() if code else None
    if task is None:
        messages.info(request, "That task cannot be copied; the form starts empty.")
        return {}
    params = task.params or {}
    ours = reference_url("x")[:-1] if settings.PUBLIC_URL else None
    urls = [
        url
        for url in params.get("reference_images") or ()
        if isinstance(url, str)
        and url.startswith(("https://", "http://"))
        and not (ours and url.startswith(ours))
    ]
    initial = {
        "model": f"{task.provider}/{task.model}",
        "prompt": task.prompt,
        "reference_urls": "\n".join(urls),
    }
    for name in ("duration", "resolution", "aspect_ratio"):
        if params.get(name) is not None:
            initial[name] = str(params[name])
    return initial


# --- reference images for the gateways -------------------------------------------------------


@login_not_required  # gateways fetch it; the random token is the only credential
@require_safe
def reference_image(request: HttpRequest, token: str) -> HttpResponse | FileResponse:
    image = get_object_or_404(ReferenceImage, token=token)
    if settings.S3_BUCKET:
        # A private bucket: the gateway follows a redirect to a link signed for minutes.
        from generations.views import signed_redirect

        return signed_redirect(image.file, content_type=image.content_type)
    try:
        handle = image.file.open("rb")
    except FileNotFoundError:
        raise Http404("No such image.") from None
    response = FileResponse(handle, content_type=image.content_type)
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "public, max-age=86400"
    response["Content-Security-Policy"] = "default-src 'none'"
    return response
