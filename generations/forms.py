"""The create form: one form for every catalogued model, with the fields that model accepts.

The catalog decides which fields a model has and which values they take; this form renders them,
checks uploads with Pillow and turns the posted values into a GenerationRequest. It stores
nothing: uploads are saved by generations.create only once the task is paid for.
"""

from __future__ import annotations

import base64
import contextlib
import io
import uuid
from dataclasses import dataclass

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.urls import reverse
from PIL import Image

from accounts.models import ProviderKey
from generations import providers
from generations.models import Task
from generations.providers import GenerationRequest, catalog
from generations.providers.catalog import ModelSpec

MAX_IMAGE_BYTES = 10 * 1024 * 1024
MIN_SIDE, MAX_SIDE = 64, 8192
# Pillow format -> (content type, file extension). Nothing else is accepted: no SVG, no GIF.
IMAGE_FORMATS = {
    "PNG": ("image/png", "png"),
    "JPEG": ("image/jpeg", "jpg"),
    "WEBP": ("image/webp", "webp"),
}
ACCEPT = "image/png,image/jpeg,image/webp"
# Gateways whose document accepts an image inline as a base64 data URI; the others fetch a URL.
DATA_URI_GATEWAYS = frozenset({"apimart"})
PUBLIC_URL_NEEDED = (
    "Uploads need the site's public address (OMNIWEB_PUBLIC_URL); paste an image URL instead."
)
MAX_URL_LENGTH = 2000

DEFAULT_SPEC = catalog.MODELS[0]
# The fields the price depends on: a change in one of them asks the server for the price again.
PRICED = {"class": "price-input"}


def spec_for(value: str | None) -> ModelSpec | None:
    """The catalog entry for a "provider/model" value, or None."""
    provider, _, model = (value or "").partition("/")
    return catalog.get(provider, model)


