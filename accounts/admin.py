"""The admin for members, their credits, quotas and provider keys.

Money never moves through a model form here: the grant and deduct actions call accounts.ledger,
and ledger entries are shown but never added, changed or deleted. A key's secret only travels
inward: the form takes a new one and encrypts it, and pages show nothing but its last four
characters.
"""

import uuid

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.db import transaction
from django.forms.models import BaseInlineFormSet
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.html import escape, format_html
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables

from accounts import ledger
from accounts.forms import checked_base_url
from accounts.models import ApiToken, LedgerEntry, ProviderKey, Quota, TeamQuota, User
from generations import providers
from generations.insight import keyhealth
from generations.models import Task
from generations.providers import catalog

RECENT_ENTRIES = 20
# Far below the 32-bit balance column; a bigger number is a typo, not a grant.
MAX_CREDITS_PER_ACTION = 1_000_000


def counted(number: int, singular: str) -> str:
    plural = singular[:-1] + "ies" if singular.endswith("y") else singular + "s"
    return f"{number} {singular if number == 1 else plural}"


def optional_limit(form: forms.ModelForm, name: str) -> None:
    """Let a limit with a default be left out or empty: the row keeps its current value (the
    default on a new row). Forms and scripts that post only the fields they change, as they
    did before the limit existed, keep working instead of failing on a field they never saw."""
    field = form.fields[name]
    field.required = False
    field.help_text = f"{field.help_text} Empty keeps the current value.".strip()


def limit_or_current(form: forms.ModelForm, name: str) -> int:
    value = form.cleaned_data.get(name)
    return getattr(form.instance, name) if value is None else value


# --- Quotas -------------------------------------------------------------------------------------


def check_allowed_models(value) -> list[str]:
    """The allowed-models list, or a ValidationError naming the first entry that is not a model."""
    if value in (None, ""):
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise forms.ValidationError(
            'Enter a list of models in quotes, e.g. ["apimart/Omni-Flash-Ext", "omniakey/*"], '
            "or [] for every model."
        )
    for item in value:
        provider, _, model = item.partition("/")
        if provider not in providers.REGISTRY:
            known = ", ".join(providers.REGISTRY)
            raise forms.ValidationError(
                f"{item!r} does not start with a gateway; use one of {known}, then /model or /*."
            )
        if model != "*" and catalog.get(provider, model) is None:
            offered = ", ".join(spec.model for spec in catalog.for_provider(provider))
            raise forms.ValidationError(
                f"{item!r} is not a model of that gateway; it offers {offered} (or use "
                f"{provider}/* for all of them)."
            )
    return value


class QuotaForm(forms.ModelForm):
    class Meta:
        fields = [
            "max_active_tasks",
            "max_credits_per_day",
            "max_credits_per_month",
            "allowed_models",
        ]

    def clean_allowed_models(self):
        return check_allowed_models(self.cleaned_data.get("allowed_models"))


class TeamQuotaForm(QuotaForm):
    class Meta(QuotaForm.Meta):
        model = TeamQuota
        # Only the team sets how many tasks one submit may make; members have no own value.
        fields = [*QuotaForm.Meta.fields, "max_tasks_per_run"]
        labels = {"max_tasks_per_run": "Most tasks per run"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        optional_limit(self, "max_tasks_per_run")

    def clean_max_tasks_per_run(self) -> int:
        return limit_or_current(self, "max_tasks_per_run")


class OwnQuotaForm(QuotaForm):
    class Meta(QuotaForm.Meta):
        model = Quota
        # The model's help says "no limit"; on a member's own row, empty means the team's value.
        help_texts = {
            "max_active_tasks": "Tasks that may run at once. Empty: the team default.",
            "max_credits_per_day": "Credits that may be spent per day. Empty: the team default.",
            "max_credits_per_month": (
                "Credits that may be spent per month. Empty: the team default."
            ),
            "allowed_models": (
                'Models this member may use, e.g. ["apimart/Omni-Flash-Ext", "omniakey/*"]. '
                "Empty: the team's list."
            ),
        }


def describe_team_defaults() -> str:
    team = TeamQuota.current()
    parts = [
        "no limit on tasks at once"
        if team.max_active_tasks is None
        else f"{team.max_active_tasks} tasks at once",
        "no daily limit"
        if team.max_credits_per_day is None
        else f"{team.max_credits_per_day} credits a day",
        "no monthly limit"
        if team.max_credits_per_month is None
        else f"{team.max_credits_per_month} credits a month",
        f"models {', '.join(team.allowed_models)}" if team.allowed_models else "every model",
    ]
    # The admin renders fieldset descriptions as HTML.
    return escape(f"Empty fields use the team defaults: {', '.join(parts)}.")


class QuotaInline(admin.StackedInline):
    model = Quota
    form = OwnQuotaForm
    max_num = 1
    verbose_name = "own limits"
    verbose_name_plural = "own limits"

    def get_fieldsets(self, request, obj=None):
        return [(None, {"fields": QuotaForm.Meta.fields, "description": describe_team_defaults()})]


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin):
    form = OwnQuotaForm
    fields = ["user", *QuotaForm.Meta.fields]
    list_display = (
        "user",
        "max_active_tasks",
        "max_credits_per_day",
        "max_credits_per_month",
        "allowed_models",
    )
    list_select_related = ("user",)
    search_fields = ("user__username", "user__display_name")


