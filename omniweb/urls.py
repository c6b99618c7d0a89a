"""Top-level URLs: admin, accounts, the generations app, and the health endpoint."""

from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from generations.insight import metrics
from omniweb import health

admin.site.site_header = "Omniweb administration"
admin.site.site_title = "Omniweb admin"

urlpatterns = [
    # The start page is Create: members come to make something.
    path("", RedirectView.as_view(pattern_name="generations-create"), name="home"),
    path("accounts/", include("accounts.urls")),
    path("admin/", admin.site.urls),
    path("healthz", health.healthz, name="healthz"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("", include("generations.api.urls")),
    path("", include("generations.api.openai_urls")),
    path("", include("generations.urls")),
]

if settings.SIMULATOR_ENABLED:
    urlpatterns.append(path("simulator/", include("generations.simulator.urls")))
