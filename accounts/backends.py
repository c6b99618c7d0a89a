"""Login throttling in front of Django's own password check."""

from axes.backends import AxesStandaloneBackend


class LoginThrottleBackend(AxesStandaloneBackend):
    """django-axes' lockout check, for logins that come through a web request.

    `authenticate()` without a request (a shell, a management command, the test client's
    `login()`) is not a web login and has no client address to throttle; it falls through to
    the password check as before. The login form always passes its request.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)