@admin.register(TeamQuota)
class TeamQuotaAdmin(admin.ModelAdmin):
    """One row of defaults: a second row would be ignored, and without any row there are none."""

    form = TeamQuotaForm
    list_display = (
        "__str__",
        "max_active_tasks",
        "max_credits_per_day",
        "max_credits_per_month",
        "allowed_models",
        "max_tasks_per_run",
    )

    def has_add_permission(self, request) -> bool:
        return super().has_add_permission(request) and not TeamQuota.objects.exists()

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


# --- Ledger -------------------------------------------------------------------------------------


LEDGER_COLUMNS = (
    "created_at",
    "kind",
    "amount",
    "balance_after",
    "task",
    "reason",
    "created_by",
)


class RecentEntriesFormSet(BaseInlineFormSet):
    def get_queryset(self):
        # Kept: the formset asks for its queryset once per row, and a fresh slice queries again.
        if not hasattr(self, "_recent"):
            self._recent = (
                super().get_queryset().select_related("task", "created_by")[:RECENT_ENTRIES]
            )
        return self._recent


class RecentEntriesInline(admin.TabularInline):
    model = LedgerEntry
    fk_name = "user"
    formset = RecentEntriesFormSet
    fields = LEDGER_COLUMNS
    readonly_fields = LEDGER_COLUMNS
    extra = 0
    max_num = 0
    verbose_name = "ledger entry"
    verbose_name_plural = f"{RECENT_ENTRIES} most recent ledger entries"

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(LedgerEntry)
class LedgerEntryAdmin(admin.ModelAdmin):
    """Every credit movement, for reading only: entries are append-only, in the database too."""

    list_display = (
        "user",
        "kind",
        "amount",
        "balance_after",
        "task",
        "reason",
        "created_by",
        "created_at",
    )
    list_filter = ("kind", ("created_at", admin.DateFieldListFilter), "user")
    search_fields = ("user__username", "idempotency_key", "task__code")
    list_select_related = ("user", "task", "created_by")
    fields = ("user", *LEDGER_COLUMNS, "idempotency_key")
    readonly_fields = fields

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


# --- Members ------------------------------------------------------------------------------------


class CreditsForm(forms.Form):
    amount = forms.IntegerField(
        label="Credits",
        min_value=1,
        max_value=MAX_CREDITS_PER_ACTION,
        error_messages={
            "required": "Enter how many credits.",
            "invalid": "Enter a whole number of credits, like 50.",
            "min_value": "Enter a number of credits above zero.",
            "max_value": f"At most {MAX_CREDITS_PER_ACTION:,} credits at a time.",
        },
    )
    reason = forms.CharField(
        max_length=300,
        required=False,
        help_text="Kept with the ledger entry.",
        widget=forms.TextInput(attrs={"size": 60}),
    )
    # One per opened form: sending the same form twice (a double click, a reload) finds the
    # entries the first send wrote instead of moving the credits again.
    token = forms.UUIDField(
        widget=forms.HiddenInput,
        error_messages={
            "required": "This form is out of date; start again from the user list.",
            "invalid": "This form is out of date; start again from the user list.",
        },
    )


