from django.apps import AppConfig
from django.db.models.signals import post_migrate


class GenerationsConfig(AppConfig):
    name = "generations"
    verbose_name = "Generations"

    def ready(self) -> None:
        from django.conf import settings
        from PIL import Image

        from generations import checks  # noqa: F401  (registers the queue configuration check)
        from generations.insight import alerts
        from generations.insight.keyhealth import ensure_schedule as keyhealth_schedule
        from generations.jobs import ensure_schedule

        # Pillow's decompression-bomb limit, in every process: uploads and results above it are
        # refused before decoding (forms, fetch), and Pillow itself refuses to open anything of
        # more than twice it, whichever code asks.
        Image.MAX_IMAGE_PIXELS = settings.UPLOAD_MAX_PIXELS

        # Schedules are rows in the database: created after migrate, never at import time.
        post_migrate.connect(ensure_schedule, sender=self, dispatch_uid="omniweb-schedule")
        post_migrate.connect(keyhealth_schedule, sender=self, dispatch_uid="omniweb-key-health")
        post_migrate.connect(alerts.ensure_schedule, sender=self, dispatch_uid="omniweb-alerts")
