"""Admin for boards, read-only: what members gather and how large it grows. Boards change only
through their own pages, where the visibility rules live."""

from django.contrib import admin
from django.db.models import Count

from generations.admin import ReadOnlyAdmin
from generations.models.boards import Board


@admin.register(Board)
class BoardAdmin(ReadOnlyAdmin):
    list_display = ("name", "owner", "visibility", "entries", "created_at", "updated_at")
    list_select_related = ("owner",)
    list_filter = ("visibility",)
    search_fields = ("code", "name", "owner__username")
    readonly_fields = (
        "code",
        "owner",
        "name",
        "description",
        "visibility",
        "cover",
        "created_at",
        "updated_at",
    )
    fields = readonly_fields
    # The cover's choices would list every task.
    raw_id_fields = ("cover",)

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(entry_count=Count("items"))

    @admin.display(description="results", ordering="entry_count")
    def entries(self, board: Board) -> int:
        return board.entry_count
