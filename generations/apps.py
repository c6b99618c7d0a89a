from django.apps import AppConfig
from django.db.models.signals import post_migrate


class GenerationsConfig(AppConfig):
    name = "generations"
    verbose_name = "Generations"

    def ready(self) -> None:
        from generations import checks  # noqa: F401  (registers the queue configuration check)
        from generations.jobs import ensure_schedule

        # Schedules are rows in the database: created after migrate, never at import time.
        post_migrate.connect(ensure_schedule, sender=self, dispatch_uid="omniweb-schedule")
