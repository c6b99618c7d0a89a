"""URLs of the staff's CSV exports (see generations.insight.exports)."""

from django.urls import path

from generations.insight import exports

urlpatterns = [
    path("insight/exports/", exports.exports_page, name="insight-exports"),
    path("insight/export/tasks.csv", exports.tasks_csv, name="insight-export-tasks"),
    path("insight/export/ledger.csv", exports.ledger_csv, name="insight-export-ledger"),
]
