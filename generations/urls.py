"""URLs of the studio's task pages, result files and the gateway webhook."""

from django.urls import include, path

from generations import views

urlpatterns = [
    path("tasks/", views.task_list, name="generations-tasks"),
    path("t/<uuid:code>/", views.task_detail, name="generations-task"),
    path("t/<uuid:code>/cancel", views.task_cancel, name="generations-task-cancel"),
    path("t/<uuid:code>/retry", views.task_retry, name="generations-task-retry"),
    path("t/<uuid:code>/delete", views.task_delete, name="generations-task-delete"),
    path("t/<uuid:code>/visibility", views.task_visibility, name="generations-task-visibility"),
    path("tasks/cards", views.task_cards, name="generations-cards"),
    path("t/<uuid:code>/file/<int:position>", views.result_file, name="generations-file"),
    path("t/<uuid:code>/poster/<int:position>", views.result_poster, name="generations-poster"),
    path(
        "t/<uuid:code>/reference/<int:position>",
        views.task_reference,
        name="generations-task-reference",
    ),
    path("hooks/<str:token>", views.webhook, name="generations-webhook"),
    path("", include("generations.create_urls")),
    path("", include("generations.run_urls")),
    path("", include("generations.batch_urls")),
    path("", include("generations.gallery_urls")),
    path("", include("generations.board_urls")),
    path("", include("generations.preset_urls")),
    path("", include("generations.share_urls")),
    path("", include("generations.insight.dashboard_urls")),
    path("", include("generations.api.webhook_urls")),
    path("", include("generations.insight.export_urls")),
]
