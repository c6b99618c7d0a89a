"""URLs of the member's webhook endpoints (outbound webhooks)."""

from django.urls import path

from generations.api import webhook_views as views

urlpatterns = [
    path("webhooks/", views.endpoint_list, name="generations-webhook-endpoints"),
    path("webhooks/<uuid:code>/", views.endpoint_detail, name="generations-webhook-endpoint"),
    path("webhooks/<uuid:code>/toggle/", views.endpoint_toggle, name="generations-webhook-toggle"),
    path("webhooks/<uuid:code>/rotate/", views.endpoint_rotate, name="generations-webhook-rotate"),
    path("webhooks/<uuid:code>/test/", views.endpoint_test, name="generations-webhook-test"),
    path("webhooks/<uuid:code>/delete/", views.endpoint_delete, name="generations-webhook-delete"),
    path(
        "webhooks/<uuid:code>/deliveries/<uuid:delivery>/resend/",
        views.delivery_resend,
        name="generations-webhook-resend",
    ),
]
