"""Every model each gateway offers, with the constraints its document states.

Forms and validation are driven by this table. Where a document is silent the entry says so in
`notes`, and a constraint left empty means the form does not offer that field and the adapter
sends nothing for it. Prices in credits live in the database, not here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from generations.providers.base import GenerationRequest, Kind

PROMPT_MAX_CHARS = 4000


@dataclass(frozen=True)
class ModelSpec:
    provider: str
    model: str  # the id the gateway expects
    label: str
    kind: Kind
    summary: str  # one capability line for the form
    durations: tuple[int, ...] = ()  # allowed seconds; empty: no duration field
    default_duration: int | None = None
    resolutions: tuple[str, ...] = ()  # allowed values; Omixa's are WxH sizes
    default_resolution: str | None = None
    resolutions_case_insensitive: bool = False
    aspect_ratios: tuple[str, ...] = ()
    default_aspect_ratio: str | None = None
    image_counts: tuple[int, ...] = (0,)  # how many reference images may be sent
    notes: tuple[str, ...] = field(default=())

    @property
    def key(self) -> str:
        return f"{self.provider}/{self.model}"

    @property
    def max_duration(self) -> int | None:
        return max(self.durations) if self.durations else None

    @property
    def accepts_images(self) -> bool:
        return any(self.image_counts)


def _omniakey(model: str, label: str, max_seconds: int, summary: str) -> ModelSpec:
    return ModelSpec(
        provider="omniakey",
        model=model,
        label=label,
        kind=Kind.VIDEO,
        summary=summary,
        # "Range depends on the model (typically 3-15 seconds)"; the table gives each maximum.
        durations=tuple(range(3, max_seconds + 1)),
        default_duration=5,
        resolutions=("720p", "1080p"),
        default_resolution="1080p",
        aspect_ratios=("16:9", "9:16", "1:1"),
        default_aspect_ratio="16:9",
        notes=(
            "The document gives durations as 'typically 3-15 seconds' with a per-model maximum; "
            "3 s is taken as the minimum.",
            "The document's request has no image field, so every OmniaKey model is "
            "text-to-video here.",
        ),
    )


def _omnivideo(model: str, label: str, kind: Kind, summary: str) -> ModelSpec:
    return ModelSpec(
        provider="omnivideo",
        model=model,
        label=label,
        kind=kind,
        summary=summary,
        aspect_ratios=("16:9", "9:16", "1:1"),
        default_aspect_ratio="16:9",
        image_counts=(0, 1),
        notes=(
            "The document has no duration or resolution field: none is sent, and the price is "
            "per task.",
            "The document shows aspect_ratio 16:9 only; 9:16 and 1:1 are assumed.",
            "The document takes a list of reference images without a limit; Omniweb sends at "
            "most one.",
        ),
    )


MODELS: tuple[ModelSpec, ...] = (
    _omniakey("sora", "Sora", 15, "OpenAI · photorealistic text-to-video, up to 15 s"),
    _omniakey("runway-gen3", "Runway Gen-3", 10, "Runway · style control, up to 10 s"),
    _omniakey("kling-1.5", "Kling 1.5", 10, "Kuaishou · fast generation, good motion, up to 10 s"),
    _omniakey("pika-1.5", "Pika 1.5", 5, "Pika Labs · stylized output, up to 5 s"),
    _omnivideo("seedance-2", "Seedance 2.0", Kind.VIDEO, "Text or image to video"),
    _omnivideo("gpt-image-2", "ChatGPT Image 2", Kind.IMAGE, "Text or image to image"),
    _omnivideo("nano-banana-2", "Nano Banana 2", Kind.IMAGE, "Text or image to image"),
    ModelSpec(
        provider="apimart",
        model="Omni-Flash-Ext",
        label="Omni Flash Ext",
        kind=Kind.VIDEO,
        summary="Text-to-video, one image to video, or three-image fusion; up to 4k",
        durations=(4, 6, 8, 10),
        default_duration=6,
        resolutions=("720p", "1080p", "4k"),
        default_resolution="720p",
        resolutions_case_insensitive=True,
        aspect_ratios=("16:9", "9:16"),
        default_aspect_ratio="16:9",
        image_counts=(0, 1, 3),
        notes=("Two reference images (first and last frame) are not supported by the gateway.",),
    ),
    ModelSpec(
        provider="omixa",
        model="sora",
        label="Sora (Omixa)",
        kind=Kind.VIDEO,
        summary="Text-to-video through Omixa",
        durations=(4, 8, 12),
        default_duration=8,
        resolutions=("1280x720", "720x1280", "1792x1024", "1024x1792"),
        default_resolution="1280x720",
        notes=(
            "The document shows only seconds=8 and size=1280x720; the other values are Sora's "
            "own (4, 8 or 12 seconds; 1280x720, 720x1280, 1792x1024, 1024x1792), assumed.",
            "Only video_operation text_to_video is documented, so no reference images.",
        ),
    ),
)

_BY_KEY = {spec.key: spec for spec in MODELS}


def get(provider: str, model: str) -> ModelSpec | None:
    return _BY_KEY.get(f"{provider}/{model}")


def for_provider(provider: str) -> list[ModelSpec]:
    return [spec for spec in MODELS if spec.provider == provider]


def _choices(values) -> str:
    values = [str(v) for v in values]
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " or " + values[-1]


def validate(request: GenerationRequest) -> dict[str, list[str]]:
    """Field-level problems with a request, in plain words; empty when it may be sent."""
    errors: dict[str, list[str]] = {}

    def add(name: str, message: str) -> None:
        errors.setdefault(name, []).append(message)

    spec = get(request.provider, request.model)
    if spec is None:
        add("model", f"There is no model {request.model!r} for gateway {request.provider!r}.")
        return errors

    prompt = request.prompt.strip()
    if not prompt:
        add("prompt", "Write a prompt: describe what you want to see.")
    elif len(prompt) > PROMPT_MAX_CHARS:
        add(
            "prompt",
            f"The prompt is {len(prompt):,} characters long; the limit is {PROMPT_MAX_CHARS:,}.",
        )

    if request.duration is not None:
        if not spec.durations:
            what = "images" if spec.kind == Kind.IMAGE else "videos of a length it chooses"
            add("duration", f"{spec.label} makes {what} and takes no duration.")
        elif request.duration not in spec.durations:
            if spec.durations == tuple(range(spec.durations[0], spec.durations[-1] + 1)):
                add(
                    "duration",
                    f"{spec.label} makes videos of {spec.durations[0]} to "
                    f"{spec.max_duration} seconds; {request.duration} s is not possible.",
                )
            else:
                add(
                    "duration",
                    f"{spec.label} accepts {_choices(spec.durations)} seconds; "
                    f"{request.duration} s is not possible.",
                )

    if request.resolution is not None:
        allowed = spec.resolutions
        value = request.resolution
        if spec.resolutions_case_insensitive:
            allowed = tuple(r.lower() for r in allowed)
            value = value.lower()
        if not spec.resolutions:
            add("resolution", f"{spec.label} takes no resolution.")
        elif value not in allowed:
            add(
                "resolution",
                f"{spec.label} supports {_choices(spec.resolutions)}; "
                f"{request.resolution!r} is not one of them.",
            )

    if request.aspect_ratio is not None:
        if not spec.aspect_ratios:
            add("aspect_ratio", f"{spec.label} takes no aspect ratio.")
        elif request.aspect_ratio not in spec.aspect_ratios:
            add(
                "aspect_ratio",
                f"{spec.label} supports the aspect ratios {_choices(spec.aspect_ratios)}; "
                f"{request.aspect_ratio!r} is not one of them.",
            )

    count = len(request.reference_images)
    if count not in spec.image_counts:
        if not spec.accepts_images:
            add("reference_images", f"{spec.label} takes no reference images.")
        else:
            add(
                "reference_images",
                f"{spec.label} takes {_choices(spec.image_counts)} reference images, not {count}.",
            )
    for url in request.reference_images:
        if not url.startswith(("https://", "http://", "data:image/")):
            add(
                "reference_images",
                "Each reference image must be a web address or an uploaded image.",
            )
            break
    return errors


def with_defaults(request: GenerationRequest) -> GenerationRequest:
    """The request with the model's defaults filled in where the member left a field empty."""
    spec = get(request.provider, request.model)
    if spec is None:
        return request
    resolution = request.resolution or spec.default_resolution
    if resolution and spec.resolutions_case_insensitive:
        # "4K" and "4k" are the same to the gateway; one spelling keeps prices and records exact.
        resolution = next(
            (r for r in spec.resolutions if r.lower() == resolution.lower()), resolution
        )
    return replace(
        request,
        duration=request.duration if request.duration is not None else spec.default_duration,
        resolution=resolution,
        aspect_ratio=request.aspect_ratio or spec.default_aspect_ratio,
    )
