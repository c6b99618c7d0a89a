"""URLs of share links: making them, a member's list and revoke, and the shared page with its
media. Every name starts with `generations-share`, which the permission tests rely on."""

from django.urls import path

from generations import shares

urlpatterns = [
    path("boards/<uuid:code>/share", shares.share_board, name="generations-share-board"),
    path("t/<uuid:code>/share", shares.share_task, name="generations-share-task"),
    path("shares/", shares.share_list, name="generations-shares"),
    path("shares/<int:pk>/revoke", shares.share_revoke, name="generations-share-revoke"),
    # The token is bounded in the view (shares.TOKEN_SHAPE), so a refused token gets the same
    # page as an unknown one.
    path("s/<str:token>/", shares.shared, name="generations-shared"),
    path(
        "s/<str:token>/file/<uuid:code>/<int:position>",
        shares.shared_file,
        name="generations-shared-file",
    ),
    path(
        "s/<str:token>/poster/<uuid:code>/<int:position>",
        shares.shared_poster,
        name="generations-shared-poster",
    ),
]
