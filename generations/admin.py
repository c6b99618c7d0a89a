"""The admin for prices, every member's tasks, and what the gateways charged for them.

Tasks are read-only here: their state moves only through generations.services, so the one
thing an admin can do to a task is fail it, which refunds it exactly once.
"""

import math
from dataclasses import dataclass
from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncMonth
from django.template.response import TemplateResponse
from django.urls import path

from accounts.models import LedgerEntry
from generations import providers
from generations.models import ModelPrice, Run, Task, TaskEvent, TaskInReview
from generations.providers import catalog
from generations.services import fail_task, mark_delivered, recheck_now

# Task.price_multiplier keeps three decimals and at most 999.999; a multiplier it cannot hold
# would fail every submit for that model.
MAX_MULTIPLIER = Decimal("999.999")
COST_PLACES = Decimal("0.0001")


# --- Prices -------------------------------------------------------------------------------------


class ModelPriceForm(forms.ModelForm):
    class Meta:
        model = ModelPrice
        fields = ["provider", "model", "unit", "credits_per_unit", "resolution_multipliers"]
        error_messages = {
            "credits_per_unit": {
                "min_value": "A price is at least 1 credit.",
                "invalid": "Enter a whole number of credits, like 8.",
                "required": "Enter the price in credits.",
            }
        }

    def clean_credits_per_unit(self):
        value = self.cleaned_data["credits_per_unit"]
        if value < 1:
            raise forms.ValidationError("A price is at least 1 credit.")
        return value

    def clean_resolution_multipliers(self):
        value = self.cleaned_data.get("resolution_multipliers")
        if value in (None, ""):
            return {}
        example = 'e.g. {"720p": 1, "1080p": 1.5}, or {} for none'
        if not isinstance(value, dict):
            raise forms.ValidationError(
                f"Enter an object that maps each resolution to a multiplier, {example}."
            )
        for resolution, multiplier in value.items():
            if isinstance(multiplier, bool) or not isinstance(multiplier, int | float):
                raise forms.ValidationError(
                    f"The multiplier for {resolution!r} must be a number, {example}."
                )
            if not math.isfinite(multiplier) or not 0 < multiplier <= MAX_MULTIPLIER:
                raise forms.ValidationError(
                    f"The multiplier for {resolution!r} must be above 0 and at most "
                    f"{MAX_MULTIPLIER}."
                )
            if Decimal(str(multiplier)).as_tuple().exponent < -3:
                raise forms.ValidationError(
                    f"The multiplier for {resolution!r} has more than three decimals."
                )
        return value

    def clean(self):
        cleaned = super().clean()
        provider = cleaned.get("provider", self.instance.provider)
        model = cleaned.get("model", self.instance.model)
        if "model" in self.fields and provider and model:
            spec = catalog.get(provider, model)
            if spec is None:
                offered = ", ".join(s.model for s in catalog.for_provider(provider))
                self.add_error("model", f"That gateway has no model {model!r}; it has {offered}.")
            else:
                if cleaned.get("unit") == ModelPrice.Unit.SECOND and not spec.durations:
                    self.add_error(
                        "unit",
                        f"{spec.label} takes no duration, so it cannot be priced per second; "
                        "price it per image or per task.",
                    )
                if cleaned.get("resolution_multipliers"):
                    self._check_resolutions(spec, cleaned["resolution_multipliers"])
        return cleaned

    def _check_resolutions(self, spec: catalog.ModelSpec, multipliers: dict) -> None:
        offered = spec.resolutions
        if spec.resolutions_case_insensitive:
            offered = tuple(r.lower() for r in offered)
        for resolution in multipliers:
            wanted = resolution.lower() if spec.resolutions_case_insensitive else resolution
            if wanted not in offered:
                choices = ", ".join(spec.resolutions) or "none"
                self.add_error(
                    "resolution_multipliers",
                    f"{spec.label} has no resolution {resolution!r}; it offers {choices}.",
                )
                return


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    form = ModelPriceForm
    list_display = (
        "provider",
        "model",
        "unit",
        "credits_per_unit",
        "resolution_multipliers",
        "updated_at",
    )
    list_display_links = ("model",)
    list_editable = ("credits_per_unit",)
    list_filter = ("provider", "unit")
    search_fields = ("model",)

    def get_changelist_form(self, request, **kwargs):
        # The list's inline price edits get the same checks as the change form.
        kwargs.setdefault("form", ModelPriceForm)
        return super().get_changelist_form(request, **kwargs)


