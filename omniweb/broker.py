"""One django-q2 broker per process, for enqueueing jobs and reading cluster status.

django-q2's `async_task` and `get_broker()` build a new broker for every call, and with Redis a
new broker is a new connection pool, so every submit and every `/healthz` opened (and dropped)
a connection of its own. The broker kept here lives as long as its process; it is made again
after a fork (gunicorn and django-q2 both fork), because a connection must never be shared by
two processes. Redis and the ORM broker are both safe to use from several threads at once.
"""

from __future__ import annotations

import os
import threading

from django_q.brokers import Broker, get_broker
from django_q.tasks import async_task

_lock = threading.Lock()
_kept: tuple[int, Broker] | None = None


def shared_broker() -> Broker:
    """This process's broker, made on first use."""
    global _kept
    kept = _kept
    if kept is not None and kept[0] == os.getpid():
        return kept[1]
    with _lock:
        if _kept is None or _kept[0] != os.getpid():
            _kept = (os.getpid(), get_broker())
        return _kept[1]


def forget() -> None:
    """Drop the kept broker (tests that change the broker settings call this)."""
    global _kept
    with _lock:
        _kept = None


def enqueue(func: str, *args, **kwargs) -> str:
    """`async_task` through this process's broker."""
    return async_task(func, *args, broker=shared_broker(), **kwargs)
