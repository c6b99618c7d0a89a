"""URLs of the studio's task pages, result files and the gateway webhook."""

from django.urls import path

from generations import views

urlpatterns = [
    path("tasks/", views.task_list, name="generations-tasks"),
    path("t/<uuid:code>/", views.task_detail, name="generations-task"),
    path("t/<uuid:code>/cancel", views.task_cancel, name="generations-task-cancel"),
    path("t/<uuid:code>/retry", views.task_retry, name="generations-task-retry"),
    path("t/<uuid:code>/file/<int:position>", views.result_file, name="generations-file"),
    path("t/<uuid:code>/poster/<int:position>", views.result_poster, name="generations-poster"),
    path("hooks/<str:token>", views.webhook, name="generations-webhook"),
]
