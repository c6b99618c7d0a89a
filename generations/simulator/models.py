"""A simulated gateway task. Its state is derived from the clock, so no worker drives it."""

from datetime import timedelta

from django.db import models
from django.utils import timezone

# Prompt words that steer the simulator (see the README).
BEHAVIOURS = ("fail", "slow", "rate-limit", "server-error", "malformed", "expired")


class SimulatedJob(models.Model):
    gateway = models.CharField(max_length=20)
    external_id = models.CharField(max_length=64, unique=True)
    model = models.CharField(max_length=64)
    prompt = models.TextField()
    is_image = models.BooleanField(default=False)
    media_seconds = models.PositiveSmallIntegerField(default=5)
    width = models.PositiveSmallIntegerField()
    height = models.PositiveSmallIntegerField()
    behaviours = models.JSONField(default=list)
    run_seconds = models.FloatField()
    webhook_url = models.URLField(max_length=1000, blank=True)
    status_calls = models.PositiveIntegerField(default=0)
    # The last four characters of the key that created it: tests read a key's jobs from here.
    key_last4 = models.CharField(max_length=4, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.gateway} {self.external_id}"

    def has(self, behaviour: str) -> bool:
        return behaviour in self.behaviours

    def elapsed(self, now=None) -> float:
        return ((now or timezone.now()) - self.created_at).total_seconds()

    def phase(self, now=None) -> str:
        """queued for the first sixth of the run, then running, then succeeded or failed."""
        elapsed = self.elapsed(now)
        if elapsed < self.run_seconds / 6:
            return "queued"
        if elapsed < self.run_seconds:
            return "running"
        return "failed" if self.has("fail") else "succeeded"

    def progress(self, now=None) -> int:
        return max(0, min(100, int(100 * self.elapsed(now) / self.run_seconds)))

    @property
    def finished_at(self):
        return self.created_at + timedelta(seconds=self.run_seconds)

    @property
    def extension(self) -> str:
        return "png" if self.is_image else "mp4"
