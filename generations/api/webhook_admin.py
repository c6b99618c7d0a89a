"""Admin for outbound webhooks: every endpoint (team endpoints have no owner and receive every
member's task events) and a read-only log of deliveries."""

from django import forms
from django.contrib import admin, messages
from django.utils.html import format_html

from accounts import crypto
from generations.admin import ReadOnlyAdmin
from generations.api import webhooks
from generations.api.webhooks import WebhookDelivery, WebhookEndpoint


class EndpointAdminForm(forms.ModelForm):
    class Meta:
        model = WebhookEndpoint
        fields = ("owner", "url", "description", "enabled")

    def clean_url(self) -> str:
        url = self.cleaned_data["url"].strip()
        problem = webhooks.url_problem(url)
        if problem:
            raise forms.ValidationError(problem)
        return url


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    form = EndpointAdminForm
    list_display = ("url", "receiver", "description", "enabled", "disabled_reason", "created_at")
    list_select_related = ("owner",)
    list_filter = ("enabled", ("owner", admin.EmptyFieldListFilter))
    search_fields = ("url", "description", "owner__username")
    readonly_fields = (
        "code",
        "signing_secret",
        "disabled_reason",
        "created_at",
        "secret_rotated_at",
    )
    actions = ("rotate_secrets", "send_test_events")

    def get_fields(self, request, obj=None):
        fields = ["owner", "url", "description", "enabled"]
        if obj is not None:
            fields += list(self.readonly_fields)
        return fields

    @admin.display(description="receives")
    def receiver(self, endpoint: WebhookEndpoint) -> str:
        return f"{endpoint.owner}'s tasks" if endpoint.owner_id else "Team: every member's tasks"

    @admin.display(description="signing secret")
    def signing_secret(self, endpoint: WebhookEndpoint) -> str:
        # Receivers need it to verify signatures, so unlike provider keys it is shown.
        try:
            return format_html("<code>{}</code>", endpoint.secret)
        except crypto.DecryptionError:
            return "(cannot be decrypted with the configured keys: rotate it)"

    def save_model(self, request, obj: WebhookEndpoint, form, change: bool) -> None:
        if not obj.secret_ciphertext:
            obj.set_new_secret()
        if obj.enabled:
            obj.disabled_reason = ""
        super().save_model(request, obj, form, change)

    @admin.action(description="Make new signing secrets for the selected endpoints")
    def rotate_secrets(self, request, queryset) -> None:
        for endpoint in queryset:
            endpoint.rotate_secret()
        messages.success(request, f"New secrets for {queryset.count()} endpoints.")

    @admin.action(description="Send a test event to the selected endpoints")
    def send_test_events(self, request, queryset) -> None:
        for endpoint in queryset:
            webhooks.send_test_event(endpoint)
        messages.success(request, f"Test events queued for {queryset.count()} endpoints.")


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    """Every delivery, read-only: what was sent where, and how the receiver answered."""

    list_display = (
        "created_at",
        "event_type",
        "endpoint",
        "task",
        "state",
        "attempts",
        "last_status",
        "last_error",
        "next_attempt_at",
    )
    list_select_related = ("endpoint", "task")
    list_filter = ("state", "event_type")
    search_fields = ("code", "endpoint__url", "task__code")
    fields = (
        "code",
        "endpoint",
        "task",
        "event_type",
        "state",
        "attempts",
        "created_at",
        "last_attempt_at",
        "last_status",
        "last_error",
        "last_duration_ms",
        "next_attempt_at",
        "finished_at",
        "payload",
    )
    readonly_fields = fields
