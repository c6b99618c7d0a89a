"""Team members.

A custom user model from the first migration, so later fields (quotas, cached balance) never
need the painful swap away from Django's built-in user.
"""

from django.contrib.auth.models import AbstractUser
from django.db import models


class User(AbstractUser):
    """A member of the team. Logs in with `username`; teammates see `display_name`."""

    display_name = models.CharField(
        max_length=80, blank=True, help_text="The name teammates see in the gallery."
    )

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"

    def __str__(self) -> str:
        return self.display_name or self.username
