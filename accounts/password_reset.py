"""Password-reset emails, throttled (RELIABILITY 33).

Django's own reset view and form, with two fixed-window limits (omniweb/ratelimit.py) in front
of the email: reset requests per client address (PASSWORD_RESETS_PER_ADDRESS_PER_HOUR) and
emails per account (PASSWORD_RESETS_PER_ACCOUNT_PER_HOUR), in each clock hour. A throttled
request gets the same "if an account uses that address, a link is on its way" page as any
other and sends nothing, so the limits say nothing about which addresses have accounts. The
first refusal of each window is logged, with the client's address (RELIABILITY 32).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from django.conf import settings
from django.contrib.auth.forms import PasswordResetForm
from django.contrib.auth.views import PasswordResetView
from django.http import HttpResponse, HttpResponseRedirect

from omniweb import ratelimit
from omniweb.clientip import UNKNOWN, client_address

logger = logging.getLogger("omniweb.accounts")


class ThrottledPasswordResetForm(PasswordResetForm):
    """Django's reset form; an account past its hourly allowance is left out of the emails."""

    def __init__(self, *args, client: str = UNKNOWN, **kwargs):
        super().__init__(*args, **kwargs)
        self.client = client

    def get_users(self, email: str) -> Iterator:
        limit = settings.PASSWORD_RESETS_PER_ACCOUNT_PER_HOUR
        for user in super().get_users(email):
            calls = ratelimit.hit(f"password-reset:account:{user.pk}", ratelimit.HOUR)
            if calls <= limit:
                yield user
            elif calls == limit + 1:
                logger.warning(
                    "event=password_reset_throttled limit=account user=%s client=%s",
                    user.pk,
                    self.client,
                )


class ThrottledPasswordResetView(PasswordResetView):
    """RELIABILITY 33: Django's reset view, throttled per client address and per account."""

    form_class = ThrottledPasswordResetForm

    def get_form_kwargs(self) -> dict:
        return {**super().get_form_kwargs(), "client": client_address(self.request)}

    def form_valid(self, form: ThrottledPasswordResetForm) -> HttpResponse:
        limit = settings.PASSWORD_RESETS_PER_ADDRESS_PER_HOUR
        calls = ratelimit.hit(f"password-reset:address:{form.client}", ratelimit.HOUR)
        if calls > limit:
            if calls == limit + 1:
                logger.warning(
                    "event=password_reset_throttled limit=address client=%s", form.client
                )
            # The page every request gets: nothing tells a throttled caller apart.
            return HttpResponseRedirect(self.get_success_url())
        return super().form_valid(form)
