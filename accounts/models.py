"""Team members, their provider keys, the credits ledger and quotas.

A custom user model from the first migration, so later fields never need the painful swap
away from Django's built-in user. Money moves only through accounts.ledger and
generations.services; nothing else writes `credit_balance` or ledger entries.
"""

import hashlib
import secrets
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, URLValidator
from django.db import models
from django.db.models import Q
from django.db.models.signals import post_save
from django.dispatch import receiver
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from accounts import crypto
from generations import providers


class User(AbstractUser):
    """A member of the team. Logs in with `username`; teammates see `display_name`."""

    display_name = models.CharField(
        max_length=80, blank=True, help_text="The name teammates see in the gallery."
    )
    # The sum of the member's ledger entries, kept beside them in the same transaction so a
    # submit can lock one row and check the balance without summing the whole history.
    credit_balance = models.IntegerField(default=0, editable=False)

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"
        constraints = [
            models.CheckConstraint(
                condition=Q(credit_balance__gte=0), name="user_credit_balance_not_negative"
            )
        ]

    def __str__(self) -> str:
        return self.display_name or self.username


# --- Provider keys ---------------------------------------------------------------------------


class KeyUnusable(Exception):
    """The key cannot be used: disabled, refused by the gateway, or not decryptable."""


@sensitive_variables("secret")
def validate_secret(secret: str) -> None:
    if not secret or not secret.strip():
        raise ValidationError("Paste the API key; it cannot be empty.")
    if any(ch.isspace() for ch in secret):
        raise ValidationError("An API key has no spaces or line breaks; check what you pasted.")
    if len(secret) < 8:
        raise ValidationError("That is too short to be an API key.")


validate_base_url = URLValidator(
    schemes=["http", "https"], message="Enter an address that starts with http:// or https://."
)


# The demo's simulator keys are labelled "Simulator (APIMart)" and so on.
SIMULATOR_LABEL_PREFIX = "Simulator ("


class ProviderKeyQuerySet(models.QuerySet):
    def visible_to(self, user) -> "ProviderKeyQuerySet":
        """The member's own keys and the team keys shared with them."""
        return self.filter(Q(owner=user) | Q(owner__isnull=True, allowed_users=user)).distinct()

    def usable_by(self, user, provider: str) -> "ProviderKeyQuerySet":
        return self.visible_to(user).filter(
            provider=provider, is_disabled=False, invalid_at__isnull=True, needs_reentry=False
        )

    def team(self) -> "ProviderKeyQuerySet":
        return self.filter(owner__isnull=True)

    def simulator(self) -> "ProviderKeyQuerySet":
        """The demo's simulator keys: the team keys ensure_demo made for this site's simulator."""
        return self.team().filter(
            label__startswith=SIMULATOR_LABEL_PREFIX, base_url__contains="/simulator/"
        )

    def choices_for(self, user, provider: str) -> "ProviderKeyQuerySet":
        """The keys a member may pay with on `provider`, their own first: the first is the
        default the create form offers."""
        return self.usable_by(user, provider).order_by(
            models.Case(models.When(owner=user, then=0), default=1), "label", "pk"
        )


