"""Who may open the insight pages: staff. Everyone else is told there is nothing here (404),
as for any object a member may not see, rather than sent to a login page."""

from __future__ import annotations

from functools import wraps

from django.http import Http404


def staff_only(view):
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not (request.user.is_authenticated and request.user.is_active and request.user.is_staff):
            raise Http404("There is nothing here.")
        return view(request, *args, **kwargs)

    return wrapper
