"""`GET /healthz`: is the database up, is the broker reachable, is a worker alive, are tasks
moving?

Load balancers and the run command read it. It answers 200 whenever the database answers, so a
dead worker or a pile of stuck tasks shows up in the body (for people and monitors) without
taking the site out of a load balancer that can still serve pages.
"""

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.db.models import Count, Min, Q
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.status import Stat

from generations.models import Task

logger = logging.getLogger(__name__)


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
    broker = get_broker()
    name = "redis" if Conf.REDIS and not Conf.ORM else "orm"
    try:
        ok = bool(broker.ping())
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
        stats = Stat.get_all(get_broker())
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


def task_status() -> dict:
    """Active tasks, the age of the oldest and how many are past their deadline: one query."""
    now = timezone.now()
    try:
        counts = Task.objects.active().aggregate(
            active=Count("pk"),
            oldest=Min("created_at"),
            stuck=Count("pk", filter=past_deadline(now)),
        )
    except Exception as exc:
        logger.warning("health: task check failed: %s", exc)
        return {"error": exc.__class__.__name__}
    oldest = counts["oldest"]
    return {
        "active": counts["active"],
        "oldest_active_seconds": max(0, int((now - oldest).total_seconds())) if oldest else None,
        "stuck": counts["stuck"],
    }


@login_not_required
@require_GET
@never_cache
def healthz(request):
    database = database_status()
    body = {
        "status": "ok" if database["ok"] else "error",
        "time": timezone.now().isoformat(),
        "database": database,
        "broker": broker_status(),
        "worker": worker_status(),
        "tasks": task_status() if database["ok"] else {"error": "database unavailable"},
    }
    return JsonResponse(body, status=200 if database["ok"] else 503)
