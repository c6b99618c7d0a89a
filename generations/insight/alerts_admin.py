"""Admin of the alert emails: which kinds are sent (one row), and what was sent (read only)."""

from __future__ import annotations

from django.contrib import admin

from generations.models.insight import AlertSent, AlertSettings


@admin.register(AlertSettings)
class AlertSettingsAdmin(admin.ModelAdmin):
    """One row: a second would be ignored, and without any row every kind is on."""

    list_display = ("__str__", "limits", "key_refused", "stuck_tasks", "failure_rate")

    def has_add_permission(self, request) -> bool:
        return super().has_add_permission(request) and not AlertSettings.objects.exists()

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(AlertSent)
class AlertSentAdmin(admin.ModelAdmin):
    """What was mailed, to whom and when: a record, so nobody edits it."""

    list_display = ("sent_at", "kind", "subject", "recipients")
    list_filter = ("kind",)
    search_fields = ("subject", "recipients")
    date_hierarchy = "sent_at"
    readonly_fields = ("kind", "subject", "recipients", "body", "sent_at")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
