from django.urls import include, path

from accounts import password_reset, views

urlpatterns = [
    path("profile/", views.profile, name="accounts-profile"),
    path("tokens/add/", views.token_add, name="accounts-token-add"),
    path("tokens/<int:pk>/revoke/", views.token_revoke, name="accounts-token-revoke"),
    path("keys/", views.keys, name="accounts-keys"),
    path("keys/add/", views.key_add, name="accounts-key-add"),
    path("keys/<uuid:code>/edit/", views.key_edit, name="accounts-key-edit"),
    path("keys/<uuid:code>/secret/", views.key_secret, name="accounts-key-secret"),
    path("keys/<uuid:code>/toggle/", views.key_toggle, name="accounts-key-toggle"),
    path("keys/<uuid:code>/delete/", views.key_delete, name="accounts-key-delete"),
    path("keys/<uuid:code>/test/", views.key_test, name="accounts-key-test"),
    path("credits/", views.credits, name="accounts-credits"),
    # Django's reset page with limits on the emails it sends (RELIABILITY 33); it comes first,
    # so it answers under Django's own path and URL name.
    path(
        "password_reset/",
        password_reset.ThrottledPasswordResetView.as_view(),
        name="password_reset",
    ),
    # Login, logout, password change and password reset, with Django's own URL names.
    path("", include("django.contrib.auth.urls")),
]
