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


@register("omniweb")
def check_engine_timing(app_configs, **kwargs) -> list[Error]:
    """A dispatcher run works DISPATCH_SECONDS and then finishes what it leased; one leased
    task takes at most a gateway call (connect + read timeouts) and a download. The lease must
    outlast that, and the run must end before django-q2 kills it."""
    from generations.providers.http import timeout
    from generations.providers.omixa import WAIT_SECONDS

    limits = timeout(extra_read=WAIT_SECONDS)  # Omixa's server-side wait is the longest call
    call = limits.connect + limits.read
    # A download checks its budget between chunks, so a server that stalls near the end can
    # stretch it to twice DOWNLOAD_SECONDS.
    one_task = call + 2 * settings.DOWNLOAD_SECONDS
    errors = []
    if one_task >= settings.LEASE_SECONDS:
        errors.append(
            Error(
                f"LEASE_SECONDS ({settings.LEASE_SECONDS}) must be above {one_task:.0f}, the "
                "longest one task can take (a gateway call and a download).",
                hint="Otherwise a second worker takes over a task that is still being worked on.",
                id="omniweb.E004",
            )
        )
    timeout = getattr(settings, "Q_CLUSTER", {}).get("timeout") or 0
    if timeout <= settings.DISPATCH_SECONDS + settings.LEASE_SECONDS:
        errors.append(
            Error(
                f"DISPATCH_SECONDS + LEASE_SECONDS ({settings.DISPATCH_SECONDS} + "
                f"{settings.LEASE_SECONDS}) must be below the Q_CLUSTER timeout ({timeout}).",
                hint="Otherwise django-q2 kills a dispatcher while it finishes its tasks.",
                id="omniweb.E005",
            )
        )
    return errors
