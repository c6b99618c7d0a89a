"""URLs of the batch page."""

from django.urls import path

from generations import batch

urlpatterns = [
    path("batch/", batch.batch, name="generations-batch"),
]
