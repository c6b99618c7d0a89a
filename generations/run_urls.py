"""URLs of the run pages: a run, its progress panel, Compare, its actions and its ZIP."""

from django.urls import path

from generations import runs

urlpatterns = [
    path("run/<uuid:code>/", runs.run_detail, name="generations-run"),
    path("run/<uuid:code>/progress", runs.run_progress_part, name="generations-run-progress"),
    path("run/<uuid:code>/compare", runs.run_compare, name="generations-run-compare"),
    path("run/<uuid:code>/cancel", runs.run_cancel, name="generations-run-cancel"),
    path("run/<uuid:code>/retry", runs.run_retry, name="generations-run-retry"),
    path("run/<uuid:code>/download", runs.run_download, name="generations-run-download"),
]
