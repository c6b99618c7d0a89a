"""Presets: Create settings that worked, saved under a name to use again.

A preset holds a model and its settings, and optionally a prompt in which `{slot}` marks the
part that changes from one use to the next. A personal preset is its owner's alone; a team
preset is offered to every member, and admins may mark team presets as featured. The catalog
moves on (a model is withdrawn, a value no longer allowed): `Preset.problems()` says what no
longer fits instead of filling the form with it.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from generations.models import Visibility
from generations.providers import GenerationRequest, catalog

PRESET_NAME_CHARS = 80
SLOT = "{slot}"
# Bounds (RELIABILITY): presets one member may keep.
MAX_PRESETS_PER_MEMBER = 100


class PresetQuerySet(models.QuerySet):
    def visible_to(self, user) -> PresetQuerySet:
        """The member's own presets and the team's."""
        return self.filter(models.Q(owner=user) | models.Q(visibility=Visibility.TEAM))

    def for_create(self, user) -> PresetQuerySet:
        """As Create offers them: featured first, then the member's own, then by name."""
        return self.visible_to(user).order_by(
            "-featured",
            models.Case(models.When(owner=user, then=0), default=1),
            "name",
            "id",
        )


class Preset(models.Model):
    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="presets"
    )
    name = models.CharField(max_length=PRESET_NAME_CHARS)
    visibility = models.CharField(
        max_length=10, choices=Visibility.choices, default=Visibility.PRIVATE
    )
    provider = models.CharField(max_length=20)
    model = models.CharField(max_length=64)
    duration = models.PositiveIntegerField(null=True, blank=True)
    resolution = models.CharField(max_length=20, blank=True)
    aspect_ratio = models.CharField(max_length=10, blank=True)
    prompt = models.TextField(
        max_length=catalog.PROMPT_MAX_CHARS,
        blank=True,
        help_text="Optional; {slot} marks the words to fill in each time.",
    )
    featured = models.BooleanField(
        default=False, help_text="Shown first on Create for everyone (team presets only)."
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    objects = PresetQuerySet.as_manager()

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(featured=False) | models.Q(visibility="team"),
                name="only_team_presets_are_featured",
            )
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def model_key(self) -> str:
        return f"{self.provider}/{self.model}"

    @property
    def spec(self) -> catalog.ModelSpec | None:
        return catalog.get(self.provider, self.model)

    @property
    def has_slot(self) -> bool:
        return SLOT in self.prompt

    def request(self, prompt: str | None = None) -> GenerationRequest:
        return GenerationRequest(
            provider=self.provider,
            model=self.model,
            prompt=prompt if prompt is not None else (self.prompt or "x"),
            duration=self.duration,
            resolution=self.resolution or None,
            aspect_ratio=self.aspect_ratio or None,
        )

    def problems(self) -> list[str]:
        """What in this preset the catalog no longer allows, in words for the member; empty
        when it still fits."""
        spec = self.spec
        if spec is None:
            return [f"The model {self.model_key} is no longer offered."]
        errors = catalog.validate(self.request())
        return [
            message for name, messages in errors.items() if name != "prompt" for message in messages
        ]
