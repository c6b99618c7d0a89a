"""The signed-in member's own pages: profile, gateway keys and credits.

Login is enforced by LoginRequiredMiddleware. Key lookups start from the member's own keys, so
another member's key and team keys answer 404 here; team keys are only ever listed, read-only.
"""

import copy
from uuid import UUID

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST

from accounts import ledger
from accounts.forms import ApiTokenForm, KeyAddForm, KeyDetailsForm, KeySecretForm, ProfileForm
from accounts.models import ApiToken, LedgerEntry, ProviderKey
from generations import providers
from generations.insight import keyhealth
from generations.models import Task
from generations.providers import catalog

LEDGER_PAGE_SIZE = 25

KIND_WORDS = {
    LedgerEntry.Kind.GRANT: "Credits granted",
    LedgerEntry.Kind.DEBIT: "Charged for a task",
    LedgerEntry.Kind.REFUND: "Refund for a task",
    LedgerEntry.Kind.ADJUSTMENT: "Adjustment by an admin",
}


def profile(request: HttpRequest) -> HttpResponse:
    """The signed-in member's own profile; login is enforced by LoginRequiredMiddleware."""
    if request.method == "POST":
        form = ProfileForm(request.POST, instance=request.user)
        if form.is_valid():
            form.save()
            messages.success(request, "Your profile was saved.")
            return redirect("accounts-profile")
    else:
        form = ProfileForm(instance=request.user)
    extra = {}
    new = request.session.pop(NEW_TOKEN, None)
    if new:
        extra["new_token"] = ApiToken.objects.filter(user=request.user, pk=new["pk"]).first()
        extra["new_secret"] = new["secret"] if extra["new_token"] else None
    response = render(
        request, "accounts/profile.html", _profile_context(request, form=form, **extra)
    )
    if new:
        response["Cache-Control"] = "no-store"
    return response


def _profile_context(request: HttpRequest, **extra) -> dict:
    return {
        "form": extra.pop("form", None) or ProfileForm(instance=request.user),
        "token_form": extra.pop("token_form", None) or ApiTokenForm(user=request.user),
        "tokens": ApiToken.objects.filter(user=request.user),
        **extra,
    }


# --- API tokens -----------------------------------------------------------------------------


# The session key that carries a new token's secret from the POST to the page after it.
NEW_TOKEN = "new_api_token"


@require_POST
def token_add(request: HttpRequest) -> HttpResponse:
    """Make a token, then redirect (a reload must not make a second one) to the Profile page,
    which shows the secret once: it rides in the server-side session only until that page
    takes it out, and is never stored, put in a message or shown again."""
    form = ApiTokenForm(request.POST, user=request.user)
    if not form.is_valid():
        return render(request, "accounts/profile.html", _profile_context(request, token_form=form))
    token, secret = ApiToken.issue(
        request.user,
        name=form.cleaned_data["name"],
        scope=form.cleaned_data["scope"],
        days=form.cleaned_data["days"],
    )
    request.session[NEW_TOKEN] = {"pk": token.pk, "secret": secret}
    return redirect(reverse("accounts-profile") + "#new-token")


@require_POST
def token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    token = get_object_or_404(ApiToken.objects.filter(user=request.user), pk=pk)
    if token.revoke():
        messages.success(request, f"The token “{token.name}” was revoked; it no longer works.")
    return redirect("accounts-profile")


# --- Keys ---------------------------------------------------------------------------------------


def own_key(request: HttpRequest, code: UUID) -> ProviderKey:
    return get_object_or_404(ProviderKey.objects.filter(owner=request.user), code=code)


def with_gateway_address(key: ProviderKey) -> ProviderKey:
    """Attach the gateway's public address, which the pages show when the key sets none."""
    gateway = providers.REGISTRY.get(key.provider)
    key.default_base_url = gateway.default_base_url if gateway else None
    return key


def keys(request: HttpRequest) -> HttpResponse:
    # Gateways appear in the order the add form offers them, each group sorted by label.
    order = {provider_id: n for n, (provider_id, _) in enumerate(providers.choices())}
    own = sorted(
        ProviderKey.objects.filter(owner=request.user),
        key=lambda k: (order.get(k.provider, len(order)), k.label.casefold()),
    )
    own = [with_gateway_address(k) for k in own]
    shared = ProviderKey.objects.visible_to(request.user).team()
    return render(request, "accounts/keys.html", {"own_keys": own, "team_keys": shared})


@sensitive_post_parameters("secret")
def key_add(request: HttpRequest) -> HttpResponse:
    key = ProviderKey(owner=request.user)
    if request.method == "POST":
        form = KeyAddForm(request.POST, instance=key)
        if form.is_valid():
            key = form.save()
            messages.success(
                request,
                f"The key “{key.label}” was saved. From now on only its last four characters "
                f"({key.masked}) are shown.",
            )
            return redirect("accounts-keys")
    else:
        form = KeyAddForm(instance=key)
    return render(request, "accounts/key_form.html", {"form": form, "key": None})


