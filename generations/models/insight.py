"""What the insight pages keep: which alerts admins want, and the alerts that were sent (so
one subject is mailed at most once an hour)."""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class AlertSettings(models.Model):
    """Which alert emails are sent; one row, edited in the admin. Every type is on until an
    admin turns it off."""

    limits = models.BooleanField(
        default=True, help_text="A member reached 80% or 100% of a daily or monthly limit."
    )
    key_refused = models.BooleanField(
        default=True, help_text="A gateway refused a key (401 or 402)."
    )
    stuck_tasks = models.BooleanField(
        default=True, help_text="Tasks need review or are past their deadline."
    )
    failure_rate = models.BooleanField(
        default=True,
        help_text="A gateway's failure rate over the last hour is far above its usual.",
    )
    # Always 1: the database keeps this table to a single row.
    singleton = models.PositiveSmallIntegerField(default=1, unique=True, editable=False)

    class Meta:
        verbose_name = "alert settings"
        verbose_name_plural = "alert settings"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(singleton=1), name="alert_settings_single_row"
            )
        ]

    def __str__(self) -> str:
        return "Alert settings"

    @classmethod
    def current(cls) -> AlertSettings:
        return cls.objects.order_by("pk").first() or cls()


class AlertSent(models.Model):
    """One alert email: its kind, its subject (what de-duplicates it), who got it and when."""

    kind = models.CharField(max_length=20)
    subject = models.CharField(max_length=200, db_index=True)
    recipients = models.TextField(blank=True)
    body = models.TextField(blank=True)
    sent_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-sent_at", "-id"]
        verbose_name = "alert sent"
        verbose_name_plural = "alerts sent"

    def __str__(self) -> str:
        return self.subject
