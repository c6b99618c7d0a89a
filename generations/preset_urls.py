"""URLs of presets: the Create picker's htmx request and the page that manages them."""

from django.urls import path

from generations import presets

urlpatterns = [
    path("create/preset", presets.preset_fill, name="generations-preset-fill"),
    path("presets/", presets.presets_page, name="generations-presets"),
    path("presets/<uuid:code>/rename", presets.preset_rename, name="generations-preset-rename"),
    path("presets/<uuid:code>/delete", presets.preset_delete, name="generations-preset-delete"),
    path("presets/<uuid:code>/feature", presets.preset_feature, name="generations-preset-feature"),
]