def key_edit(request: HttpRequest, code: UUID) -> HttpResponse:
    key = with_gateway_address(own_key(request, code))
    if request.method == "POST":
        # The form edits a copy, so the page's heading keeps the saved label while it shows
        # what was typed in the fields.
        form = KeyDetailsForm(request.POST, instance=copy.copy(key))
        if form.is_valid():
            saved = form.save()
            messages.success(request, f"The key “{saved.label}” was saved.")
            return redirect("accounts-keys")
    else:
        form = KeyDetailsForm(instance=key)
    return render(
        request,
        "accounts/key_form.html",
        {"form": form, "key": key, "secret_form": KeySecretForm()},
    )


@sensitive_post_parameters("secret")
def key_secret(request: HttpRequest, code: UUID) -> HttpResponse:
    key = with_gateway_address(own_key(request, code))
    if request.method == "POST":
        form = KeySecretForm(request.POST)
        if form.is_valid():
            key.set_secret(form.cleaned_data["secret"])
            key.save()
            note = (
                " It is still disabled; enable it to use it."
                if key.is_disabled
                else " It is ready to use."
            )
            messages.success(
                request, f"The secret of “{key.label}” was replaced ({key.masked}).{note}"
            )
            return redirect("accounts-keys")
    else:
        form = KeySecretForm()
    return render(
        request, "accounts/key_form.html", {"form": None, "key": key, "secret_form": form}
    )


@require_POST
def key_toggle(request: HttpRequest, code: UUID) -> HttpResponse:
    key = own_key(request, code)
    key.is_disabled = not key.is_disabled
    key.save(update_fields=["is_disabled", "updated_at"])
    if key.is_disabled:
        messages.success(
            request, f"“{key.label}” is disabled: it will not be used until you enable it."
        )
    elif key.status != "active":
        messages.success(
            request,
            f"“{key.label}” is enabled, but it is still {key.status}: "
            "replace its secret to use it.",
        )
    else:
        messages.success(request, f"“{key.label}” is enabled again.")
    return redirect("accounts-keys")


@require_POST
def key_test(request: HttpRequest, code: UUID) -> HttpResponse:
    """Ask the key's gateway about a task that cannot exist: free, and it tells whether the
    key is accepted. The answer is stored on the key and shown on its row."""
    key = own_key(request, code)
    answer = keyhealth.test_key(key)
    if answer.status == keyhealth.ACCEPTED:
        messages.success(request, f"“{key.label}”: {answer.message}")
    else:
        messages.warning(request, f"“{key.label}”: {answer.message}")
    return redirect(reverse("accounts-keys") + f"#key-{key.code}")


def key_delete(request: HttpRequest, code: UUID) -> HttpResponse:
    key = own_key(request, code)
    if request.method == "POST":
        label = key.label
        key.delete()
        messages.success(request, f"The key “{label}” was deleted.")
        return redirect("accounts-keys")
    running = Task.objects.owned_by(request.user).active().filter(key=key).count()
    return render(request, "accounts/key_confirm_delete.html", {"key": key, "running": running})


# --- Credits ------------------------------------------------------------------------------------


def model_in_words(allowed: str) -> str:
    """An allowed-model entry in words, e.g. "omniakey/*" as "Every OmniaKey model"."""
    provider_id, _, model = allowed.partition("/")
    gateway = providers.REGISTRY.get(provider_id)
    gateway_name = gateway.name if gateway else provider_id
    if model == "*":
        return f"Every {gateway_name} model"
    spec = catalog.get(provider_id, model)
    return f"{gateway_name} {spec.label if spec else model}"


def usage_row(label: str, used: int, limit: int | None, unit: str) -> dict:
    return {
        "label": label,
        "used": used,
        "limit": limit,
        "left": None if limit is None else max(limit - used, 0),
        "unit": unit,
        "reached": limit is not None and used >= limit,
    }


def credits(request: HttpRequest) -> HttpResponse:
    user = request.user
    quota = ledger.effective_quota(user)
    spent = ledger.spending(user)
    active = Task.objects.filter(user=user).active().count()
    usage = [
        usage_row("Spent today", spent["today"], quota.max_credits_per_day, "credit"),
        usage_row("Spent this month", spent["month"], quota.max_credits_per_month, "credit"),
        usage_row("Active tasks", active, quota.max_active_tasks, "task"),
    ]
    entries = LedgerEntry.objects.filter(user=user).select_related("task")
    # get_page answers a bad or out-of-range ?page= with the first or last page, never an error.
    page = Paginator(entries, LEDGER_PAGE_SIZE).get_page(request.GET.get("page"))
    for entry in page:
        entry.kind_words = KIND_WORDS.get(entry.kind, entry.get_kind_display())
        if entry.task:
            spec = entry.task.spec
            entry.model_label = spec.label if spec else entry.task.model
    return render(
        request,
        "accounts/credits.html",
        {
            "balance": user.credit_balance,
            "usage": usage,
            "allowed_models": [model_in_words(m) for m in quota.allowed_models],
            "page": page,
            "time_zone": timezone.get_current_timezone_name(),
        },
    )
