"""The member's webhook endpoints: register, read the secret and the delivery log, test,
rotate the secret, disable, delete.

Every lookup starts from the member's own endpoints, so another member's endpoint, and team
endpoints (which admins manage), answer 404 here. Login is enforced by LoginRequiredMiddleware.
Plain forms, POST then redirect: nothing needs JavaScript.
"""

from uuid import UUID

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from accounts import crypto
from generations.api import webhooks
from generations.api.webhooks import WebhookEndpoint


class EndpointForm(forms.Form):
    url = forms.CharField(
        label="Endpoint URL",
        max_length=webhooks.MAX_URL_CHARS,
        widget=forms.URLInput,
        help_text="An https:// address on the public internet, such as "
        "https://example.com/hooks/omniweb. Omniweb POSTs signed JSON to it.",
    )
    description = forms.CharField(
        max_length=webhooks.MAX_DESCRIPTION_CHARS,
        required=False,
        help_text="Optional: what receives these events, for you to recognise it.",
    )

    def clean_url(self) -> str:
        url = self.cleaned_data["url"].strip()
        problem = webhooks.url_problem(url)
        if problem:
            raise forms.ValidationError(problem)
        return url


def own_endpoint(request: HttpRequest, code: UUID) -> WebhookEndpoint:
    return get_object_or_404(WebhookEndpoint.objects.owned_by(request.user), code=code)


def endpoint_list(request: HttpRequest) -> HttpResponse:
    endpoints = list(WebhookEndpoint.objects.owned_by(request.user))
    form = EndpointForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            endpoint = webhooks.register_endpoint(
                request.user, form.cleaned_data["url"], form.cleaned_data["description"]
            )
        except webhooks.TooManyEndpoints as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(
                request,
                "The endpoint was saved. Copy its signing secret below to verify the events "
                "it receives.",
            )
            return redirect(endpoint)
    return render(
        request,
        "webhooks/endpoints.html",
        {
            "endpoints": endpoints,
            "form": form,
            "at_cap": len(endpoints) >= webhooks.MAX_ENDPOINTS_PER_MEMBER,
            "cap": webhooks.MAX_ENDPOINTS_PER_MEMBER,
            "events": [e for e in webhooks.Event.values if e != webhooks.Event.TEST],
        },
    )


# The page shows the signing secret: no cache keeps a copy.
@never_cache
def endpoint_detail(request: HttpRequest, code: UUID) -> HttpResponse:
    endpoint = own_endpoint(request, code)
    try:
        secret = endpoint.secret
    except crypto.DecryptionError:
        secret = None
    deliveries = endpoint.deliveries.select_related("task").order_by("-id")[: webhooks.LOG_SIZE]
    return render(
        request,
        "webhooks/endpoint.html",
        {"endpoint": endpoint, "secret": secret, "deliveries": deliveries},
    )


@require_POST
def endpoint_toggle(request: HttpRequest, code: UUID) -> HttpResponse:
    endpoint = own_endpoint(request, code)
    if endpoint.enabled:
        endpoint.disable(f"Disabled by you on {timezone.now():%Y-%m-%d %H:%M} UTC.")
        messages.success(request, "The endpoint is disabled: it receives no events.")
    else:
        endpoint.enabled, endpoint.disabled_reason = True, ""
        endpoint.save(update_fields=["enabled", "disabled_reason"])
        messages.success(request, "The endpoint is enabled: it receives new events.")
    return redirect(endpoint)


@require_POST
def endpoint_rotate(request: HttpRequest, code: UUID) -> HttpResponse:
    endpoint = own_endpoint(request, code)
    endpoint.rotate_secret()
    messages.success(
        request,
        "A new signing secret was made. Events sent from now on, retries included, are signed "
        "with it only: update your receiver.",
    )
    return redirect(endpoint)


@require_POST
def endpoint_test(request: HttpRequest, code: UUID) -> HttpResponse:
    endpoint = own_endpoint(request, code)
    webhooks.send_test_event(endpoint)
    messages.success(
        request, "A test event is on its way; reload this page to see how its delivery went."
    )
    return redirect(endpoint)


def endpoint_delete(request: HttpRequest, code: UUID) -> HttpResponse:
    endpoint = own_endpoint(request, code)
    if request.method == "POST":
        endpoint.delete()
        messages.success(request, "The endpoint and its delivery log were deleted.")
        return redirect("generations-webhook-endpoints")
    return render(request, "webhooks/endpoint_confirm_delete.html", {"endpoint": endpoint})


@require_POST
def delivery_resend(request: HttpRequest, code: UUID, delivery: UUID) -> HttpResponse:
    """Send a given-up delivery again, from its first attempt (its webhook-id unchanged, so a
    receiver that did get it after all can tell)."""
    endpoint = own_endpoint(request, code)
    found = get_object_or_404(endpoint.deliveries, code=delivery)
    if webhooks.resend(found):
        messages.success(request, "The event is on its way again.")
    else:
        messages.error(request, "Only a delivery that failed can be sent again.")
    return redirect(endpoint)
