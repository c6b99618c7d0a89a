"""Start-up check of the django-q2 configuration.

django-q2 delivers a job again when it has not been acknowledged within `retry` seconds; if a
job may run longer than that (`timeout`), two workers run it at once. Unbounded attempts turn
one broken job into an endless loop, and catch-up replays every missed schedule after downtime.
"""

from django.conf import settings
from django.core.checks import Error, register


@register("omniweb")
def check_queue_configuration(app_configs, **kwargs) -> list[Error]:
    conf = getattr(settings, "Q_CLUSTER", {})
    errors = []
    timeout, retry = conf.get("timeout"), conf.get("retry")
    if timeout is None or retry is None or timeout >= retry:
        errors.append(
            Error(
                f"Q_CLUSTER timeout ({timeout}) must be set and below retry ({retry}).",
                hint="Otherwise a slow job is handed to a second worker while it still runs.",
                id="omniweb.E001",
            )
        )
    if not 1 <= conf.get("max_attempts", 0) <= 5:
        errors.append(
            Error(
                "Q_CLUSTER max_attempts must be between 1 and 5.",
                hint="Our jobs retry with their own backoff; the queue should give up quickly.",
                id="omniweb.E002",
            )
        )
    if conf.get("catch_up", True):
        errors.append(
            Error(
                "Q_CLUSTER catch_up must be False.",
                hint="Replaying every missed schedule after downtime floods the gateways.",
                id="omniweb.E003",
            )
        )
    return errors
