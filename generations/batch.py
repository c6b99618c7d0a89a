"""The batch page: many prompts at once, pasted one a line or uploaded as a CSV file, previewed
row by row with their prices, and submitted as one run.

A POST either previews (the rows are read, checked and priced, and come back as an editable
table) or submits (the same, then the ready rows go to services.submit_order as one order). The
rows live only in the form; every POST reads and checks them again, and a submit whose rows,
keys or prices differ from the last preview is shown again instead of charged. The page is a
plain form; with htmx it swaps in place.
"""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods
from django_htmx.http import HttpResponseClientRedirect

from accounts.ledger import effective_quota
from generations import services
from generations.batch_forms import (
    CELL_LIMITS,
    BatchForm,
    BatchRefused,
    CheckedRow,
    Defaults,
    Preview,
    check_rows,
    model_for,
    posted_count,
    rows_from_input,
    rows_from_post,
)
from generations.models import Run, Task
from generations.providers import catalog

CHANGED = "The rows, keys or prices changed since the preview; check them below and submit again."


@require_http_methods(["GET", "POST"])
def batch(request: HttpRequest) -> HttpResponse:
    limits = effective_quota(request.user)
    cap = limits.max_tasks_per_run
    if request.method == "GET":
        return _render(request, BatchForm(user=request.user), cap=cap)

    form = BatchForm(request.POST, request.FILES, user=request.user)
    try:
        # A preview's rows come back in its inputs; without them, this is a new paste or file.
        rows = rows_from_post(request.POST, cap) if posted_count(request.POST) else None
    except BatchRefused as refusal:
        return _render(request, form, cap=cap, summary=refusal.message)
    if not form.is_valid():
        unchecked = [CheckedRow(n, row) for n, row in enumerate(rows or [], start=1)]
        return _render(
            request, form, cap=cap, table=unchecked, summary="Some settings need fixing."
        )
    if rows is None:
        try:
            rows = rows_from_input(form.cleaned_data, cap)
        except BatchRefused as refusal:
            # Shown by its input and, linked to it, in the summary at the top.
            form.add_error(refusal.field, refusal.message)
            return _render(request, form, cap=cap)

    preview = check_rows(
        rows, form.defaults(), form.chosen_keys(), limits, request.user.credit_balance
    )
    if "submit" not in request.POST:
        return _render(request, form, cap=cap, preview=preview)
    return _submit(request, form, preview, cap)


def _submit(request: HttpRequest, form: BatchForm, preview: Preview, cap: int) -> HttpResponse:
    token = form.cleaned_data["form_token"]
    # A second click, or the back button and submit again: the token already made a run. The
    # service would find it too, but only after checks (the balance the first submit spent,
    # a key disabled since) that could refuse the repeat with a misleading message.
    done = Task.objects.filter(user=request.user, submit_token=token).select_related("run").first()
    if done is not None:
        messages.info(request, "This batch was already submitted; nothing more was charged.")
        return _to_run(request, done.run)

    def again(summary: str) -> HttpResponse:
        return _render(request, form, cap=cap, preview=preview, summary=summary)

    if not preview.kept:
        return again("Every row is dropped: there is nothing to submit.")
    if preview.problems:
        numbers = [str(row.number) for row in preview.problems]
        if len(numbers) == 1:
            which = f"Row {numbers[0]} needs fixing, or tick Drop to leave it out."
        else:
            listed = ", ".join(numbers[:-1]) + " and " + numbers[-1]
            which = f"Rows {listed} need fixing, or tick Drop to leave them out."
        return again(f"{which} Nothing was submitted.")
    if request.POST.get("digest") != preview.digest:
        return again(CHANGED)

    data = form.cleaned_data
    order = services.Order(
        # Each key is one choices_for() offered in this request: checked already.
        items=tuple(
            services.OrderItem(row.request, row.key, key_checked=True) for row in preview.ready
        ),
        visibility=data["visibility"],
        token=token,
        note="submitted in a batch",
        name=data["name"].strip(),
    )
    try:
        outcome = services.submit_order(request.user, order)
    except services.SubmitRefused as refusal:
        details = [message for messages_ in refusal.errors.values() for message in messages_]
        return again(" ".join([refusal.message, *details]))
    if outcome.created:
        count = len(outcome.tasks)
        charged = sum(task.credits_charged for task in outcome.tasks)
        messages.success(
            request,
            f"Submitted {count} task{'s' if count != 1 else ''} as one run, {charged} credits "
            "charged. They update on the run's page as they go.",
        )
    else:
        messages.info(request, "This batch was already submitted; nothing more was charged.")
    return _to_run(request, outcome.run)


def _to_run(request: HttpRequest, run: Run) -> HttpResponse:
    url = reverse("generations-run", args=[run.code])
    if request.htmx:
        return HttpResponseClientRedirect(url)
    return redirect(url)


def _render(
    request: HttpRequest,
    form: BatchForm,
    *,
    cap: int,
    preview: Preview | None = None,
    table: list[CheckedRow] | None = None,
    summary: str = "",
) -> HttpResponse:
    rows = preview.rows if preview is not None else table or []
    defaults = form.defaults() if preview is not None else None
    if preview is not None and preview.first_prompt:
        # What the run is called if the member names it nothing.
        form.fields["name"].widget.attrs["placeholder"] = Run.name_for(preview.first_prompt)
    context = {
        "form": form,
        "preview": preview,
        "rows": [_row_view(row, defaults) for row in rows],
        "row_count": len(rows),
        "cap": cap,
        "summary": summary,
        "models": catalog.MODELS,
        "prompt_max": CELL_LIMITS["prompt"],
        "reference_max": CELL_LIMITS["reference_image"],
        # The fields with problems, linked from the summary at the top of the form.
        "problems": [
            form[name]
            for name in form.fields
            if name != "form_token" and form.is_bound and form.has_error(name)
        ],
        "ready": bool(
            preview is not None and preview.kept and not preview.problems and preview.short == 0
        ),
    }
    template = "generations/batch.html"
    if request.htmx and request.method == "POST":
        template = "generations/_batch_form.html"
    return render(request, template, context)


# The short setting cells of a row: (column, words, input size).
SETTING_CELLS = (
    ("duration", "duration in seconds", 3),
    ("resolution", "resolution", 7),
    ("aspect_ratio", "aspect ratio", 5),
)


def _row_view(item: CheckedRow, defaults: Defaults | None) -> dict:
    """What the table shows of a row: its cells as typed, what its empty cells become, and
    which cells have problems."""
    cells = item.row.cells
    named = model_for(cells["model"]) if cells["model"] else None
    settings = []
    for name, words, size in SETTING_CELLS:
        effective = getattr(item.request, name, None) if item.request else None
        settings.append(
            {
                "name": name,
                "label": words,
                "value": cells[name],
                "placeholder": "" if effective is None else str(effective),
                "size": size,
                "limit": CELL_LIMITS[name],
                "bad": name in item.errors,
            }
        )
    return {
        "item": item,
        "index": item.number - 1,
        "cells": cells,
        # The select shows the model the cell names; a name Omniweb does not know stays as
        # written (its own option), so the member sees what to fix.
        "model_value": named.key if named else cells["model"],
        "model_unknown": bool(cells["model"]) and named is None,
        "default_label": defaults.spec.label if defaults else "",
        "settings": settings,
        "bad": set(item.errors),
    }
