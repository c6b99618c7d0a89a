"""Mounted under /simulator/ only when SIMULATOR_ENABLED is on (the demo and the tests)."""

from django.urls import path

from generations.simulator import views

urlpatterns = [
    path("omniakey/v1/videos/generations", views.omniakey_create),
    path("omniakey/v1/videos/generations/<str:external_id>", views.omniakey_task),
    path("omnivideo/api/v1/tasks/create", views.omnivideo_create),
    path("omnivideo/api/v1/tasks/<str:external_id>", views.omnivideo_task),
    path("apimart/v1/videos/generations", views.apimart_create),
    path("apimart/v1/tasks/<str:external_id>", views.apimart_task),
    path("omixa/api/v1/videos/jobs", views.omixa_create),
    path("omixa/api/v1/videos/jobs/<str:external_id>", views.omixa_job),
    path(
        "<str:gateway>/files/<str:external_id>.<str:extension>",
        views.result_file,
        name="simulator-file",
    ),
]
