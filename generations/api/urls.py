"""The API's URLs. Every view here is reached with a token, never a session: none needs the
pages' login (LoginRequiredMiddleware) or CSRF check, and each call is logged by token name."""

from __future__ import annotations

import functools
import time

from django.urls import include, path

from generations.api import auth
from generations.api.v1 import api


def logged(view):
    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        started = time.perf_counter()
        response = view(request, *args, **kwargs)
        auth.log_call(request, response.status_code, started)
        return response

    # Tokens, not sessions: the pages' login redirect would be wrong here.
    wrapper.login_required = False
    return wrapper


def api_urls(patterns):
    for pattern in patterns:
        pattern.callback = logged(pattern.callback)
    return patterns


# Not unpacked into module names: a module-level `app_name` would namespace this whole file.
V1 = api.urls

urlpatterns = [
    path("api/v1/", include((api_urls(V1[0]), V1[1]), namespace=V1[2])),
]
