"""Error reports that never carry a provider secret.

Django redacts settings with secret-sounding names and variables marked with
@sensitive_variables, but a report lists the local variables of every frame, including frames
inside httpx where a request's Authorization header lives, and every POST field. This filter
also redacts any frame variable whose value mentions a bearer token or an authorization header,
and any POST field whose name sounds secret.
"""

import re

from django.views.debug import SafeExceptionReporterFilter

BEARER = re.compile(r"bearer\s+\S|authorization", re.IGNORECASE)


class SecretRedactingFilter(SafeExceptionReporterFilter):
    def get_traceback_frame_variables(self, request, tb_frame):
        cleaned = []
        for name, value in super().get_traceback_frame_variables(request, tb_frame):
            try:
                text = repr(value)
            except Exception:  # a broken repr must not break the error report itself
                text = ""
            cleaned.append((name, self.cleansed_substitute if BEARER.search(text) else value))
        return cleaned

    def get_post_parameters(self, request):
        params = super().get_post_parameters(request)
        if request is None or not params:
            return params
        params = params.copy()
        for name in params:
            if self.hidden_settings.search(name):
                params[name] = self.cleansed_substitute
        return params
