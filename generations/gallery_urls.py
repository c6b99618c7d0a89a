"""URLs of the gallery pages."""

from django.urls import path

from generations import gallery

urlpatterns = [
    path("gallery/", gallery.gallery, name="generations-gallery"),
    path("gallery/<uuid:code>/", gallery.gallery_item, name="generations-gallery-item"),
    path("gallery/<uuid:code>/favourite", gallery.favourite, name="generations-favourite"),
]
