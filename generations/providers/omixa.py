"""Omixa video gateway (document 003).

The document shows only the request: `POST /api/v1/videos/jobs` with `model` (`sora`),
`prompt`, `video_operation` (`text_to_video`), `seconds`, `size` as WxH, and `wait_seconds` /
`poll_interval_seconds`, which let the server hold the request for a few seconds and answer
with a job that may already be finished.

Assumed, because the document does not show them:
- the status endpoint is `GET /api/v1/videos/jobs/{id}`;
- the submit and status answers are the same job object, possibly inside a `data` or `job`
  wrapper; its id is under `id` or `job_id`; its status is one of queued / pending /
  in_progress / processing / running / completed / succeeded / failed / error / cancelled;
  progress under `progress`; the video URL under `video_url`, `url`, `output.url` or
  `result.url`; a failure reason under `error.message`, `error` or `message`, and in an error
  answer also `detail`. That reason is the gateway's text, shown only as `details`.
Anything else is an unknown status: logged and retried, never taken as a failure.

The document's examples use plain http://omixa.cloud; a key may name an https base URL.
"""

from typing import Any

import httpx

from generations.providers import http
from generations.providers.base import (
    GenerationRequest,
    Provider,
    ProviderStatus,
    ResultFile,
    State,
    as_progress,
)

STATUSES = {
    "queued": State.QUEUED,
    "pending": State.QUEUED,
    "in_progress": State.RUNNING,
    "processing": State.RUNNING,
    "running": State.RUNNING,
    "completed": State.SUCCEEDED,
    "succeeded": State.SUCCEEDED,
    "failed": State.FAILED,
    "error": State.FAILED,
    "cancelled": State.FAILED,
}

# What we ask the server to do with the request, as in the document's example.
WAIT_SECONDS = 3
POLL_INTERVAL_SECONDS = 2


def _first_str(*values: Any) -> str | None:
    return next((v for v in values if isinstance(v, str) and v), None)


class Omixa(Provider):
    id = "omixa"
    name = "Omixa"
    default_base_url = "http://omixa.cloud"
    first_poll_seconds = (5, 10)
    poll_interval_seconds = (5, 10)

    def timeout(self) -> httpx.Timeout:
        # The server may hold the submit for wait_seconds before it answers.
        return http.timeout(extra_read=WAIT_SECONDS)

    def build_submit(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": request.model,
            "prompt": request.prompt,
            "video_operation": "text_to_video",
        }
        if request.duration is not None:
            body["seconds"] = request.duration
        if request.resolution:
            body["size"] = request.resolution
        body["wait_seconds"] = WAIT_SECONDS
        body["poll_interval_seconds"] = POLL_INTERVAL_SECONDS
        return "/api/v1/videos/jobs", body

    def parse_submit(self, body: Any) -> ProviderStatus:
        return self.parse_status(body)

    def status_path(self, provider_task_id: str) -> str:
        return f"/api/v1/videos/jobs/{provider_task_id}"

    def parse_status(self, body: Any) -> ProviderStatus:
        job = body
        if isinstance(body, dict):
            for wrapper in ("data", "job"):
                if isinstance(body.get(wrapper), dict):
                    job = body[wrapper]
                    break
        if not isinstance(job, dict):
            raise self.malformed("a job object")
        job_id = job.get("id") if job.get("id") is not None else job.get("job_id")
        if isinstance(job_id, int) and not isinstance(job_id, bool):
            job_id = str(job_id)
        if not isinstance(job_id, str) or not job_id:
            raise self.malformed("a job id")
        raw = job.get("status")
        state = STATUSES.get(raw.lower()) if isinstance(raw, str) else None
        if state is None:
            raise self.unknown_status(raw)
        results: tuple[ResultFile, ...] = ()
        if state == State.SUCCEEDED:
            output = job.get("output") if isinstance(job.get("output"), dict) else {}
            result = job.get("result") if isinstance(job.get("result"), dict) else {}
            url = _first_str(
                job.get("video_url"), job.get("url"), output.get("url"), result.get("url")
            )
            if url is None:
                raise self.malformed("the finished video's URL")
            results = (ResultFile(url=url),)
        failure = {}
        if state == State.FAILED:
            err = job.get("error")
            failure = self.task_failed(
                _first_str(err.get("message") if isinstance(err, dict) else err, job.get("message"))
            )
        return ProviderStatus(
            provider_task_id=job_id,
            state=state,
            raw_status=raw,
            progress=as_progress(job.get("progress")),
            results=results,
            **failure,
        )

    def error_details(self, body: Any) -> tuple[str | None, str | None]:
        if not isinstance(body, dict):
            return None, None
        error = body.get("error")
        if isinstance(error, dict):
            code = error.get("code") or error.get("type")
            return (str(code) if code else None), _first_str(error.get("message"))
        return None, _first_str(error, body.get("message"), body.get("detail"))
