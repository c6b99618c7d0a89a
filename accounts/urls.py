from django.urls import include, path

from accounts import views

urlpatterns = [
    path("profile/", views.profile, name="accounts-profile"),
    # Login, logout, password change and password reset, with Django's own URL names.
    path("", include("django.contrib.auth.urls")),
]