class GrantForm(CreditsForm):
    verb = "Grant"


class DeductForm(CreditsForm):
    verb = "Deduct"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["reason"].required = True
        self.fields["reason"].error_messages["required"] = "Say why the credits are taken back."


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    list_display = (
        "username",
        "display_name",
        "email",
        "is_staff",
        "is_active",
        "balance",
        "last_login",
    )
    search_fields = ("username", "display_name", "email")
    readonly_fields = ("credit_balance", "ledger_link")
    actions = ["grant_credits", "deduct_credits"]
    fieldsets = (
        (None, {"fields": ("username", "password")}),
        ("Profile", {"fields": ("display_name", "email", "first_name", "last_name")}),
        ("Credits", {"fields": ("credit_balance", "ledger_link")}),
        (
            "Permissions",
            {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")},
        ),
        ("Important dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = (
        (
            None,
            {
                "classes": ("wide",),
                "fields": ("username", "display_name", "email", "password1", "password2"),
            },
        ),
    )

    def get_deleted_objects(self, objs, request):
        """Name what keeps a member with history from being deleted, in a few lines rather than
        one line per entry, and never as a permission problem: nobody may delete entries."""
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        if not protected:
            return deleted, counts, perms_needed, protected
        ids = [user.pk for user in objs]
        whose = "this account" if len(ids) == 1 else "these accounts"
        reasons = []
        entries = LedgerEntry.objects.filter(user__in=ids).count()
        if entries:
            reasons.append(f"{counted(entries, 'ledger entry')} of {whose} (the credits history)")
        written = LedgerEntry.objects.filter(created_by__in=ids).exclude(user__in=ids).count()
        if written:
            reasons.append(f"{counted(written, 'ledger entry')} {whose} wrote for other members")
        tasks = Task.objects.filter(user__in=ids).count()
        if tasks:
            reasons.append(f"{counted(tasks, 'generation task')} of {whose}")
        if reasons:
            reasons.append(
                "Credits history is kept for good. To stop someone from logging in, untick "
                "“Active” on their page instead."
            )
            protected = reasons
        return deleted, counts, set(), protected

    def get_inlines(self, request, obj):
        # A member being created has no limits or entries yet; the add form stays short.
        return [QuotaInline, RecentEntriesInline] if obj else []

    @admin.display(description="Balance", ordering="credit_balance")
    def balance(self, user: User) -> int:
        return user.credit_balance

    @admin.display(description="History")
    def ledger_link(self, user: User) -> str:
        count = user.ledger_entries.count()
        if not count:
            return "No ledger entries yet."
        url = reverse("admin:accounts_ledgerentry_changelist") + f"?user__id__exact={user.pk}"
        return format_html('<a href="{}">All {} ledger entries</a>', url, count)

    @admin.action(description="Grant credits to the selected members", permissions=["change"])
    def grant_credits(self, request, queryset):
        return self._move_credits(request, queryset, GrantForm, "grant_credits")

    @admin.action(description="Deduct credits from the selected members", permissions=["change"])
    def deduct_credits(self, request, queryset):
        return self._move_credits(request, queryset, DeductForm, "deduct_credits")

    def _move_credits(self, request, queryset, form_class, action: str):
        """Ask for the amount and reason, then move credits for every selected member or none."""
        users = list(queryset.order_by("username"))
        if "apply" not in request.POST:
            form = form_class(initial={"token": uuid.uuid4()})
        else:
            form = form_class(request.POST)
            if form.is_valid() and self._apply(request, form, users):
                return None  # back to the list, which shows the messages
        context = {
            **self.admin_site.each_context(request),
            "title": f"{form_class.verb} credits",
            "opts": self.opts,
            "form": form,
            "users": users,
            "action": action,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media,
        }
        return TemplateResponse(request, "admin/accounts/user/move_credits.html", context)

    def _apply(self, request, form, users) -> bool:
        amount, reason = form.cleaned_data["amount"], form.cleaned_data["reason"].strip()
        deducting = isinstance(form, DeductForm)
        move = ledger.deduct if deducting else ledger.grant
        kind = "adjustment" if deducting else "grant"
        token = form.cleaned_data["token"]
        done, repeated = [], []
        try:
            # All or nothing: one member short of credits leaves every balance as it was.
            with transaction.atomic():
                for user in users:
                    key = f"{kind}:admin:{token}:{user.pk}"
                    if LedgerEntry.objects.filter(idempotency_key=key).exists():
                        repeated.append(user)
                        continue
                    # A concurrent second send gets the first entry back from the ledger.
                    entry = move(user, amount, by=request.user, reason=reason, idempotency_key=key)
                    done.append((user, entry))
        except ledger.InsufficientCredits:
            balance = User.objects.values_list("credit_balance", flat=True).get(pk=user.pk)
            form.add_error(
                "amount",
                f"{user} has {balance} credits, so {amount} cannot be deducted. "
                "Nothing was deducted from anyone.",
            )
            return False
        for user, entry in done:
            if deducting:
                text = f"Deducted {amount} credits from {user}; balance now {entry.balance_after}."
            else:
                text = f"Granted {amount} credits to {user}; balance now {entry.balance_after}."
            self.message_user(request, text, messages.SUCCESS)
        for user in repeated:
            self.message_user(
                request,
                f"This form was already sent for {user}; nothing more was "
                f"{'deducted' if deducting else 'granted'}.",
                messages.WARNING,
            )
        return True


# --- Provider keys ------------------------------------------------------------------------------


class ProviderKeyAdminForm(forms.ModelForm):
    """The key's details plus a write-only secret: required on add, optional on edit."""

    secret = forms.CharField(
        label="Secret",
        required=False,
        # Not stripped: a pasted space is a mistake to point out, not to hide.
        strip=False,
        widget=forms.PasswordInput(
            render_value=False, attrs={"autocomplete": "off", "spellcheck": "false"}
        ),
    )

    class Meta:
        model = ProviderKey
        fields = [
            "provider",
            "label",
            "owner",
            "allowed_users",
            "base_url",
            "max_in_flight",
            "is_disabled",
        ]
        labels = {
            "base_url": "Base URL",
            "is_disabled": "Disabled",
            "allowed_users": "Shared with",
            "max_in_flight": "Tasks at once",
        }
        help_texts = {
            "owner": "Leave empty for a team key, shared with the members chosen below.",
            "allowed_users": "Members who may use this team key.",
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        optional_limit(self, "max_in_flight")
        field = self.fields["secret"]
        if self.instance._state.adding:
            field.required = True
            field.error_messages["required"] = "Paste the API key; it cannot be empty."
            field.help_text = (
                "Paste the key exactly as the gateway gave it. Once saved, only its last four "
                "characters are ever shown."
            )
        else:
            field.label = "New secret"
            field.help_text = (
                f"Leave empty to keep the current key ({self.instance.masked}); paste a new one "
                "to replace it."
            )

    def clean_base_url(self) -> str:
        return checked_base_url(self.cleaned_data["base_url"])

    def clean_max_in_flight(self) -> int:
        return limit_or_current(self, "max_in_flight")

    @sensitive_variables("secret")
    def clean_secret(self) -> str:
        secret = self.cleaned_data.get("secret", "")
        if secret:
            # Encrypted here, so the key's own validation message lands beside this field.
            self.instance.set_secret(secret)
        # Nothing of the secret stays in the form once it is encrypted.
        return ""

    def clean(self):
        cleaned = super().clean()
        owner, shared = cleaned.get("owner"), cleaned.get("allowed_users")
        if owner and shared:
            self.add_error(
                "allowed_users",
                "Only team keys are shared. Leave the owner empty to share this key, or leave "
                "this list empty for the owner's own key.",
            )
        gateway = providers.REGISTRY.get(cleaned.get("provider", ""))
        if gateway and not gateway.default_base_url and not cleaned.get("base_url"):
            self.add_error(
                "base_url",
                f"{gateway.name} has no public address: enter the address of your own "
                f"{gateway.name} site, e.g. https://video.example.com.",
            )
        return cleaned


class KeyOwnerFilter(admin.SimpleListFilter):
    title = "whose key"
    parameter_name = "whose"

    def lookups(self, request, model_admin):
        return [("team", "Team keys"), ("member", "Members' own keys")]

    def queryset(self, request, queryset):
        if self.value() == "team":
            return queryset.team()
        if self.value() == "member":
            return queryset.filter(owner__isnull=False)
        return queryset


@admin.register(ProviderKey)
class ProviderKeyAdmin(admin.ModelAdmin):
    form = ProviderKeyAdminForm
    list_display = (
        "label",
        "provider",
        "owner_or_team",
        "masked",
        "status",
        "at_once",
        "base_url_or_default",
        "health_status",
        "health_checked_at",
        "created_at",
    )
    list_filter = ("provider", KeyOwnerFilter, "is_disabled", "health_status")
    actions = ["test_keys"]
    # Each test may take a gateway deadline: a few keys at a time keep the page answering.
    keys_tested_at_once = 10
    list_select_related = ("owner",)
    search_fields = ("label", "owner__username", "owner__display_name")
    filter_horizontal = ("allowed_users",)
    readonly_fields = (
        "current_secret",
        "status",
        "invalid_message",
        "health_status",
        "health_checked_at",
        "health_message",
        "created_at",
        "updated_at",
    )

    def get_fieldsets(self, request, obj=None):
        # The limit is the gateway plan's: it belongs with the key, on the add form too.
        key = ("provider", "label", "owner", "allowed_users", "base_url", "max_in_flight")
        if obj is None:
            return [(None, {"fields": (*key, "secret")})]
        return [
            (None, {"fields": key}),
            ("Secret", {"fields": ("current_secret", "secret")}),
            ("State", {"fields": ("is_disabled", "status", "invalid_message")}),
            ("Last test", {"fields": ("health_status", "health_checked_at", "health_message")}),
            ("Dates", {"fields": ("created_at", "updated_at")}),
        ]

    # Error reports list the POST data; the secret is the one field they must not show.
    @method_decorator(sensitive_post_parameters("secret"))
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        return super().changeform_view(request, object_id, form_url, extra_context)

    @admin.action(description="Test the selected keys")
    def test_keys(self, request, queryset):
        """One free status query per key (see generations.insight.keyhealth); the answers are
        stored on the keys and listed here."""
        if queryset.count() > self.keys_tested_at_once:
            self.message_user(
                request,
                f"Select at most {self.keys_tested_at_once} keys to test at once.",
                messages.ERROR,
            )
            return
        answers = [(key, keyhealth.test_key(key)) for key in queryset]
        for key, answer in answers:
            level = messages.SUCCESS if answer.status == keyhealth.ACCEPTED else messages.WARNING
            self.message_user(request, f"{key.label}: {answer.message}", level)

    @admin.display(description="Owner", ordering="owner__username")
    def owner_or_team(self, key: ProviderKey) -> str:
        return str(key.owner) if key.owner_id else "Team"

    @admin.display(description="Secret")
    def masked(self, key: ProviderKey) -> str:
        return key.masked

    @admin.display(description="Current secret")
    def current_secret(self, key: ProviderKey) -> str:
        return key.masked

    @admin.display(description="Status")
    def status(self, key: ProviderKey) -> str:
        return key.status

    @admin.display(description="At once", ordering="max_in_flight")
    def at_once(self, key: ProviderKey) -> int:
        return key.max_in_flight

    @admin.display(description="Base URL", ordering="base_url")
    def base_url_or_default(self, key: ProviderKey) -> str:
        return key.base_url or "gateway default"


class TokenStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("expired", "Expired"), ("revoked", "Revoked")]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True, expires_at__gt=now)
        if self.value() == "expired":
            return queryset.filter(revoked_at__isnull=True, expires_at__lte=now)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Every member's API tokens, for revoking one that leaked or outlived its use. Tokens are
    made by members on their Profile page; their secrets exist nowhere to be shown."""

    list_display = ("name", "user", "scope", "hint", "created_at", "expires_at", "last_used_at",
                    "token_status")  # fmt: skip
    list_select_related = ("user",)
    list_filter = (TokenStatusFilter, "scope")
    search_fields = ("name", "hint", "user__username")
    readonly_fields = ("user", "name", "scope", "hint", "created_at", "expires_at",
                       "last_used_at", "revoked_at")  # fmt: skip
    fields = readonly_fields
    actions = ["revoke"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        # Read-only; revoking (an action) is the one change an admin makes.
        return False

    @admin.display(description="status")
    def token_status(self, token: ApiToken) -> str:
        return token.status

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request, queryset):
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"{count} token(s) revoked; they no longer open the API.")
