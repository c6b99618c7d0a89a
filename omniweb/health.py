"""`GET /healthz`: is the database up, is the broker reachable, is a worker alive, are tasks
moving?

Load balancers and the run command read it. It answers 200 whenever the database answers, so a
dead worker or a pile of stuck tasks shows up in the body (for people and monitors) without
taking the site out of a load balancer that can still serve pages.

Load balancers ask often, from every host, so one answer costs the same whatever the backlog:
a `SELECT 1`, the process's one broker (omniweb/broker.py) for the ping and the cluster
heartbeats, and one cache read for the task figures. Counting the active tasks reads every one
of them (14 ms at 16,000), so the count is shared through the cache and made again at most once
every FRESH_SECONDS by whichever request first finds it older; `tasks_as_of` in the body says
when it was made.
"""

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.core.cache import cache
from django.db import connection
from django.db.models import Count, Min, Q
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from django_q.conf import Conf
from django_q.status import Stat

from generations.models import Task
from omniweb.broker import shared_broker

logger = logging.getLogger(__name__)

# How old the task figures may be before a request counts again. Monitors alert on figures
# that stay wrong for a minute; a few seconds of delay is invisible to them.
FRESH_SECONDS = 5
# Older figures are never shown: after a quiet spell the first request counts for itself.
KEEP_SECONDS = 60
COUNTS_KEY = "omniweb:health:task-counts"
COUNTING_KEY = "omniweb:health:task-counts:counting"


def past_deadline(now: datetime, older_than: timedelta | None = None) -> Q:
    """Tasks past their deadline at `now`: their own `deadline_at`, or for a task without one,
    TASK_DEADLINE_MINUTES after it was created. With `older_than`, simply every task created
    longer ago than that. Combine with `Task.objects.active()`: ended tasks are never stuck."""
    if older_than is not None:
        return Q(created_at__lt=now - older_than)
    default = now - timedelta(minutes=settings.TASK_DEADLINE_MINUTES)
    return Q(deadline_at__lt=now) | Q(deadline_at__isnull=True, created_at__lt=default)


def database_status() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any driver error means "down"; the message says why
        logger.warning("health: database check failed: %s", exc)
        return {"ok": False, "error": exc.__class__.__name__}
    return {"ok": True, "vendor": connection.vendor}


def broker_status() -> dict:
    name = "redis" if Conf.REDIS and not Conf.ORM else "orm"
    try:
        ok = bool(shared_broker().ping())
    except Exception as exc:
        logger.warning("health: broker check failed: %s", exc)
        return {"ok": False, "name": name, "error": exc.__class__.__name__}
    return {"ok": ok, "name": name}


def worker_status() -> dict:
    """A worker is alive while its cluster keeps refreshing its heartbeat.

    django-q2 writes each cluster's status every half second with a three-second expiry, so a
    cluster that died or was killed disappears from the list within seconds.
    """
    try:
        stats = Stat.get_all(shared_broker())
    except Exception as exc:
        logger.warning("health: worker check failed: %s", exc)
        return {"alive": False, "clusters": 0, "error": exc.__class__.__name__}
    running = [s for s in stats if s.status not in (Conf.STOPPED, Conf.STOPPING)]
    last_seen = max((s.timestamp for s in running), default=None)
    return {
        "alive": bool(running),
        "clusters": len(running),
        "last_seen": last_seen.isoformat() if last_seen else None,
    }


def count_tasks() -> dict:
    """Active tasks, when the oldest was created and how many are past their deadline, as of
    now: one query over every active task."""
    now = timezone.now()
    counts = Task.objects.active().aggregate(
        active=Count("pk"),
        oldest=Min("created_at"),
        stuck=Count("pk", filter=past_deadline(now)),
    )
    return {"as_of": now, **counts}


def recent_task_counts() -> dict:
    """`count_tasks()` made at most FRESH_SECONDS ago, by this request or an earlier one.

    Every process shares one count through the cache. When it is older than FRESH_SECONDS the
    request that takes the counting mark (`cache.add`, which only one caller wins) counts again
    while the others answer with the count they found; the mark expires by itself if that
    request dies, and a failed count leaves the older one in place.
    """
    kept = cache.get(COUNTS_KEY)
    if kept is not None:
        age = (timezone.now() - kept["as_of"]).total_seconds()
        if age < FRESH_SECONDS or not cache.add(COUNTING_KEY, True, timeout=FRESH_SECONDS):
            return kept
    counts = count_tasks()
    cache.set(COUNTS_KEY, counts, timeout=KEEP_SECONDS)
    if kept is not None:
        cache.delete(COUNTING_KEY)
    return counts


def task_status(now: datetime) -> tuple[dict, datetime | None]:
    """The task figures the body shows, and when they were counted.

    The age of the oldest task is worked out at `now` from its creation time, so it stays exact
    while the count is reused; the active and stuck numbers are as of the count.
    """
    try:
        counts = recent_task_counts()
    except Exception as exc:  # the database or the cache failed; say which error
        logger.warning("health: task check failed: %s", exc)
        return {"error": exc.__class__.__name__}, None
    oldest = counts["oldest"]
    figures = {
        "active": counts["active"],
        "oldest_active_seconds": max(0, int((now - oldest).total_seconds())) if oldest else None,
        "stuck": counts["stuck"],
    }
    return figures, counts["as_of"]


@login_not_required
@require_GET
@never_cache
def healthz(request):
    now = timezone.now()
    database = database_status()
    if database["ok"]:
        tasks, as_of = task_status(now)
    else:
        tasks, as_of = {"error": "database unavailable"}, None
    body = {
        "status": "ok" if database["ok"] else "error",
        "time": now.isoformat(),
        "database": database,
        "broker": broker_status(),
        "worker": worker_status(),
        "tasks": tasks,
        "tasks_as_of": as_of.isoformat() if as_of else None,
    }
    return JsonResponse(body, status=200 if database["ok"] else 503)
