"""The OpenAI-compatible videos facade's URLs, at /v1/videos like OpenAI's own, so a client
given this site's address plus /v1 as its base URL finds them. Reached with a token, never a
session; each call is logged by token name, as the API's are."""

from __future__ import annotations

from django.urls import path

from generations.api import openai_videos
from generations.api.urls import logged

urlpatterns = [
    path("v1/videos", logged(openai_videos.videos), name="openai-videos"),
    path("v1/videos/<str:video_id>", logged(openai_videos.video), name="openai-video"),
    path(
        "v1/videos/<str:video_id>/content",
        logged(openai_videos.content),
        name="openai-video-content",
    ),
]