class ProviderKey(models.Model):
    """An API key for one gateway: a member's own, or a team key shared by an admin."""

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    provider = models.CharField(max_length=20, choices=providers.choices())
    label = models.CharField(max_length=80)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="provider_keys",
        help_text="Empty for a team key.",
    )
    allowed_users = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        blank=True,
        related_name="shared_provider_keys",
        help_text="Members who may use this team key.",
    )
    base_url = models.CharField(
        max_length=500,
        blank=True,
        validators=[validate_base_url],
        help_text="Leave empty for the gateway's public address.",
    )
    secret_ciphertext = models.TextField(editable=False)
    secret_last4 = models.CharField(max_length=4, editable=False)
    is_disabled = models.BooleanField(default=False)
    max_in_flight = models.PositiveSmallIntegerField(
        "tasks at the gateway at once",
        default=4,
        validators=[MinValueValidator(1), MaxValueValidator(100)],
        help_text=(
            "How many of this key's tasks may be running at its gateway at the same time "
            "(gateways allow 2 to 40 by plan). More wait in Omniweb's queue for a free slot."
        ),
    )
    invalid_at = models.DateTimeField(null=True, blank=True, editable=False)
    invalid_message = models.TextField(blank=True, editable=False)
    # Key health: the last "Test key" (by a member, an admin, or the daily schedule for team
    # keys), which sends the cheapest authenticated request the gateway documents.
    health_checked_at = models.DateTimeField(null=True, blank=True, editable=False)
    health_status = models.CharField(
        max_length=10,
        blank=True,
        editable=False,
        choices=[("accepted", "Accepted"), ("refused", "Refused"), ("error", "Could not tell")],
    )
    health_message = models.CharField(max_length=300, blank=True, editable=False)
    needs_reentry = models.BooleanField(default=False, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ProviderKeyQuerySet.as_manager()

    class Meta:
        ordering = ["provider", "label"]

    def __str__(self) -> str:
        return f"{self.label} ({self.provider_name} {self.masked})"

    @property
    def provider_name(self) -> str:
        return providers.REGISTRY[self.provider].name if self.provider in providers.REGISTRY else ""

    @property
    def masked(self) -> str:
        return f"…{self.secret_last4}" if self.secret_last4 else "(no secret)"

    @property
    def is_team_key(self) -> bool:
        return self.owner_id is None

    @property
    def status(self) -> str:
        if self.needs_reentry:
            return "needs re-entry"
        if self.invalid_at:
            return "refused by the gateway"
        if self.is_disabled:
            return "disabled"
        return "active"

    @sensitive_variables("secret")
    def set_secret(self, secret: str) -> None:
        """Store a new secret; a key refused earlier gets its chance again."""
        validate_secret(secret)
        self.secret_ciphertext = crypto.encrypt(secret)
        self.secret_last4 = secret[-4:]
        self.invalid_at = None
        self.invalid_message = ""
        self.needs_reentry = False

    @sensitive_variables("secret")
    def credentials(self) -> providers.Credentials:
        """Decrypted credentials for one gateway call. Fails closed, and says so on the key."""
        if self.is_disabled or self.invalid_at or self.needs_reentry:
            raise KeyUnusable(f"The key {self.label!r} is {self.status}.")
        try:
            secret = crypto.decrypt(self.secret_ciphertext)
        except crypto.DecryptionError as exc:
            ProviderKey.objects.filter(pk=self.pk).update(needs_reentry=True)
            self.needs_reentry = True
            raise KeyUnusable(
                f"The key {self.label!r} cannot be decrypted; its owner must enter it again."
            ) from exc
        return providers.Credentials(api_key=secret, base_url=self.base_url or None)

    def mark_invalid(self, message: str, when: datetime | None = None) -> None:
        """The gateway refused this key (401): keep it out of use until its secret is replaced."""
        when = when or timezone.now()
        ProviderKey.objects.filter(pk=self.pk).update(invalid_at=when, invalid_message=message)
        self.invalid_at, self.invalid_message = when, message
        from generations.insight.alerts import key_refused_on_commit  # (generations imports us)

        key_refused_on_commit(self, message)


@receiver(post_save, sender=User, dispatch_uid="accounts.share_simulator_keys")
def share_simulator_keys(sender, instance: User, created: bool, raw: bool = False, **kwargs):
    """In the demo every member may use the simulator keys, so a member an admin adds can
    generate at once; ensure_demo shares them with the members there are when it runs."""
    if created and not raw and settings.SIMULATOR_ENABLED:
        instance.shared_provider_keys.add(*ProviderKey.objects.simulator())


# --- Credits ledger ---------------------------------------------------------------------------


class LedgerEntry(models.Model):
    """One change of a member's balance. Append-only: the database refuses edits and deletes."""

    class Kind(models.TextChoices):
        GRANT = "grant", "Grant"
        DEBIT = "debit", "Debit"
        REFUND = "refund", "Refund"
        ADJUSTMENT = "adjustment", "Adjustment"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="ledger_entries"
    )
    kind = models.CharField(max_length=12, choices=Kind.choices)
    amount = models.IntegerField(help_text="Credits; positive adds to the balance.")
    balance_after = models.IntegerField()
    task = models.ForeignKey(
        "generations.Task",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="ledger_entries",
    )
    idempotency_key = models.CharField(max_length=120, unique=True)
    reason = models.CharField(max_length=300, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "ledger entries"
        constraints = [
            models.CheckConstraint(condition=~Q(amount=0), name="ledger_amount_not_zero"),
            models.CheckConstraint(
                condition=Q(kind="grant", amount__gt=0)
                | Q(kind="debit", amount__lt=0, task__isnull=False)
                | Q(kind="refund", amount__gt=0, task__isnull=False)
                | Q(kind="adjustment"),
                name="ledger_amount_sign_matches_kind",
            ),
            models.CheckConstraint(
                condition=Q(balance_after__gte=0), name="ledger_balance_after_not_negative"
            ),
            models.UniqueConstraint(
                fields=["task", "kind"],
                condition=Q(kind__in=["debit", "refund"]),
                name="ledger_one_debit_and_one_refund_per_task",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.amount:+d} for {self.user}"


# --- Quotas -----------------------------------------------------------------------------------


class QuotaFields(models.Model):
    max_active_tasks = models.PositiveIntegerField(
        null=True, blank=True, help_text="Tasks that may run at once."
    )
    max_credits_per_day = models.PositiveIntegerField(
        null=True, blank=True, help_text="Credits that may be spent per day."
    )
    max_credits_per_month = models.PositiveIntegerField(
        null=True, blank=True, help_text="Credits that may be spent per month."
    )
    allowed_models = models.JSONField(
        default=list,
        blank=True,
        help_text='Models that may be used, e.g. ["apimart/Omni-Flash-Ext", "omniakey/*"].',
    )

    class Meta:
        abstract = True


# The most an admin may allow in one run. The batch page posts each row back in its form (up
# to seven fields and one prompt a row), so Django's request limits in settings are sized
# for this many rows.
MAX_TASKS_PER_RUN = 250


class TeamQuota(QuotaFields):
    """The team-wide defaults; a member's own Quota overrides them field by field.
    Empty fields mean no limit."""

    max_tasks_per_run = models.PositiveIntegerField(
        default=100,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_TASKS_PER_RUN)],
        help_text="The most tasks one submit (variations, a comparison, a batch) may make.",
    )

    # Always 1: the database keeps this table to a single row.
    singleton = models.PositiveSmallIntegerField(default=1, unique=True, editable=False)

    class Meta:
        verbose_name = "team quota defaults"
        verbose_name_plural = "team quota defaults"
        constraints = [
            models.CheckConstraint(condition=Q(singleton=1), name="team_quota_single_row")
        ]

    def __str__(self) -> str:
        return "Team quota defaults"

    @classmethod
    def current(cls) -> "TeamQuota":
        return cls.objects.order_by("pk").first() or cls()


