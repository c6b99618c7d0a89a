"""Omni Video open API (document 001): a self-hosted white-label site, so there is no public
base URL; every key names its site.

Submit `POST /api/v1/tasks/create` with `model_id`, `prompt`, `image_urls` and `aspect_ratio`;
poll `GET /api/v1/tasks/{task_id}`. Every answer is an envelope `{code, msg, data}`: `code: 200`
is success and `code: 0` a business failure even on HTTP 200, with the reason in `msg` (often
Chinese: we keep it as written and show it as the error's `details`). `task_status` is 1 queued,
2 running, 3 success, 4 failed; the result is `video_url` or `image_url`. `credits` is what the
site charged; it deducts on submit and refunds failed tasks itself.

The document does not say where a failed task's reason is; we look for `error_message`,
`error` (or its `message`) and `fail_reason` in `data`, then the envelope's `msg`.
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
    as_cost,
    gateway_text,
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
            raise ProviderError(
                "Omni Video reported a business failure.",
                kind=ErrorKind.BUSINESS,
                code=str(body["code"]),
                status_code=200,
                details=self.message(body),
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
            cost=as_cost(data.get("credits")),
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
        failure = {}
        if state == State.FAILED:
            error = data.get("error")
            msg = self.message(body)
            failure = self.task_failed(
                gateway_text(data.get("error_message"))
                or gateway_text(error.get("message") if isinstance(error, dict) else error)
                or gateway_text(data.get("fail_reason"))
                or (msg if msg != "ok" else None)
            )
        return ProviderStatus(
            provider_task_id=data["task_id"],
            state=state,
            raw_status=str(raw),
            progress=100 if state == State.SUCCEEDED else None,
            results=results,
            cost=as_cost(data.get("credits")),
            **failure,
        )

    @staticmethod
    def message(body: dict[str, Any]) -> str | None:
        """The envelope's `msg`, the one field the document names for a reason."""
        return gateway_text(body.get("msg"))

    def error_details(self, body: Any) -> tuple[str | None, str | None]:
        if isinstance(body, dict) and isinstance(body.get("msg"), str):
            return (str(body["code"]) if "code" in body else None), body["msg"]
        return None, None
