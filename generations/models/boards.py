"""Boards: named collections of results a member or the team gathers, by project or theme.

A board is private (its owner alone sees and edits it) or the team's (every member sees and
edits it); another member's private board does not exist for anyone else. An entry refers to a
task; deleting a board, or taking a result off it, never touches the result. A viewer sees only
the entries whose task they may see (Task.visible_to), so a private result a teammate put on a
team board stays theirs.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from generations.models import Task, Visibility

BOARD_NAME_CHARS = 80
BOARD_DESCRIPTION_CHARS = 1000
# Bounds (RELIABILITY): how many boards one member may make, and entries one board may hold.
MAX_BOARDS_PER_MEMBER = 200
MAX_ITEMS_PER_BOARD = 20_000


class BoardQuerySet(models.QuerySet):
    def visible_to(self, user) -> BoardQuerySet:
        """The boards a member may see, which are also those they may edit: their own, and
        every team board."""
        return self.filter(models.Q(owner=user) | models.Q(visibility=Visibility.TEAM))

    def editable_by(self, user) -> BoardQuerySet:
        return self.visible_to(user)


class Board(models.Model):
    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="boards"
    )
    name = models.CharField(max_length=BOARD_NAME_CHARS)
    description = models.TextField(max_length=BOARD_DESCRIPTION_CHARS, blank=True)
    visibility = models.CharField(
        max_length=10, choices=Visibility.choices, default=Visibility.TEAM
    )
    # The chosen cover; without one, a board shows its newest entry.
    cover = models.ForeignKey(
        Task, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    objects = BoardQuerySet.as_manager()

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name


class BoardItem(models.Model):
    """A result on a board."""

    board = models.ForeignKey(Board, on_delete=models.CASCADE, related_name="items")
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="board_items")
    added_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    added_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["board", "task"], name="one_entry_per_board_and_task")
        ]
        indexes = [
            # A board's page lists its entries newest first, a page at a time by id.
            models.Index(models.F("board"), models.F("id").desc(), name="board_item_newest"),
        ]

    def __str__(self) -> str:
        return f"{self.task} on {self.board}"
