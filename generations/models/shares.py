"""Share links: a read-only page of a board or of one result for people outside the team.

A link is a random token in the address (unguessable: 32 random bytes), with an expiry and a
revoke. Whoever holds a live link sees what it shares, and only that: a board's results (those
its creator may see, when the page is opened), or one result; with prompts only if the creator
chose so. An expired or revoked link, or one whose board or result is gone, answers 404.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.models import Revocable
from generations.models import Task
from generations.models.boards import Board

SHARE_DAYS_DEFAULT = 7
SHARE_DAYS_MAX = 90
# Bounds (RELIABILITY): live links one member may hold.
MAX_LIVE_LINKS_PER_MEMBER = 100


def new_token() -> str:
    return secrets.token_urlsafe(32)


class ShareLinkQuerySet(models.QuerySet):
    def live(self, now=None) -> ShareLinkQuerySet:
        now = now or timezone.now()
        return self.filter(revoked_at__isnull=True, expires_at__gt=now, created_by__is_active=True)


class ShareLink(Revocable):
    token = models.CharField(max_length=64, unique=True, default=new_token, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="share_links"
    )
    board = models.ForeignKey(
        Board, on_delete=models.CASCADE, null=True, blank=True, related_name="share_links"
    )
    task = models.ForeignKey(
        Task, on_delete=models.CASCADE, null=True, blank=True, related_name="share_links"
    )
    include_prompts = models.BooleanField(
        default=False, help_text="Show each result's prompt on the shared page."
    )
    created_at = models.DateTimeField(default=timezone.now)
    views = models.PositiveIntegerField(default=0, editable=False)
    last_viewed_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = ShareLinkQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(board__isnull=False, task__isnull=True)
                | models.Q(board__isnull=True, task__isnull=False),
                name="share_link_shares_one_thing",
            )
        ]

    def __str__(self) -> str:
        return f"Share of {self.board or self.task}"

    @classmethod
    def default_expiry(cls):
        return timezone.now() + timedelta(days=SHARE_DAYS_DEFAULT)
