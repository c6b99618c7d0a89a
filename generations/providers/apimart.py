"""APIMart video gateway (documents 002 and 004).

Submit `POST /v1/videos/generations` with `model` (always `Omni-Flash-Ext`), `prompt`,
`duration` (4/6/8/10), `resolution` (720p/1080p/4k, any case), `aspect_ratio` and `image_urls`
(0, 1 or 3 URLs or base64 data URIs; never 2). The answer is `{code: 200, data: [{status,
task_id}]}`. Poll `GET /v1/tasks/{task_id}`: `data.status`, `progress`, `cost`,
`estimated_time`, the result under `result.videos[].url[]` with `expires_at`, and a failure
reason under `error.message`. The document advises a first poll after 5-10 s, then every
5-10 s; tasks take about 3-5 minutes.

Errors are 400 (`invalid_request_error`, `invalid_duration`, `invalid_resolution`,
`unsupported_image_count`), 401 `authentication_error`, 402 `payment_required` and 429
`rate_limit_error`. The document lists these as an "error type" without showing the body; we
read it from `error.type` or `error.code` (with `error.message`, which becomes the error's
`details`), the common shape.

The document shows the statuses `submitted`, `completed` and `failed`; the in-flight names
`pending`, `queued`, `processing` and `in_progress` are assumed, and anything else is an
unknown status (retried, never a failure).
"""

from typing import Any

from generations.providers.base import (
    GenerationRequest,
    Provider,
    ProviderStatus,
    ResultFile,
    State,
    as_cost,
    as_progress,
    as_seconds,
    timestamp,
)

STATUSES = {
    "submitted": State.QUEUED,
    "pending": State.QUEUED,
    "queued": State.QUEUED,
    "processing": State.RUNNING,
    "in_progress": State.RUNNING,
    "completed": State.SUCCEEDED,
    "failed": State.FAILED,
}


class APIMart(Provider):
    id = "apimart"
    name = "APIMart"
    default_base_url = "https://api.apimart.ai"
    first_poll_seconds = (5, 10)
    poll_interval_seconds = (5, 10)

    def build_submit(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": request.model, "prompt": request.prompt}
        if request.duration is not None:
            body["duration"] = request.duration
        if request.resolution:
            body["resolution"] = request.resolution
        if request.aspect_ratio:
            body["aspect_ratio"] = request.aspect_ratio
        if request.reference_images:
            body["image_urls"] = list(request.reference_images)
        return "/v1/videos/generations", body

    def parse_submit(self, body: Any) -> ProviderStatus:
        tasks = body.get("data") if isinstance(body, dict) else None
        first = tasks[0] if isinstance(tasks, list) and tasks else None
        if not isinstance(first, dict) or not isinstance(first.get("task_id"), str):
            raise self.malformed("data[0].task_id")
        raw = first.get("status", "submitted")
        state = STATUSES.get(raw) if isinstance(raw, str) else None
        if state is None:
            raise self.unknown_status(raw)
        return ProviderStatus(provider_task_id=first["task_id"], state=state, raw_status=raw)

    def status_path(self, provider_task_id: str) -> str:
        return f"/v1/tasks/{provider_task_id}"

    def parse_status(self, body: Any) -> ProviderStatus:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise self.malformed("data.id")
        raw = data.get("status")
        state = STATUSES.get(raw) if isinstance(raw, str) else None
        if state is None:
            raise self.unknown_status(raw)
        results = []
        if state == State.SUCCEEDED:
            result = data.get("result") if isinstance(data.get("result"), dict) else {}
            for video in result.get("videos") or []:
                if not isinstance(video, dict):
                    continue
                urls = video.get("url")
                urls = [urls] if isinstance(urls, str) else urls or []
                expires = timestamp(video.get("expires_at"))
                results += [
                    ResultFile(url=u, expires_at=expires) for u in urls if isinstance(u, str)
                ]
            if not results:
                raise self.malformed("result.videos[].url")
        error = data.get("error") if isinstance(data.get("error"), dict) else {}
        failed = state == State.FAILED
        return ProviderStatus(
            provider_task_id=data["id"],
            state=state,
            raw_status=raw,
            progress=as_progress(data.get("progress")),
            results=tuple(results),
            **(self.task_failed(error.get("message")) if failed else {}),
            error_code=error.get("code") if failed else None,
            cost=as_cost(data.get("cost")),
            estimated_seconds=as_seconds(data.get("estimated_time")),
        )

    def error_details(self, body: Any) -> tuple[str | None, str | None]:
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            code = error.get("type") or error.get("code")
            return (str(code) if code else None), error.get("message")
        return None, None
