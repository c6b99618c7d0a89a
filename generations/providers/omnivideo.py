"""Omni Video open API (document 001): a self-hosted white-label site, so there is no public
base URL; every key names its site.

Submit `POST /api/v1/tasks/create` with `model_id`, `prompt`, `image_urls` and `aspect_ratio`;
poll `GET /api/v1/tasks/{task_id}`. Every answer is an envelope `{code, msg, data}`: `code: 200`
is success and `code: 0` a business failure even on HTTP 200, with the reason in `msg` (often
Chinese: we keep it as written and show it). `task_status` is 1 queued, 2 running, 3 success,
4 failed; the result is `video_url` or `image_url`. `credits` is what the site charged; it
deducts on submit and refunds failed tasks itself.

The document does not say where a failed task's reason is; we look for `error_message`,
`error` and `fail_reason` in `data`, then the envelope's `msg`.
"""

from typing import Any

from generations.providers.base import (
    ErrorKind,
    GenerationRequest,
    Provider,
    ProviderError,
    ProviderStatus,
    ResultFile,
    State,
    as_decimal,
)

STATUSES = {1: State.QUEUED, 2: State.RUNNING, 3: State.SUCCEEDED, 4: State.FAILED}


class OmniVideo(Provider):
    id = "omnivideo"
    name = "Omni Video"
    default_base_url = None

    def build_submit(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model_id": request.model,
            "prompt": request.prompt,
            "image_urls": list(request.reference_images),
        }
        if request.aspect_ratio:
            body["aspect_ratio"] = request.aspect_ratio
        return "/api/v1/tasks/create", body

    def data(self, body: Any) -> dict[str, Any]:
        """The envelope's `data`, or the business failure it reports."""
        if not isinstance(body, dict) or "code" not in body:
            raise self.malformed("the {code, msg, data} envelope")
        if body["code"] != 200:
            message = body.get("msg") or "the request was refused"
            raise ProviderError(
                f"Omni Video: {message}",
                kind=ErrorKind.BUSINESS,
                code=str(body["code"]),
                status_code=200,
            )
        data = body.get("data")
        if not isinstance(data, dict):
            raise self.malformed("data")
        return data

    def parse_submit(self, body: Any) -> ProviderStatus:
        data = self.data(body)
        if not isinstance(data.get("task_id"), str) or not data["task_id"]:
            raise self.malformed("a task_id")
        return ProviderStatus(
            provider_task_id=data["task_id"],
            state=State.QUEUED,
            raw_status="submitted",
            cost=as_decimal(data.get("credits")),
        )

    def status_path(self, provider_task_id: str) -> str:
        return f"/api/v1/tasks/{provider_task_id}"

    def parse_status(self, body: Any) -> ProviderStatus:
        data = self.data(body)
        if not isinstance(data.get("task_id"), str):
            raise self.malformed("a task_id")
        raw = data.get("task_status")
        state = STATUSES.get(raw) if isinstance(raw, int) and not isinstance(raw, bool) else None
        if state is None:
            raise self.unknown_status(raw)
        results: tuple[ResultFile, ...] = ()
        if state == State.SUCCEEDED:
            url = data.get("video_url") or data.get("image_url")
            if not isinstance(url, str):
                raise self.malformed("the result's video_url or image_url")
            results = (ResultFile(url=url),)
        error = None
        if state == State.FAILED:
            reason = data.get("error_message") or data.get("error") or data.get("fail_reason")
            msg = body.get("msg") if body.get("msg") not in (None, "", "ok") else None
            error = str(reason or msg or "The gateway did not say why.")
        return ProviderStatus(
            provider_task_id=data["task_id"],
            state=state,
            raw_status=str(raw),
            progress=100 if state == State.SUCCEEDED else None,
            results=results,
            error=error,
            cost=as_decimal(data.get("credits")),
        )

    def error_details(self, body: Any) -> tuple[str | None, str | None]:
        if isinstance(body, dict) and isinstance(body.get("msg"), str):
            return (str(body["code"]) if "code" in body else None), body["msg"]
        return None, None
