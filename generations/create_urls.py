"""URLs of the create pages."""

from django.urls import path

from generations import create

urlpatterns = [
    path("create/", create.create, name="generations-create"),
    path("create/fields", create.create_fields, name="generations-create-fields"),
    path("create/price", create.create_price, name="generations-create-price"),
    path("ref/<str:token>", create.reference_image, name="generations-reference"),
]