class Quota(QuotaFields):
    """A member's own limits; an empty field falls back to the team default."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="quota"
    )

    def __str__(self) -> str:
        return f"Quota of {self.user}"


# --- Personal access tokens -------------------------------------------------------------------


# What a token looks like: a fixed prefix (so a leaked one is recognisable in logs and by secret
# scanners), then 32 random bytes. Only its SHA-256 is stored: the secret has 256 bits of
# entropy, so a fast hash is as safe as a slow one and keeps each API call to one indexed read.
TOKEN_PREFIX = "omw_"
TOKEN_DAYS_DEFAULT = 90
TOKEN_DAYS_MAX = 366
MAX_TOKENS_PER_MEMBER = 20


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


class Revocable(models.Model):
    """A grant of access (an API token, a share link) that ends at `expires_at` or when it is
    revoked, whichever comes first."""

    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True

    @property
    def status(self) -> str:
        if self.revoked_at:
            return "revoked"
        if self.expires_at <= timezone.now():
            return "expired"
        return "active"

    def revoke(self) -> bool:
        """Revoke once; False when it already was."""
        now = timezone.now()
        done = type(self).objects.filter(pk=self.pk, revoked_at__isnull=True).update(revoked_at=now)
        if done:
            self.revoked_at = now
        return bool(done)


class ApiTokenQuerySet(models.QuerySet):
    def live(self, now: datetime | None = None) -> "ApiTokenQuerySet":
        """Tokens that still open the API: not revoked, not expired, their member active."""
        now = now or timezone.now()
        return self.filter(revoked_at__isnull=True, expires_at__gt=now, user__is_active=True)


class ApiToken(Revocable):
    """A member's personal access token for the API. It authenticates API requests only, never a
    browser session; the secret is shown once when it is made and never stored."""

    class Scope(models.TextChoices):
        READ = "read", "Read only"
        WRITE = "write", "Read and generate"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=80, help_text="What uses it, e.g. “nightly storyboard”.")
    scope = models.CharField(max_length=8, choices=Scope.choices, default=Scope.READ)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    # The first characters after the prefix, so a member can tell their tokens apart.
    hint = models.CharField(max_length=12, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.hint}…)"

    @classmethod
    @sensitive_variables("secret")
    def issue(cls, user, *, name: str, scope: str, days: int) -> tuple["ApiToken", str]:
        """A new token and its secret; the caller shows the secret once and forgets it."""
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = timezone.now()
        token = cls.objects.create(
            user=user,
            name=name,
            scope=scope,
            token_hash=hash_token(secret),
            hint=secret[: len(TOKEN_PREFIX) + 6],
            created_at=now,
            expires_at=now + timedelta(days=days),
        )
        return token, secret

    @property
    def can_write(self) -> bool:
        return self.scope == self.Scope.WRITE
