"""django-q2 jobs of the task engine, and the dispatcher that keeps polling latency in seconds.

Two jobs, both idempotent because django-q2 delivers at least once:
- `submit(pk)`, enqueued when a submit commits: claims the queued task with a conditional
  update (a second delivery finds it taken and does nothing) and sends it to the gateway.
- `dispatch(name)`: leases due tasks of every active state and works through them with a
  bounded thread pool, for DISPATCH_SECONDS.

django-q2's scheduler wakes only every 30 seconds or so and its finest schedule is a minute, so
each dispatcher runs continuously instead: a run holds a baton in the cache (refreshed every
few seconds), enqueues its successor when its time is up, and steps down within a tick when a
newer run of its name takes the baton. A once-a-minute schedule (`ensure_dispatchers`) restarts any
dispatcher whose baton expired because its worker died. DISPATCHERS sets how many run side by
side; any number on any number of hosts is safe, because a task is leased before it is worked
on. When its worker is told to stop, a run stops leasing within a tick, gives back what it
leased ahead, hands over, finishes what it started and returns, so the worker stops in
seconds rather than after the run's time.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack, suppress
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

from generations.api import webhooks
from generations.models import Lease, Task

logger = logging.getLogger("omniweb.engine")

SCHEDULE_NAME = "omniweb-dispatcher"
# How often a dispatcher looks for a newer run of its name and for its worker stopping.
TICK_SECONDS = 0.5
# A running dispatcher refreshes its baton this often; a dead one's expires after BATON_SECONDS.
BATON_REFRESH_SECONDS = 5
BATON_SECONDS = 30
# How long a task leased ahead may wait for a free slot before it goes back. Its lease lasts
# this much longer than LEASE_SECONDS, so once started it still has a full lease.
AHEAD_SECONDS = 5
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

    held = True
    try:
        task = Task.objects.select_related("key").filter(pk=pk, lease_owner=owner).first()
        if task is None:
            held = False  # not ours (any more): there is nothing to let go of
        else:
            engine.advance(task)
            # A poll that finds the task still running lets go of it in its own last update.
            held = task.lease_owner == owner
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
        if held:
            Task.objects.release(pk, owner)


def keep_or_drop_connections() -> None:
    """After a task, keep this thread's database connection for its next task, unless it broke
    or outlived CONN_MAX_AGE. CONN_MAX_AGE 0 means a connection per request; for a dispatcher
    thread the request is the whole run, whose end closes it."""
    for conn in connections.all(initialized_only=True):
        if conn.connection is None:
            continue
        if conn.settings_dict["CONN_MAX_AGE"] == 0 and not conn.errors_occurred:
            continue
        conn.close_if_unusable_or_obsolete()


def close_connections(wrappers) -> None:
    """Close the database connections of pool threads that have ended."""
    for conn in wrappers:
        # Made in another thread, which is gone: closing it here is safe.
        conn.inc_thread_sharing()
        try:
            with suppress(*DATABASE_ERRORS):
                conn.close()
        finally:
            conn.dec_thread_sharing()


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
    hands over early when its worker is told to stop.

    Every slot stays busy: the run keeps up to one slot's worth of tasks leased ahead of the
    pool, so a slot that frees up starts the next task at once, and leases more in one
    statement only when fewer than half that many wait. Each pool thread keeps its database
    connection for the whole run."""
    seconds = settings.DISPATCH_SECONDS if seconds is None else seconds
    run_id = uuid.uuid4().hex
    owner = _owner(f"dispatch-{name}")
    concurrency = settings.DISPATCH_CONCURRENCY
    stop_at = time.monotonic() + seconds
    # One member's slow gateways may hold only part of the pool, so other members' tasks
    # keep moving while those calls run out their deadline.
    per_member = max(1, min(settings.PER_MEMBER_CONCURRENCY, concurrency))
    in_flight: dict[Future, Lease] = {}
    # Leased and not started yet, with when they were leased, earliest due first.
    ahead: deque[tuple[float, Lease]] = deque()
    # Every task this run holds, started or not, counts against its key's and member's limits.
    busy: Counter = Counter()
    busy_members: Counter = Counter()
    # When leasing may be tried again: at once while leases come back full, a tick later once
    # the due tasks (or what the limits allow) ran out.
    lease_again_at = 0.0
    thread_connections: list = []
    worked = 0
    handed_over = False
    stopping = False
    worker_stop = WorkerStop()
    database_errors = 0
    cache.set(baton(name), run_id, timeout=BATON_SECONDS)
    baton_set_at = checked_at = time.monotonic()

    def remember_connections() -> None:
        thread_connections.extend(connections.all())

    def run(pk: int) -> None:
        try:
            work_on(pk, owner)
        except DATABASE_ERRORS:
            # This thread's connection broke (a database restart): drop it, and let go of the
            # task through a new one, so it is worked on again at once rather than after its
            # lease runs out.
            logger.warning("event=work_database_error task=%s", pk, exc_info=True)
            connections.close_all()  # this thread's connections only
            try:
                Task.objects.release(pk, owner)
            except DATABASE_ERRORS:
                connections.close_all()
        finally:
            keep_or_drop_connections()

    def forget(lease: Lease) -> None:
        busy[lease.key_id] -= 1
        busy_members[lease.user_id] -= 1

    def give_back(leases: list[Lease]) -> None:
        """Let go of tasks leased ahead that this run will not start."""
        if not leases:
            return
        for lease in leases:
            forget(lease)
        try:
            Task.objects.release([lease.pk for lease in leases], owner)
        except DATABASE_ERRORS:
            # Their leases run out by themselves, a few seconds after a full lease.
            logger.warning("event=dispatch_release_failed name=%s tasks=%s", name, len(leases))
            connections.close_all()  # this thread's connection only

    with ExitStack() as stack:
        # Unwound in reverse: the pool's threads end first, then their connections close,
        # however the run ends.
        stack.callback(close_connections, thread_connections)
        pool = stack.enter_context(
            ThreadPoolExecutor(
                concurrency, thread_name_prefix="omniweb-dispatch", initializer=remember_connections
            )
        )
        try:
            while time.monotonic() < stop_at:
                now = time.monotonic()
                try:
                    if now - checked_at >= TICK_SECONDS:
                        checked_at = now
                        holder = cache.get(baton(name))
                        if holder not in (None, run_id):
                            handed_over = True
                            break
                        if worker_stop.requested():
                            stopping = True
                            break
                        if now - baton_set_at >= BATON_REFRESH_SECONDS:
                            cache.set(baton(name), run_id, timeout=BATON_SECONDS)
                            baton_set_at = now
                            # Webhook retries that fell due get a sweep within seconds.
                            webhooks.nudge()
                    # A task leased ahead that waited too long for a slot goes back, so
                    # every task starts with at least LEASE_SECONDS of its lease left.
                    stale = []
                    while ahead and now - ahead[0][0] > AHEAD_SECONDS:
                        stale.append(ahead.popleft()[1])
                    give_back(stale)
                    # What will still wait once the free slots are filled.
                    waiting = len(ahead) - (concurrency - len(in_flight))
                    if waiting < max(1, concurrency // 2) and now >= lease_again_at:
                        wanted = concurrency - waiting
                        leased = Task.objects.lease_due(
                            owner,
                            limit=wanted,
                            per_key=settings.PER_KEY_CONCURRENCY,
                            busy_keys=busy,
                            per_member=per_member,
                            busy_members=busy_members,
                            seconds=settings.LEASE_SECONDS + AHEAD_SECONDS,
                        )
                        for lease in leased:
                            busy[lease.key_id] += 1
                            busy_members[lease.user_id] += 1
                            ahead.append((now, lease))
                        lease_again_at = now + (TICK_SECONDS if len(leased) < wanted else 0)
                    database_errors = 0
                except DATABASE_ERRORS:
                    # The database went away (a restart, a failover). Ending the run here
                    # would leave polling to the once-a-minute schedule after the baton
                    # expires; instead drop this thread's broken connection and try again,
                    # backing off to 5 s.
                    database_errors += 1
                    logger.warning(
                        "event=dispatch_database_error name=%s errors=%s",
                        name,
                        database_errors,
                        exc_info=database_errors == 1,
                    )
                    connections.close_all()  # this thread's connection only
                    time.sleep(min(TICK_SECONDS * 2**database_errors, 5.0))
                while ahead and len(in_flight) < concurrency:
                    lease = ahead.popleft()[1]
                    in_flight[pool.submit(run, lease.pk)] = lease
                    worked += 1
                if in_flight:
                    # Woken by the first task to finish, else in time for the next check or
                    # the next try at leasing.
                    wake = lease_again_at - time.monotonic()
                    timeout = wake if 0 < wake < TICK_SECONDS else TICK_SECONDS
                    done, _ = wait(in_flight, timeout=timeout, return_when=FIRST_COMPLETED)
                    for future in done:
                        forget(in_flight.pop(future))
                elif not database_errors:
                    time.sleep(TICK_SECONDS)
        finally:
            # Whatever ended the run, tasks leased ahead go back first, for whoever runs next.
            give_back([lease for _, lease in ahead])
            ahead.clear()
        # Hand over first, then finish what was started: a successor leases other due tasks
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
