"""django-q2 jobs of the task engine, and the dispatcher that keeps polling latency in seconds.

Two jobs, both idempotent because django-q2 delivers at least once:
- `submit(pk)`, enqueued when a submit commits: claims the queued task with a conditional
  update (a second delivery finds it taken and does nothing) and sends it to the gateway.
- `dispatch(name)`: leases due tasks of every active state and works through them with a
  bounded thread pool, for DISPATCH_SECONDS.

django-q2's scheduler wakes only every 30 seconds or so and its finest schedule is a minute, so
each dispatcher runs continuously instead: a run holds a baton in the cache (refreshed every
tick), enqueues its successor when its time is up, and steps down within a tick when a newer run
of its name takes the baton. A once-a-minute schedule (`ensure_dispatchers`) restarts any
dispatcher whose baton expired because its worker died. DISPATCHERS sets how many run side by
side; any number on any number of hosts is safe, because a task is leased before it is worked
on. When its worker is told to stop, a run stops leasing within a tick, hands over, finishes
what it holds and returns, so the worker stops in seconds rather than after the run's time.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import connections
from django.db.utils import InterfaceError, OperationalError
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.signing import SignedPackage
from django_q.status import Stat
from django_q.tasks import async_task

from generations.models import Lease, Task

logger = logging.getLogger("omniweb.engine")

SCHEDULE_NAME = "omniweb-dispatcher"
TICK_SECONDS = 0.5
# A running dispatcher refreshes its baton every tick; a dead one's expires this fast.
BATON_SECONDS = 30
# What a lost database connection raises; the dispatcher reconnects instead of ending its run.
DATABASE_ERRORS = (OperationalError, InterfaceError)


def baton(name: str) -> str:
    return f"omniweb:dispatcher:{name}"


def dispatcher_names() -> list[str]:
    return [f"d{number}" for number in range(settings.DISPATCHERS)]


def _owner(role: str) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{role}-{uuid.uuid4().hex[:8]}"


def ensure_dispatchers() -> int:
    """Job and helper: start each configured dispatcher that is not running. Returns how many
    were started. Called by the schedule, and after a submit so polls begin at once."""
    started = 0
    for name in dispatcher_names():
        if cache.get(baton(name)) is None:
            async_task("generations.jobs.dispatch", name=name, task_name=f"dispatch {name}")
            started += 1
    return started


def ensure_schedule(**kwargs) -> None:
    """Create or update the schedule that keeps the dispatchers running, by name (run after
    every migrate)."""
    from django_q.models import Schedule

    Schedule.objects.update_or_create(
        name=SCHEDULE_NAME,
        defaults={
            "func": "generations.jobs.ensure_dispatchers",
            "schedule_type": Schedule.MINUTES,
            "minutes": 1,
            "repeats": -1,
        },
    )


class WorkerStop:
    """Whether the worker cluster this process belongs to has been told to stop.

    django-q2 stops a cluster (on SIGTERM or SIGINT to its main process) by stopping its
    pusher and queueing one "STOP" per worker, which a worker reads only once its job has
    returned: no signal or event reaches a running job. What a job can see is the status its
    cluster publishes every half second (the one /healthz reads), found through the worker's
    parent process, the cluster's sentinel. Outside a cluster (a job run inline) it never asks.
    """

    def __init__(self) -> None:
        self.sentinel = os.getppid()
        self.broker = None
        self.key = None
        try:
            broker = get_broker()
            host = socket.gethostname()
            for stat in Stat.get_all(broker):
                if stat.sentinel == self.sentinel and stat.host == host:
                    self.broker, self.key = broker, Stat.get_key(stat.cluster_id)
                    break
        except Exception:
            # Without the status the run lasts its full time, which is safe, only slower.
            logger.warning("event=dispatch_worker_status_unknown", exc_info=True)

    def requested(self) -> bool:
        if self.key is None:
            return False
        if os.getppid() != self.sentinel:
            return True  # the sentinel is gone: nobody will ask this worker for more work
        try:
            pack = self.broker.get_stat(self.key)
            status = SignedPackage.loads(pack).status if pack else None
        except Exception:
            return False  # a missed reading is not a stop; the next tick asks again
        return status in (Conf.STOPPING, Conf.STOPPED)


def work_on(pk: int, owner: str) -> None:
    """Advance one task this owner has leased, then let go of it."""
    from generations import engine

    try:
        task = Task.objects.select_related("key").filter(pk=pk, lease_owner=owner).first()
        if task is not None:
            engine.advance(task)
    except Exception:
        # A bug or a database hiccup must not turn into a hot loop on one task, nor keep the
        # task from its deadline: whatever failed, the deadline rules still apply.
        logger.exception("event=work_failed task=%s", pk)
        Task.objects.filter(pk=pk, state__in=Task.ACTIVE_STATES).update(
            next_check_at=timezone.now() + timedelta(seconds=60)
        )
        try:
            engine.after_error(pk)
        except Exception:
            logger.exception("event=after_error_failed task=%s", pk)
    finally:
        Task.objects.release(pk, owner)


def submit(pk: int) -> str:
    """Job: send one queued task to its gateway, unless another worker already has it."""
    owner = _owner("submit")
    # Only while it is due: a second delivery of this job must not send a task that waits
    # for its retry time.
    if not Task.objects.claim(pk, owner, states=[Task.State.QUEUED], due_only=True):
        return "taken"
    work_on(pk, owner)
    ensure_dispatchers()
    return "done"


def dispatch(name: str = "d0", seconds: float | None = None) -> str:
    """Job: lease and advance due tasks for `seconds`, then hand over to a successor of the
    same name. Steps down within a tick when a newer run of that name takes the baton, and
    hands over early when its worker is told to stop."""
    seconds = settings.DISPATCH_SECONDS if seconds is None else seconds
    run_id = uuid.uuid4().hex
    owner = _owner(f"dispatch-{name}")
    concurrency = settings.DISPATCH_CONCURRENCY
    stop_at = time.monotonic() + seconds
    # One member's slow gateways may hold only part of the pool, so other members' tasks
    # keep moving while those calls run out their deadline.
    per_member = max(1, min(settings.PER_MEMBER_CONCURRENCY, concurrency))
    in_flight: dict[Future, Lease] = {}
    busy: Counter = Counter()
    busy_members: Counter = Counter()
    worked = 0
    handed_over = False
    stopping = False
    worker_stop = WorkerStop()
    database_errors = 0
    cache.set(baton(name), run_id, timeout=BATON_SECONDS)

    def run(pk: int) -> None:
        try:
            work_on(pk, owner)
        finally:
            connections.close_all()  # this thread's connection only

    with ThreadPoolExecutor(concurrency, thread_name_prefix="omniweb-dispatch") as pool:
        while time.monotonic() < stop_at:
            leased = []
            try:
                holder = cache.get(baton(name))
                if holder not in (None, run_id):
                    handed_over = True
                    break
                if worker_stop.requested():
                    stopping = True
                    break
                cache.set(baton(name), run_id, timeout=BATON_SECONDS)
                free = concurrency - len(in_flight)
                if free:
                    leased = Task.objects.lease_due(
                        owner,
                        limit=free,
                        per_key=settings.PER_KEY_CONCURRENCY,
                        busy_keys=busy,
                        per_member=per_member,
                        busy_members=busy_members,
                    )
                database_errors = 0
            except DATABASE_ERRORS:
                # The database went away (a restart, a failover). Ending the run here would
                # leave polling to the once-a-minute schedule after the baton expires; instead
                # drop this thread's broken connection and try again, backing off to 5 s.
                database_errors += 1
                logger.warning(
                    "event=dispatch_database_error name=%s errors=%s",
                    name,
                    database_errors,
                    exc_info=database_errors == 1,
                )
                connections.close_all()  # this thread's connection only
                time.sleep(min(TICK_SECONDS * 2**database_errors, 5.0))
            for lease in leased:
                busy[lease.key_id] += 1
                busy_members[lease.user_id] += 1
                in_flight[pool.submit(run, lease.pk)] = lease
            worked += len(leased)
            if in_flight:
                done, _ = wait(in_flight, timeout=TICK_SECONDS, return_when=FIRST_COMPLETED)
                for future in done:
                    lease = in_flight.pop(future)
                    busy[lease.key_id] -= 1
                    busy_members[lease.user_id] -= 1
            elif not leased:
                time.sleep(TICK_SECONDS)
        # Hand over first, then finish what was leased: a successor leases other due tasks
        # while this run's slow gateway calls run out their deadline. A run whose worker is
        # stopping hands over too: another worker, or this one's next start, carries on.
        if not handed_over and cache.get(baton(name)) in (None, run_id):
            cache.delete(baton(name))
            async_task("generations.jobs.dispatch", name=name, task_name=f"dispatch {name}")
        wait(in_flight)
    logger.info(
        "event=dispatch_run name=%s worked=%s handed_over=%s stopped=%s",
        name,
        worked,
        handed_over,
        stopping,
    )
    return f"worked on {worked} tasks"