def model_choices() -> list[tuple[str, list[tuple[str, str]]]]:
    """Every model, grouped by gateway in the registry's order."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for spec in catalog.MODELS:
        name = providers.REGISTRY[spec.provider].name
        groups.setdefault(name, []).append((spec.key, f"{spec.label} · {spec.kind.value}"))
    return list(groups.items())


def image_counts_text(spec: ModelSpec) -> str:
    """How many reference images a model takes, in words: "0, 1 or 3"."""
    counts = [str(n) for n in spec.image_counts]
    return counts[0] if len(counts) == 1 else ", ".join(counts[:-1]) + " or " + counts[-1]


@dataclass(frozen=True)
class CheckedImage:
    """An upload Pillow opened, verified and decoded: safe to store and to send on."""

    name: str
    data: bytes
    content_type: str
    extension: str
    width: int
    height: int

    @property
    def data_uri(self) -> str:
        return f"data:{self.content_type};base64,{base64.b64encode(self.data).decode('ascii')}"


def check_image(upload) -> CheckedImage:
    """The upload as a CheckedImage, or ValidationError saying in plain words what is wrong."""
    name = upload.name or "The upload"
    if upload.size > MAX_IMAGE_BYTES:
        raise ValidationError(f"{name} is larger than 10 MB; choose a smaller image.")
    data = upload.read()
    refused = ValidationError(f"{name} is not a PNG, JPEG or WebP image.")
    try:
        # Only these decoders are tried: an SVG or a text file renamed .png is not an image here.
        with Image.open(io.BytesIO(data), formats=list(IMAGE_FORMATS)) as image:
            image_format = image.format
            width, height = image.size
            image.verify()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        raise refused from None
    if image_format not in IMAGE_FORMATS:
        raise refused
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise ValidationError(
            f"{name} is {width}×{height} pixels; each side must be {MIN_SIDE} to "
            f"{MAX_SIDE:,} pixels."
        )
    try:
        # verify() checks the structure but leaves the image unusable and the pixels unread:
        # open it again and decode it, which catches truncated or corrupt data.
        with Image.open(io.BytesIO(data), formats=[image_format]) as image:
            image.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        raise ValidationError(f"{name} is damaged or incomplete; export it again.") from None
    content_type, extension = IMAGE_FORMATS[image_format]
    return CheckedImage(name, data, content_type, extension, width, height)


class MultipleFileInput(forms.FileInput):
    allow_multiple_selected = True


class ImagesField(forms.FileField):
    """Several uploaded files under one name, checked one by one as images."""

    widget = MultipleFileInput

    def clean(self, data, initial=None):
        uploads = data if isinstance(data, list | tuple) else [data] if data else []
        single = super().clean
        return [single(upload, initial) for upload in uploads if upload]


class CreateForm(forms.Form):
    """What a member sends to make one task; `spec` decides which fields exist."""

    prompt = forms.CharField(
        label="Prompt",
        widget=forms.Textarea(attrs={"rows": 5, "maxlength": catalog.PROMPT_MAX_CHARS}),
        help_text=f"Describe what you want to see; up to {catalog.PROMPT_MAX_CHARS:,} characters.",
        error_messages={"required": "Write a prompt: describe what you want to see."},
    )
    model = forms.ChoiceField(
        label="Model",
        choices=model_choices,
        error_messages={
            "required": "Choose a model.",
            "invalid_choice": "Choose a model from the list.",
        },
    )
    visibility = forms.ChoiceField(
        label="Who can see the result",
        choices=Task.Visibility.choices,
        initial=Task.Visibility.TEAM,
        widget=forms.RadioSelect,
        error_messages={"required": "Choose who can see the result."},
    )
    form_token = forms.UUIDField(
        widget=forms.HiddenInput,
        error_messages={
            "required": "This form is incomplete; reload the page and submit again.",
            "invalid": "This form is incomplete; reload the page and submit again.",
        },
    )

    def __init__(self, *args, user, spec: ModelSpec, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user
        self.spec = spec
        self.gateway = providers.REGISTRY[spec.provider].name
        self.keys = list(ProviderKey.objects.choices_for(user, spec.provider))
        self.fields["model"].initial = spec.key
        # The model's capability line, shown under the picker by _model_fields.html.
        self.fields["model"].help_text = spec.summary
        self.fields["form_token"].initial = uuid.uuid4()
        self.fields["model"].widget.attrs.update(
            {
                "hx-get": reverse("generations-create-fields"),
                "hx-trigger": "change",
                "hx-target": "#model-fields",
                "hx-swap": "outerHTML",
                "hx-include": "#model-fields",
            }
        )
        if spec.durations:
            self.fields["duration"] = forms.CharField(
                label="Duration",
                required=False,
                initial=spec.default_duration,
                widget=forms.Select(
                    choices=[(str(d), f"{d} seconds") for d in spec.durations], attrs=PRICED
                ),
            )
        if spec.resolutions:
            self.fields["resolution"] = forms.CharField(
                label="Resolution",
                required=False,
                initial=spec.default_resolution,
                widget=forms.Select(choices=[(r, r) for r in spec.resolutions], attrs=PRICED),
            )
        if spec.aspect_ratios:
            self.fields["aspect_ratio"] = forms.CharField(
                label="Aspect ratio",
                required=False,
                initial=spec.default_aspect_ratio,
                widget=forms.Select(choices=[(a, a) for a in spec.aspect_ratios], attrs=PRICED),
            )
        if spec.accepts_images:
            self.fields["reference_files"] = ImagesField(
                label="Upload images",
                required=False,
                help_text=(
                    f"PNG, JPEG or WebP, up to 10 MB each, {MIN_SIDE} to {MAX_SIDE:,} pixels a "
                    "side."
                ),
                widget=MultipleFileInput(attrs={"accept": ACCEPT}),
            )
            self.fields["reference_urls"] = forms.CharField(
                label="Or paste image addresses",
                required=False,
                help_text="One web address per line, starting with https://.",
                widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false"}),
            )
        self.fields["key"] = forms.ChoiceField(
            label="Pay with key",
            choices=[(str(key.code), self._key_label(key)) for key in self.keys],
            error_messages={
                "required": f"Add a key for {self.gateway} under Keys first.",
                "invalid_choice": f"Choose one of your active keys for {self.gateway}.",
            },
        )

    def _key_label(self, key: ProviderKey) -> str:
        whose = "your key" if key.owner_id == self.user.pk else "team key"
        return f"{key.label} {key.masked} · {whose}"

    # --- what the templates show -------------------------------------------------------------

    @property
    def option_fields(self) -> list[forms.BoundField]:
        return [
            self[name] for name in ("duration", "resolution", "aspect_ratio") if name in self.fields
        ]

    @property
    def image_counts(self) -> str:
        return image_counts_text(self.spec)

    @property
    def has_image_errors(self) -> bool:
        return any(self.has_error(name) for name in ("reference_files", "reference_urls"))

    def price_inputs(self) -> dict[str, str]:
        """The values the price depends on, as they stand in the form."""
        values = {"model": self.spec.key}
        for bound in self.option_fields:
            value = bound.value()
            values[bound.name] = "" if value is None else str(value)
        return values

    # --- cleaning -----------------------------------------------------------------------------

    def clean_prompt(self) -> str:
        # Browsers send line breaks as \r\n but count them as one character against maxlength.
        return self.cleaned_data["prompt"].replace("\r\n", "\n")

    def clean_duration(self) -> int | None:
        value = self.cleaned_data["duration"]
        if not value:
            return None
        try:
            return int(value)
        except ValueError:
            raise ValidationError("Choose a duration in seconds from the list.") from None

    def clean_resolution(self) -> str | None:
        return self.cleaned_data["resolution"] or None

    def clean_aspect_ratio(self) -> str | None:
        return self.cleaned_data["aspect_ratio"] or None

    def clean_key(self) -> ProviderKey:
        code = self.cleaned_data["key"]
        return next(key for key in self.keys if str(key.code) == code)

    def clean_reference_files(self) -> list[CheckedImage]:
        uploads = self.cleaned_data["reference_files"]
        most = max(self.spec.image_counts)
        if len(uploads) > most:
            raise ValidationError(
                f"{self.spec.label} takes {self.image_counts} reference images; "
                f"you chose {len(uploads)} files."
            )
        checked, errors = [], []
        for upload in uploads:
            try:
                checked.append(check_image(upload))
            except ValidationError as exc:
                errors.append(exc)
        if errors:
            raise ValidationError(errors)
        return checked

    def clean_reference_urls(self) -> list[str]:
        lines = [line.strip() for line in self.cleaned_data["reference_urls"].splitlines()]
        urls = [line for line in lines if line]
        check = URLValidator(schemes=["https", "http"])
        for number, url in enumerate(urls, start=1):
            try:
                if len(url) > MAX_URL_LENGTH:
                    raise ValidationError("too long")
                check(url)
            except ValidationError:
                raise ValidationError(
                    f"Address {number} is not a web address; write one address per line, "
                    "starting with https://."
                ) from None
        return urls

    def clean(self):
        cleaned = super().clean()
        images = cleaned.get("reference_files") or []
        if (
            images
            and self.spec.provider not in DATA_URI_GATEWAYS
            and not settings.PUBLIC_URL
            and not self.has_error("reference_files")
        ):
            self.add_error("reference_files", PUBLIC_URL_NEEDED)
        # The catalog's own checks, with its words, for the fields that are otherwise fine.
        # Uploads become addresses only once the task is paid for; until then one stand-in per
        # image lets the catalog check how many this model accepts.
        stand_ins = tuple("data:image/png;base64," for _ in images)
        request = catalog.with_defaults(self.generation_request(stand_ins))
        for name, messages in catalog.validate(request).items():
            if name == "reference_images":
                if self.has_image_errors:
                    continue
                name = self.images_field
            if name not in self.fields or self.has_error(name):
                continue
            for message in messages:
                self.add_error(name, message)
        return cleaned

    @property
    def images_field(self) -> str:
        """Where a problem with the reference images as a whole is shown."""
        uploads = self.cleaned_data.get("reference_files") if hasattr(self, "cleaned_data") else []
        return "reference_files" if uploads else "reference_urls"

    def generation_request(self, uploads: tuple[str, ...]) -> GenerationRequest:
        """The request as the member filled it in; `uploads` stand for the uploaded images."""
        data = self.cleaned_data
        return GenerationRequest(
            provider=self.spec.provider,
            model=self.spec.model,
            prompt=data.get("prompt") or "",
            duration=data.get("duration"),
            resolution=data.get("resolution"),
            aspect_ratio=data.get("aspect_ratio"),
            reference_images=tuple(uploads) + tuple(data.get("reference_urls") or ()),
        )

    def apply_refusal(self, refusal) -> None:
        """Show a SubmitRefused's per-field messages beside their fields."""
        for name, messages in refusal.errors.items():
            target = self.images_field if name == "reference_images" else name
            if target not in self.fields:
                target = None
            for message in messages:
                self.add_error(target, message)


def initial_from(data, spec: ModelSpec) -> dict:
    """What the member had chosen, kept where it still fits `spec`: used when the model changes,
    so switching between similar models keeps the duration, key and the rest."""
    initial: dict = {"model": spec.key}
    for name in ("prompt", "reference_urls"):
        if data.get(name):
            initial[name] = data[name]
    if data.get("visibility") in Task.Visibility.values:
        initial["visibility"] = data["visibility"]
    with contextlib.suppress(ValueError):
        initial["form_token"] = uuid.UUID(data.get("form_token") or "")
    allowed = {
        "duration": {str(d) for d in spec.durations},
        "resolution": set(spec.resolutions),
        "aspect_ratio": set(spec.aspect_ratios),
    }
    for name, values in allowed.items():
        if data.get(name) in values:
            initial[name] = data[name]
    if data.get("key"):
        # Kept only if it is one of this gateway's keys; the select shows the default otherwise.
        initial["key"] = data["key"]
    return initial