# --- Tasks --------------------------------------------------------------------------------------


class TaskEventInline(admin.TabularInline):
    model = TaskEvent
    fields = ("created_at", "from_state", "to_state", "actor", "reason")
    readonly_fields = fields
    extra = 0
    max_num = 0
    verbose_name_plural = "history"

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@dataclass
class CostRow:
    """One gateway, key and month of the cost report."""

    provider: str
    key_label: str
    month: object
    tasks: int = 0
    debited: int = 0
    refunded: int = 0
    gateway_cost: Decimal | None = None
    with_cost: int = 0
    # What the gateway charged for tasks we refunded: failed after it billed, results that
    # could not be stored, cancels it still finished.
    lost_cost: Decimal | None = None

    @property
    def net(self) -> int:
        return self.debited - self.refunded

    @property
    def gateway_name(self) -> str:
        gateway = providers.REGISTRY.get(self.provider)
        return gateway.name if gateway else self.provider


def _places(cost) -> Decimal | None:
    # SQLite sums decimals as floats; the column keeps four places, and so does the report.
    return None if cost is None else Decimal(str(cost)).quantize(COST_PLACES)


def gateway_cost_report() -> list[CostRow]:
    """Tasks, credits and gateway-reported cost per gateway, key and month the task began.

    Two grouped queries rather than one join, so a task's debit and refund rows never count
    its gateway cost twice.
    """
    rows: dict[tuple, CostRow] = {}
    tasks = (
        Task.objects.annotate(month=TruncMonth("created_at"))
        .values("provider", "key_label", "month")
        .annotate(
            tasks=Count("pk"),
            cost=Sum("gateway_cost"),
            lost=Sum("gateway_cost", filter=Q(state__in=[Task.State.FAILED, Task.State.CANCELED])),
            with_cost=Count("pk", filter=Q(gateway_cost__isnull=False)),
        )
    )
    for group in tasks:
        key = (group["provider"], group["key_label"], group["month"])
        rows[key] = CostRow(
            *key,
            tasks=group["tasks"],
            gateway_cost=_places(group["cost"]),
            with_cost=group["with_cost"],
            lost_cost=_places(group["lost"]),
        )
    money = (
        LedgerEntry.objects.filter(
            task__isnull=False, kind__in=[LedgerEntry.Kind.DEBIT, LedgerEntry.Kind.REFUND]
        )
        .annotate(month=TruncMonth("task__created_at"))
        .values("task__provider", "task__key_label", "month", "kind")
        .annotate(total=Sum("amount"))
    )
    for group in money:
        row = rows[(group["task__provider"], group["task__key_label"], group["month"])]
        if group["kind"] == LedgerEntry.Kind.DEBIT:
            row.debited = -group["total"]
        else:
            row.refunded = group["total"]
    return sorted(rows.values(), key=lambda r: (-r.month.timestamp(), r.provider, r.key_label))


def report_totals(rows: list[CostRow]) -> CostRow:
    total = CostRow(provider="", key_label="", month=None)
    for row in rows:
        total.tasks += row.tasks
        total.debited += row.debited
        total.refunded += row.refunded
        total.with_cost += row.with_cost
        if row.gateway_cost is not None:
            total.gateway_cost = (total.gateway_cost or Decimal(0)) + row.gateway_cost
        if row.lost_cost is not None:
            total.lost_cost = (total.lost_cost or Decimal(0)) + row.lost_cost
    return total


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows admins look at (and act on through actions) but never add, edit or delete here."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    """Every member's runs, read-only: who submitted what together, and how it went."""

    list_display = ("name", "user", "visibility", "task_count", "created_at")
    list_select_related = ("user",)
    list_filter = ("visibility",)
    search_fields = ("code", "name", "user__username")
    readonly_fields = ("code", "user", "name", "visibility", "created_at")
    fields = readonly_fields

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(tasks_in_run=Count("tasks"))

    @admin.display(description="tasks", ordering="tasks_in_run")
    def task_count(self, run: Run) -> int:
        return run.tasks_in_run


