"""gunicorn settings for serving Omniweb in production: `gunicorn omniweb.wsgi -c gunicorn.conf.py`.

Meant to run behind a reverse proxy that terminates TLS (docs/deploy.md). Read from the
environment: OMNIWEB_BIND (address:port or unix:/path, default 127.0.0.1:8000), WEB_CONCURRENCY
(worker processes, default 2 per core plus one, at most 8), FORWARDED_ALLOW_IPS (addresses of
the proxies whose X-Forwarded-* headers gunicorn believes, default 127.0.0.1) and
OMNIWEB_MAX_REQUESTS (requests a worker process answers before it is replaced, default 50,000;
0 never replaces one). A bad number stops start-up with a message naming the variable. The
access log names each client the way the site does, from OMNIWEB_TRUSTED_PROXY_COUNT
(RELIABILITY 32).
"""

import os
import re

from gunicorn.glogging import Logger


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):  # the cores this process may use, not the machine's
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _whole_number(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a whole number; got {raw!r}.") from None
    if value < minimum:
        raise SystemExit(f"{name} must be at least {minimum}; got {value}.")
    return value


bind = [os.environ.get("OMNIWEB_BIND", "").strip() or "127.0.0.1:8000"]
workers = _whole_number("WEB_CONCURRENCY", min(2 * _cores() + 1, 8))
# Threads let a process answer other requests while one streams a result file or waits on the
# database; each thread keeps its own database connection.
worker_class = "gthread"
threads = 4
timeout = 60
graceful_timeout = 30
keepalive = 5
# Replace a worker process only after many requests, as a guard against a slow leak. Starting
# one imports Django and the project again, about 0.85 CPU-seconds, and the new process answers
# its first requests slowly while it compiles templates and opens connections: at 1,000 requests
# that came to almost a millisecond of CPU per request under load. Each process waits a random
# extra of up to a tenth more, so processes that started together are not replaced together.
# 0 turns recycling off.
max_requests = _whole_number("OMNIWEB_MAX_REQUESTS", 50_000, minimum=0)
max_requests_jitter = max_requests // 10
# Each worker imports Django itself: a restart picks up new code in every process, and no
# database connection opened at import time is shared across a fork.
preload_app = False
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "").strip() or "127.0.0.1"
# Stopped and reloaded with signals (systemd, docs/deploy.md); gunicorn 27's control socket would
# otherwise be created in the service user's home directory.
control_socket_disable = True
# The heartbeat file on a memory file system, so a slow disk never makes a worker look dead.
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"

# Access log on stdout, gunicorn's own messages on stderr. The path is logged without its query
# string (%(U)s, never %(r)s or %(q)s), and the referrer not at all: signed result links and
# search words travel in query strings. The few paths that carry a token of their own (webhooks,
# reference images for gateways, password-reset links) are logged with the token cut out.
PATH_TOKENS = [
    re.compile(r"^(/hooks/)[^/]+"),
    re.compile(r"^(/ref/)[^/]+"),
    re.compile(r"^(/accounts/reset/[^/]+/)(?!set-password/)[^/]+"),
]


class RedactingLogger(Logger):
    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        path = atoms.get("U") or ""
        for pattern in PATH_TOKENS:
            path = pattern.sub(r"\1[redacted]", path)
        atoms["U"] = path
        atoms["client"] = client(environ)
        return atoms


def client(environ) -> str:
    """The client's address by the site's own rule (omniweb/clientip.py, RELIABILITY 32):
    OMNIWEB_TRUSTED_PROXY_COUNT entries of X-Forwarded-For, never more.

    Imported when a request is logged, inside a worker, where Django's settings (and the
    .env file they read) are loaded; this file itself is read before the project is importable.
    """
    from django.conf import settings

    from omniweb.clientip import believed_address

    return believed_address(environ, settings.TRUSTED_PROXY_COUNT)


logger_class = RedactingLogger
accesslog = "-"
errorlog = "-"
# %(h)s is the connection's peer: behind a reverse proxy, the proxy itself. %(client)s is the
# client as the site believes it, the same address login throttling and rate limits use. The
# raw X-Forwarded-For header is not logged: anything left of the trusted entries is whatever
# the client chose to send.
access_log_format = '%(h)s %(client)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms "%(a)s"'
