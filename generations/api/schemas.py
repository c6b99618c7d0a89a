"""What the API reads and writes, as typed schemas (the OpenAPI document is made from them),
and how tasks, runs and models are presented in it."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from django.conf import settings
from django.urls import reverse
from ninja import Field, Schema

from generations.gallery import SEARCH_MAX_LENGTH
from generations.providers import catalog

PROMPT = Field(min_length=1, max_length=catalog.PROMPT_MAX_CHARS)
# "<gateway>/<model>", one of the catalog's: the document lists them, so a client (or a
# generated test) knows every valid value.
ModelName = Literal[tuple(spec.key for spec in catalog.MODELS)]
ModelId = Field(description="<gateway>/<model>, e.g. apimart/Omni-Flash-Ext")
# A reference image: an https address, or a PNG, JPEG or WebP as a data:image/...;base64, URI.
ImageList = Field(default_factory=list, max_length=3)
Visibility = Literal["team", "private"]


class Problem(Schema):
    """An error, as RFC 9457 describes it."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: dict[str, list[str]] = Field(default_factory=dict)


class PriceOut(Schema):
    unit: Literal["second", "image", "task"]
    credits_per_unit: int
    resolution_multipliers: dict[str, float]


class ModelOut(Schema):
    id: str
    gateway: str
    label: str
    kind: Literal["video", "image"]
    summary: str
    durations: list[int]
    default_duration: int | None
    resolutions: list[str]
    default_resolution: str | None
    aspect_ratios: list[str]
    default_aspect_ratio: str | None
    reference_image_counts: list[int]
    price: PriceOut | None
    allowed: bool = Field(description="Whether your quota lets you use it.")


class GenerationIn(Schema):
    model: ModelName = ModelId
    prompt: str = PROMPT
    duration: int | None = Field(default=None, ge=1, le=600)
    resolution: str | None = Field(default=None, max_length=20)
    aspect_ratio: str | None = Field(default=None, max_length=10)
    key: uuid.UUID | None = Field(
        default=None, description="The code of the key that pays; default: your first for it."
    )


class TaskIn(GenerationIn):
    visibility: Visibility = "team"
    reference_images: list[str] = ImageList


class RunIn(Schema):
    name: str = Field(default="", max_length=80)
    visibility: Visibility = "team"
    reference_images: list[str] = Field(
        default_factory=list, max_length=3, description="Sent with every item."
    )
    items: list[GenerationIn] = Field(min_length=1, max_length=250)


class QuoteIn(Schema):
    """One request (model, prompt…) or a run (items); reference images are only counted."""

    items: list[GenerationIn] = Field(min_length=1, max_length=250)
    reference_images: int = Field(default=0, ge=0, le=3, description="How many will be sent.")


class QuoteLine(Schema):
    model: str
    unit: str
    credits_per_unit: int
    units: int
    multiplier: float
    credits: int


class QuoteOut(Schema):
    items: list[QuoteLine]
    total: int
    balance: int
    balance_after: int


class ResultOut(Schema):
    url: str
    poster_url: str | None
    content_type: str
    size: int
    width: int | None
    height: int | None
    duration: float | None


class TaskOut(Schema):
    id: uuid.UUID
    object: Literal["task"] = "task"
    state: Literal[
        "queued", "submitted", "running", "fetching", "succeeded", "failed", "canceled",
        "needs_review",
    ]  # fmt: skip
    progress: int | None
    message: str
    error: str | None = Field(description="Why it failed or was canceled; null otherwise.")
    model: str
    kind: str
    prompt: str
    duration: int | None
    resolution: str | None
    aspect_ratio: str | None
    visibility: Visibility
    run: uuid.UUID
    retry_of: uuid.UUID | None
    credits_charged: int
    credits_refunded: int
    created_at: datetime
    finished_at: datetime | None
    results: list[ResultOut]
    web_url: str


class TaskFilters(Schema):
    state: (
        Literal[
            "queued", "submitted", "running", "fetching", "succeeded", "failed", "canceled",
            "needs_review",
        ]
        | None
    ) = None  # fmt: skip
    gateway: Literal["apimart", "omniakey", "omixa", "omnivideo"] | None = None
    kind: Literal["video", "image"] | None = None
    run: uuid.UUID | None = None
    q: str | None = Field(
        default=None, max_length=SEARCH_MAX_LENGTH, description="Every word in the prompt."
    )
    cursor: str | None = Field(default=None, max_length=40)
    limit: int = Field(default=20, ge=1, le=100)


class TaskPage(Schema):
    data: list[TaskOut]
    next_cursor: str | None


class RunCounts(Schema):
    total: int
    active: int
    succeeded: int
    failed: int
    canceled: int


class RunOut(Schema):
    id: uuid.UUID
    object: Literal["run"] = "run"
    name: str
    visibility: Visibility
    created_at: datetime
    counts: RunCounts
    credits_charged: int
    credits_refunded: int
    tasks: list[TaskOut]
    web_url: str


class LimitsOut(Schema):
    max_active_tasks: int | None
    max_credits_per_day: int | None
    max_credits_per_month: int | None
    max_tasks_per_run: int
    submits_per_minute: int
    api_calls_per_minute: int


class MeOut(Schema):
    username: str
    display_name: str
    balance: int
    spent_today: int
    spent_this_month: int
    active_tasks: int
    limits: LimitsOut
    allowed_models: list[str]
    token: str
    scope: Literal["read", "write"]


def absolute(path: str, base: str | None = None) -> str:
    """`path` on this site: under `base` (the address the caller used), else PUBLIC_URL."""
    return f"{settings.PUBLIC_URL if base is None else base}{path}"


def task_out(task, refunded: int = 0, base: str | None = None) -> dict:
    """The API's view of a task; its results must be prefetched (`results`)."""
    params = task.params or {}
    return {
        "id": task.code,
        "state": task.state,
        "progress": task.progress,
        "message": task.message,
        "error": (task.message or task.get_state_display())
        if task.state in ("failed", "canceled")
        else None,
        "model": f"{task.provider}/{task.model}",
        "kind": task.kind,
        "prompt": task.prompt,
        "duration": params.get("duration"),
        "resolution": params.get("resolution"),
        "aspect_ratio": params.get("aspect_ratio"),
        "visibility": task.visibility,
        "run": task.run.code,
        "retry_of": task.retry_of.code if task.retry_of_id else None,
        "credits_charged": task.credits_charged,
        "credits_refunded": refunded,
        "created_at": task.created_at,
        "finished_at": task.finished_at,
        "results": [
            {
                "url": absolute(
                    reverse("api-v1:task_result", args=[task.code, result.position]), base
                ),
                "poster_url": absolute(
                    reverse("api-v1:task_poster", args=[task.code, result.position]), base
                )
                if result.poster
                else None,
                "content_type": result.content_type,
                "size": result.size,
                "width": result.width,
                "height": result.height,
                "duration": result.duration,
            }
            for result in task.results.all()
        ],
        "web_url": absolute(reverse("generations-task", args=[task.code]), base),
    }
