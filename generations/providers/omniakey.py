"""OmniaKey video gateway (document 000).

Submit `POST /v1/videos/generations` with `model`, `prompt`, `duration`, `resolution`,
`aspect_ratio` and optionally `webhook_url`; the answer is the task object (`id`, `status`,
`estimated_time`). Poll `GET /v1/videos/generations/{id}` until `status` is `completed` (result in
`output.url`, with `output.duration` and `output.resolution`) or `failed` (`error.message`).
The webhook POSTs the same completion object; Omniweb only uses it as a cue to poll.

The document shows no error bodies; we read `error.message` and `error.code`/`error.type` when
present and fall back to the HTTP status otherwise. The gateway's words go to `details`; a
status's `error` and an error's `message` are ours (see base.py).
"""

from typing import Any

from generations.providers.base import (
    GenerationRequest,
    Provider,
    ProviderStatus,
    ResultFile,
    State,
    as_duration,
    as_seconds,
)
from generations.providers.text import bounded_details

# "1920x1080" and the like; anything longer is not a resolution.
RESOLUTION_CHARS = 32

STATUSES = {
    "pending": State.QUEUED,
    "processing": State.RUNNING,
    "completed": State.SUCCEEDED,
    "failed": State.FAILED,
}


class OmniaKey(Provider):
    id = "omniakey"
    name = "OmniaKey"
    default_base_url = "https://api.omniakey.com"
    # The document's own example polls every 5 seconds.
    first_poll_seconds = (5, 5)
    poll_interval_seconds = (5, 5)
    supports_webhook = True

    def build_submit(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": request.model, "prompt": request.prompt}
        if request.duration is not None:
            body["duration"] = request.duration
        if request.resolution:
            body["resolution"] = request.resolution
        if request.aspect_ratio:
            body["aspect_ratio"] = request.aspect_ratio
        if request.callback_url:
            body["webhook_url"] = request.callback_url
        return "/v1/videos/generations", body

    def parse_submit(self, body: Any) -> ProviderStatus:
        return self.parse_status(body)

    def status_path(self, provider_task_id: str) -> str:
        return f"/v1/videos/generations/{provider_task_id}"

    def parse_status(self, body: Any) -> ProviderStatus:
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise self.malformed("a task id")
        raw = body.get("status")
        state = STATUSES.get(raw) if isinstance(raw, str) else None
        if state is None:
            raise self.unknown_status(raw)
        output = body.get("output") if isinstance(body.get("output"), dict) else {}
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        results: tuple[ResultFile, ...] = ()
        if state == State.SUCCEEDED:
            if not isinstance(output.get("url"), str):
                raise self.malformed("the finished video's output.url")
            results = (ResultFile(url=output["url"]),)
        failed = state == State.FAILED
        return ProviderStatus(
            provider_task_id=body["id"],
            state=state,
            raw_status=raw,
            progress=100 if state == State.SUCCEEDED else None,
            results=results,
            **(self.task_failed(error.get("message")) if failed else {}),
            error_code=error.get("code") if failed else None,
            estimated_seconds=as_seconds(body.get("estimated_time")),
            media_duration=as_duration(output.get("duration")),
            media_resolution=bounded_details(output.get("resolution"), limit=RESOLUTION_CHARS),
        )

    def error_details(self, body: Any) -> tuple[str | None, str | None]:
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            code = error.get("code") or error.get("type")
            return (str(code) if code else None), error.get("message")
        return None, None
