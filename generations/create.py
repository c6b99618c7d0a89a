"""The Create page: write a prompt, pick a model, see the price, submit a paid task.

The page works as a plain form (POST, then a redirect to the task); with htmx the model's fields
and the price update in place and a submit answers with a fresh form plus the new task's card.
The view only turns the form into an order (services.submit_order checks the rate, quotas and
balance, charges, and stores the reference images with the task, all or nothing) and shows the
outcome. Reference images are served to the gateways from an unguessable public URL while
their task is active (or sent inline where the gateway takes a data URI).
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import (
    require_GET,
    require_http_methods,
    require_POST,
    require_safe,
)

from generations import presets, services
from generations.cards import run_task_counts, with_timing
from generations.forms import (
    DEFAULT_SPEC,
    MAX_CARRIED,
    MAX_VARIATIONS,
    CreateForm,
    carried_references,
    find_carried,
    initial_from,
    option_values,
    spec_for,
)
from generations.models import PriceMissing, ReferenceImage, Task, price_list, quote
from generations.providers import GenerationRequest, catalog

RECENT_TASKS = 12
PRICE_UNAVAILABLE = "The price shows once the duration, resolution and aspect ratio are valid."


# --- the price -------------------------------------------------------------------------------


def priced_request(spec, data) -> GenerationRequest | None:
    """The request whose price `data` asks for on `spec` (its settings that the model has,
    defaults for the rest), or None when they do not make a price yet."""
    values = {name: value or None for name, value in option_values(spec, data).items()}
    try:
        duration = int(values["duration"]) if values["duration"] else None
    except ValueError:
        return None
    request = catalog.with_defaults(
        GenerationRequest(
            provider=spec.provider,
            model=spec.model,
            prompt="",
            duration=duration,
            resolution=values["resolution"],
            aspect_ratio=values["aspect_ratio"],
        )
    )
    if {"duration", "resolution", "aspect_ratio"} & catalog.validate(request).keys():
        return None
    return request


def price_for(user, data, prices: dict | None = None) -> dict:
    """What the price partial shows for the posted values: a quote and the balance after it, or
    a short neutral note when the values do not make a price. With variations or more models
    to try on, the whole run's price, one line per model. `prices` are prices this request
    has read already (a submit's), used where they hold every model's."""
    spec = spec_for(data.get("model"))
    if spec is None:
        return {"note": "Choose a model to see the price."}
    try:
        variations = min(max(int(data.get("variations") or 1), 1), MAX_VARIATIONS)
    except ValueError:
        variations = 1
    also = []
    if hasattr(data, "getlist"):
        also = [spec_for(value) for value in dict.fromkeys(data.getlist("also"))]
        also = [other for other in also if other is not None and other != spec]
    requests = {model: priced_request(model, data) for model in [spec, *also]}
    if requests[spec] is None:
        return {"note": PRICE_UNAVAILABLE}
    wanted = [request for request in requests.values() if request is not None]
    if not prices or any((r.provider, r.model) not in prices for r in wanted):
        prices = price_list(wanted)
    lines = []
    for model, request in requests.items():
        if request is None:
            lines.append({"spec": model, "note": "its settings above are not valid for it"})
            continue
        try:
            price = quote(request, prices)
        except PriceMissing:
            if model == spec:
                return {"note": f"{spec.label} has no price yet; an admin has to set one."}
            lines.append({"spec": model, "note": "no price is set for it yet"})
            continue
        lines.append(
            {
                "spec": model,
                "quote": price,
                "request": request,
                "subtotal": price.total * variations,
            }
        )
    balance = user.credit_balance
    total = sum(line.get("subtotal", 0) for line in lines)
    return {
        "quote": lines[0]["quote"],
        "request": lines[0]["request"],
        "balance": balance,
        "after": balance - total,
        "short": max(total - balance, 0),
        "total": total,
        "variations": variations,
        # Itemised only when there is more than one task.
        "lines": lines if len(lines) > 1 or variations > 1 else [],
        "count": variations * len(lines),
        "complete": all("quote" in line for line in lines),
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
    request: HttpRequest,
    form: CreateForm,
    *,
    summary: str = "",
    cards: list[Task] = (),
    prices: dict | None = None,
    saving=None,
    picker: bool = False,
    partial: bool | None = None,
) -> HttpResponse:
    # The order the create form shows its fields in (the form declares some in another order).
    shown = (
        "prompt",
        "model",
        "duration",
        "resolution",
        "aspect_ratio",
        "carried",
        "reference_files",
        "reference_urls",
        "variations",
        "also",
        "key",
        "visibility",
    )
    context = {
        "form": form,
        "price": price_for(request.user, form.price_inputs(), prices),
        "summary": summary,
        # The fields with errors, in the order the page shows them: the summary at the top of
        # the form lists each with a link to it (the token's error is the summary's own text).
        "problems": [
            form[name]
            for name in dict.fromkeys((*shown, *form.fields))
            if name in form.fields and name != "form_token" and form.has_error(name)
        ],
        # Newest first on the page: each is put at the top in turn, so the run's first ends up
        # first.
        "cards": list(reversed(cards)),
        # The "Save as preset" fields as posted (with their problems), when they were used.
        "saving": saving or presets.Saving(),
    }
    # Only a submit answers with the bare form; a GET is always the whole page (deep links,
    # history restores), except the preset picker's own request.
    if partial is None:
        partial = bool(request.htmx) and request.method == "POST"
    if partial:
        if picker:
            # A preset was just saved: the picker above the form shows it too.
            context["preset_groups"] = presets.picker_groups(request.user)
            context["picker_oob"] = True
        return render(request, "generations/_create_form.html", context)
    # The full page only: the presets to pick from and the member's recent prompts.
    context["preset_groups"] = presets.picker_groups(request.user)
    context["recent_prompts"] = presets.recent_prompts(request.user)
    recent = run_task_counts(Task.objects.owned_by(request.user)).prefetch_related("results")
    context["recent"] = with_timing(recent[:RECENT_TASKS])
    context["watching"] = any(task.is_active for task in context["recent"])
    context["simulator_enabled"] = settings.SIMULATOR_ENABLED
    return render(request, "generations/create.html", context)


def render_form(request: HttpRequest, form: CreateForm, **options) -> HttpResponse:
    """The create form alone for htmx (the preset picker, Save as preset), else the page."""
    return _render(request, form, partial=bool(request.htmx), **options)


@require_http_methods(["GET", "POST"])
def create(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _submit(request)
    if "preset" in request.GET:
        # The preset picker without JavaScript: a fresh form filled from the preset.
        preset = presets.visible_preset(request.user, request.GET["preset"])
        return _render(request, presets.preset_form(request, preset))
    initial = _reuse(request)
    spec = spec_for(request.GET.get("model") or initial.get("model")) or DEFAULT_SPEC
    return _render(request, CreateForm(user=request.user, spec=spec, initial=initial))


def _submit(request: HttpRequest) -> HttpResponse:
    spec = spec_for(request.POST.get("model")) or DEFAULT_SPEC
    if "show_fields" in request.POST:
        # Without JavaScript the model is changed by this button: show the new model's fields,
        # keeping what was typed. Nothing is submitted.
        initial = initial_from(request.POST, spec)
        return _render(request, CreateForm(user=request.user, spec=spec, initial=initial))
    if "clear" in request.POST:
        # The Clear button: the same model and settings, with no prompt and no images. Nothing
        # is submitted; the prompt takes the focus, ready for the next idea.
        initial = initial_from(request.POST, spec)
        for name in ("prompt", "reference_urls", "carried"):
            initial.pop(name, None)
        fresh = CreateForm(user=request.user, spec=spec, initial=initial)
        fresh.fields["prompt"].widget.attrs["autofocus"] = True
        return _render(request, fresh)
    if "save_preset" in request.POST:
        # "Save as preset": the settings on screen are saved; nothing is submitted or charged.
        return presets.save_from_create(request)

    form = CreateForm(request.POST, request.FILES, user=request.user, spec=spec)
    if not form.is_valid():
        return _render(request, form, summary="Some fields need fixing; see the notes below.")
    order = order_from(form)
    try:
        outcome = services.submit_order(request.user, order)
    except services.SubmitRefused as refusal:
        form.apply_refusal(refusal)
        return _render(request, form, summary=refusal.message)

    task = outcome.tasks[0]
    several = len(outcome.tasks) > 1
    if outcome.created and several:
        charged = sum(t.credits_charged for t in outcome.tasks)
        messages.success(
            request,
            f"Submitted a run of {len(outcome.tasks)} tasks, {charged} credits charged. "
            "Its page shows them side by side as they finish.",
        )
    elif outcome.created:
        messages.success(
            request,
            f"Submitted: {spec.label} task, {task.credits_charged} credits charged. "
            "It appears in your tasks and updates as it runs.",
        )
    else:
        messages.info(request, "This form was already submitted; nothing more was charged.")
    if not request.htmx:
        if several:
            return redirect("generations-run", code=outcome.run.code)
        return redirect("generations-task", code=task.code)
    # The answer reuses what the submit read: request.user still holds the balance read when
    # the request began (the price line's "balance after" must not lag one submit behind), the
    # submit read it again under its lock; the keys, the prices and the new task are known.
    request.user.credit_balance = outcome.balance
    # The prompt, the settings and the images stay: they are where the next try starts. A
    # file input cannot keep a file, so the images come back as the task's stored copies
    # (a new task stored one copy of each of the order's images).
    initial = initial_from(request.POST, spec)
    copies = len(order.images) if outcome.created else None
    initial.update(form_token=uuid.uuid4(), carried=carried_references(task, copies))
    fresh = CreateForm(user=request.user, spec=spec, initial=initial, keys=form.keys)
    if outcome.created:
        for made in outcome.tasks:
            # What run_task_counts would read: the new cards link to their run at once.
            made.run_task_count = len(outcome.tasks)
    cards = with_timing(outcome.tasks) if outcome.created else []
    response = _render(request, fresh, cards=cards, prices=outcome.prices)
    # Wakes the page's card poller (which may have gone quiet with nothing active) once the
    # new card, with its .watch input, is on the page.
    response["HX-Trigger-After-Settle"] = "tasks-changed"
    return response


def order_from(form: CreateForm) -> services.Order:
    """The order a valid create form describes; the service checks and charges it. Carried
    images come first (they are shown first), as new copies of their stored files."""
    data = form.cleaned_data
    carried = tuple(image.source for image in data.get("carried") or ())
    return services.Order(
        # The form offers only the keys usable_by() lists for each gateway: checked already.
        items=tuple(
            services.OrderItem(request, key, key_checked=True)
            for request, key in form.order_items()
        ),
        visibility=data["visibility"],
        images=carried + tuple(data.get("reference_files") or ()),
        token=data["form_token"],
    )


def _reuse(request: HttpRequest) -> dict:
    """The form's starting values from the address.

    `from` (Reuse prompt and settings) copies a task the member may see: its prompt, settings
    and pasted image addresses, and carries the images it was sent as their stored copies
    (never their public links, which close when the task ends). `carry` (Use as reference)
    carries stored images, such as a result image or a video's poster, and picks a model that
    takes reference images.
    """
    initial: dict = {}
    # A recent prompt's link (prompt history without JavaScript): its text, or for a long one
    # the member's own task that has it.
    prompt = request.GET.get("prompt") or (
        presets.prompt_of(request.user, request.GET["prompt_of"])
        if request.GET.get("prompt_of")
        else None
    )
    if prompt:
        initial["prompt"] = prompt[: catalog.PROMPT_MAX_CHARS]
    if request.GET.get("from"):
        try:
            code = uuid.UUID(request.GET["from"])
        except ValueError:
            code = None
        visible = Task.objects.visible_to(request.user)
        task = visible.filter(code=code).first() if code else None
        if task is None:
            messages.info(request, "That task cannot be copied; the form starts empty.")
        else:
            initial = _copied(task)
    values = request.GET.getlist("carry")
    if values:
        found = [find_carried(request.user, value) for value in values[:MAX_CARRIED]]
        images = [image for image in found if image is not None]
        if len(images) < len(values):
            messages.info(request, "An image in the address cannot be used; it was left out.")
        initial["carried"] = [*initial.get("carried", ()), *(image.value for image in images)]
        if images and "model" not in initial:
            initial["model"] = _model_taking_images(images[0].task)
    return initial


def _copied(task: Task) -> dict:
    params = task.params or {}
    ours = services.reference_url("x")[:-1] if settings.PUBLIC_URL else None
    # Uploads went out as our own links or inline data; they are carried as stored copies
    # below, so only the addresses the member pasted are copied as text.
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
        "carried": carried_references(task),
    }
    for name in ("duration", "resolution", "aspect_ratio"):
        if params.get(name) is not None:
            initial[name] = str(params[name])
    return initial


def _model_taking_images(task: Task) -> str:
    """The task's own model if it takes reference images; else the first model that does and
    makes the same kind of thing (a video's poster starts a video), else the first that does."""
    spec = task.spec
    if spec is not None and spec.accepts_images:
        return spec.key
    taking = [candidate for candidate in catalog.MODELS if candidate.accepts_images]
    alike = [candidate for candidate in taking if candidate.kind.value == task.kind]
    return (alike or taking)[0].key


# --- reference images for the gateways -------------------------------------------------------


@login_not_required  # gateways fetch it; the random token is the only credential
@require_safe
def reference_image(request: HttpRequest, token: str) -> HttpResponse | FileResponse:
    # Gateways fetch a task's references around its submit; once the task has ended nobody
    # needs the public link, so it closes (the member still sees the image on the task page).
    image = get_object_or_404(
        ReferenceImage, token=token, task__state__in=Task.ACTIVE_STATES, task__deleted_at=None
    )
    if settings.S3_BUCKET:
        # A private bucket: the gateway follows a redirect to a link signed for minutes.
        from generations.views import signed_redirect

        response = signed_redirect(image.file, content_type=image.content_type)
    else:
        try:
            handle = image.file.open("rb")
        except FileNotFoundError:
            raise Http404("No such image.") from None
        response = FileResponse(handle, content_type=image.content_type)
        response["X-Content-Type-Options"] = "nosniff"
        response["Content-Security-Policy"] = "default-src 'none'"
    # Neither a shared cache nor the browser may keep it past the task's life.
    response["Cache-Control"] = "private, no-store"
    return response
