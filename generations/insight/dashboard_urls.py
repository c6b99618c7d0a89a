"""The insight dashboard's URL (staff only)."""

from django.urls import path

from generations.insight import dashboard_views

urlpatterns = [
    path("insight/", dashboard_views.dashboard_page, name="insight-dashboard"),
]
