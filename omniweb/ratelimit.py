"""Fixed-window rate limits, shared by every process through the cache (RELIABILITY 33).

A window is a fixed stretch of the clock (each minute, each hour), numbered from the epoch. The
count's cache key carries the window's number, so calls never stretch a window: however hard
one is hammered, the next starts from zero when the clock reaches it. The first call of a
window creates its count (cache.add) and every call adds one (cache.incr).

Counts are exact with Redis, whose INCR is atomic and keeps the expiry. The database cache
used without Redis increments by reading and writing, so two processes at once may lose a
count (a limit admits a little more, never less), and its write resets the expiry to the
cache's default: every call therefore sets the expiry again, always to the same instant, the
window's end.
"""

from __future__ import annotations

import math
import time

from django.core.cache import cache

MINUTE = 60
HOUR = 3600


def hit(name: str, window_seconds: int) -> int:
    """RELIABILITY 33: count one call against `name` in the current fixed window.

    Returns the number of calls in this window so far, this one included; the caller compares
    it with its limit (and may log only the first refusal, `calls == limit + 1`).
    """
    now = time.time()
    number = int(now // window_seconds)
    key = f"omniweb:rate:{name}:{window_seconds}:{number}"
    until_end = max(1, math.ceil((number + 1) * window_seconds - now))
    cache.add(key, 0, timeout=until_end)
    try:
        calls = cache.incr(key)
    except ValueError:  # expired or evicted between add and incr: this call opens it again
        cache.set(key, 1, timeout=until_end)
        return 1
    cache.touch(key, timeout=until_end)
    return calls