@admin.register(Task)
class TaskAdmin(ReadOnlyAdmin):
    """Every member's tasks, read-only; failing one refunds it through the ledger."""

    list_display = (
        "code",
        "user",
        "provider",
        "model",
        "state",
        "credits_charged",
        "gateway_cost",
        "created_at",
    )
    list_filter = ("state", "provider")
    list_select_related = ("user",)
    search_fields = ("code", "user__username", "provider_task_id", "key_label")
    actions = ["fail_and_refund", "recheck", "mark_as_delivered"]
    inlines = [TaskEventInline]
    fieldsets = (
        (None, {"fields": ("code", "user", "provider", "model", "kind", "state", "progress")}),
        ("Request", {"fields": ("prompt", "params", "message")}),
        (
            "Money",
            {
                "fields": (
                    "key",
                    "key_label",
                    "price_unit",
                    "price_credits_per_unit",
                    "price_units",
                    "price_multiplier",
                    "credits_charged",
                    "gateway_cost",
                )
            },
        ),
        (
            "Gateway",
            {
                "fields": (
                    "provider_task_id",
                    "created_at",
                    "updated_at",
                    "finished_at",
                    "deadline_at",
                    "give_up_at",
                    "gateway_results",
                    "last_response",
                )
            },
        ),
        (
            "Engine",
            {
                "fields": (
                    "next_check_at",
                    "lease_owner",
                    "lease_until",
                    "submit_sent_at",
                    "submit_attempts",
                    "polls",
                    "error_streak",
                    "not_found_streak",
                    "download_attempts",
                    "estimated_seconds",
                )
            },
        ),
    )
    readonly_fields = [name for _, options in fieldsets for name in options["fields"]]

    def has_fail_permission(self, request) -> bool:
        return request.user.has_perm("generations.change_task")

    @admin.action(description="Fail and refund the selected tasks", permissions=["fail"])
    def fail_and_refund(self, request, queryset):
        actor = f"admin:{request.user.username}"
        refunded = skipped = 0
        for task in queryset:
            if fail_task(task, actor=actor, reason="Failed by an admin"):
                refunded += 1
            else:
                skipped += 1
        if refunded:
            self.message_user(
                request,
                f"Failed and refunded {refunded} task{'s' if refunded != 1 else ''}.",
                messages.SUCCESS,
            )
        if skipped:
            self.message_user(
                request,
                f"{skipped} of the selected tasks had already ended; nothing was refunded for "
                f"{'them' if skipped != 1 else 'it'}.",
                messages.WARNING,
            )

    @admin.action(description="Re-check the selected tasks now", permissions=["fail"])
    def recheck(self, request, queryset):
        count = sum(recheck_now(task) for task in queryset)
        self.message_user(
            request,
            f"{count} active task{'s' if count != 1 else ''} will be checked within seconds; "
            "finished tasks were left alone.",
            messages.SUCCESS,
        )

    @admin.action(
        description="Mark as delivered (no refund): confirmed at the gateway",
        permissions=["fail"],
    )
    def mark_as_delivered(self, request, queryset):
        actor = f"admin:{request.user.username}"
        count = sum(mark_delivered(task, actor=actor) for task in queryset)
        skipped = queryset.count() - count
        if count:
            self.message_user(
                request,
                f"Marked {count} task{'s' if count != 1 else ''} as delivered.",
                messages.SUCCESS,
            )
        if skipped:
            self.message_user(
                request,
                f"{skipped} of the selected tasks were not waiting for review; they were left "
                "alone.",
                messages.WARNING,
            )

    def get_urls(self):
        report = path(
            "cost-report/",
            self.admin_site.admin_view(self.cost_report_view),
            name="generations_task_cost_report",
        )
        # Before the defaults, whose catch-all would read "cost-report" as a task id.
        return [report, *super().get_urls()]

    def cost_report_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        rows = gateway_cost_report()
        context = {
            **self.admin_site.each_context(request),
            "title": "Gateway cost report",
            "opts": self.opts,
            "rows": rows,
            "totals": report_totals(rows),
        }
        return TemplateResponse(request, "admin/generations/task/cost_report.html", context)


@admin.register(TaskInReview)
class TaskReviewAdmin(TaskAdmin):
    """The review list: re-check, fail and refund, or mark as delivered."""

    list_display = ("code", "user", "provider", "model", "message", "give_up_at", "updated_at")
    list_filter = ("provider",)

    def get_queryset(self, request):
        return super().get_queryset(request).needing_review()

    def get_urls(self):
        return admin.ModelAdmin.get_urls(self)


# The admin classes of other concepts live beside them and register themselves on import.
from generations import board_admin, preset_admin, share_admin  # noqa: E402,F401
from generations.api import webhook_admin  # noqa: E402,F401
from generations.insight import alerts_admin  # noqa: E402,F401
