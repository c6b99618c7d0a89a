"""Admin for share links: every member's links, filtered by status, and a Revoke action.

Links are made by members from a board or a task page, never here; an admin only looks and
revokes. The token is shown as a short hint: the list is for knowing what is shared, not for
opening it.
"""

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.utils import timezone

from generations.admin import ReadOnlyAdmin
from generations.models.shares import ShareLink


class StatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("expired", "Expired"), ("revoked", "Revoked")]

    def queryset(self, request, queryset: QuerySet[ShareLink]) -> QuerySet[ShareLink]:
        # The same three cases as ShareLink.status.
        now = timezone.now()
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        if self.value() == "expired":
            return queryset.filter(revoked_at__isnull=True, expires_at__lte=now)
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True, expires_at__gt=now)
        return queryset


@admin.register(ShareLink)
class ShareLinkAdmin(ReadOnlyAdmin):
    list_display = (
        "shares",
        "created_by",
        "token_hint",
        "include_prompts",
        "created_at",
        "expires_at",
        "views",
        "last_viewed_at",
        "status",
    )
    list_select_related = ("created_by", "board", "task")
    list_filter = (StatusFilter, "include_prompts")
    search_fields = ("created_by__username", "board__name")
    fields = (
        "shares",
        "created_by",
        "token_hint",
        "include_prompts",
        "created_at",
        "expires_at",
        "revoked_at",
        "views",
        "last_viewed_at",
        "status",
    )
    readonly_fields = fields
    actions = ("revoke_links",)

    @admin.display(description="shares")
    def shares(self, link: ShareLink) -> str:
        return f"Board “{link.board}”" if link.board_id else f"Result of {link.task}"

    @admin.display(description="token")
    def token_hint(self, link: ShareLink) -> str:
        return f"{link.token[:6]}…"

    @admin.action(description="Revoke the selected links")
    def revoke_links(self, request, queryset: QuerySet[ShareLink]) -> None:
        done = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        messages.success(request, f"Revoked {done} link{'s' if done != 1 else ''}.")
