"""`GET /healthz`: is the database up, is the broker reachable, is a worker alive?

Load balancers and the run command read it. It answers 200 whenever the database answers, so a
dead worker shows up in the body (for people and monitors) without taking the site out of a
load balancer that can still serve pages.
"""

import logging

from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.status import Stat

logger = logging.getLogger(__name__)


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
    }
    return JsonResponse(body, status=200 if database["ok"] else 503)
