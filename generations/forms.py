"""The create form: one form for every catalogued model, with the fields that model accepts.

The catalog decides which fields a model has and which values they take; this form renders them,
checks uploads' headers with Pillow and turns the posted values into a GenerationRequest. It
stores nothing and decodes no upload: an upload's pixels are read only once the submit has
passed its cheap checks and its images are about to be stored (CheckedImage.encoded), which
writes them again without their metadata.
"""

from __future__ import annotations

import contextlib
import io
import struct
import uuid
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.urls import reverse
from django.utils.text import Truncator
from PIL import ExifTags, Image

from accounts.models import ProviderKey
from generations import providers
from generations.models import ReferenceImage, Result, Task
from generations.models.presets import SLOT
from generations.providers import GenerationRequest, catalog
from generations.providers.catalog import ModelSpec
from generations.services import (
    DATA_URI_GATEWAYS,
    EncodedImage,
    OrderImage,
    StoredReference,
    StoredResult,
)

MAX_IMAGE_BYTES = 10 * 1024 * 1024
MIN_SIDE, MAX_SIDE = 64, 8192
# Pillow format -> (content type, file extension). Nothing else is accepted: no SVG, no GIF.
IMAGE_FORMATS = {
    "PNG": ("image/png", "png"),
    "JPEG": ("image/jpeg", "jpg"),
    "WEBP": ("image/webp", "webp"),
}
ACCEPT = "image/png,image/jpeg,image/webp"
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


# How many times one submit may make the same request.
MAX_VARIATIONS = 4


def option_values(spec: ModelSpec, data) -> dict:
    """The duration, resolution and aspect ratio of `data` that `spec` takes at all: a field a
    model does not have is left out for it, never sent; a value it has but does not allow is
    kept, so the catalog refuses it in its own words."""
    offered = {
        "duration": spec.durations,
        "resolution": spec.resolutions,
        "aspect_ratio": spec.aspect_ratios,
    }
    return {name: data.get(name) if values else None for name, values in offered.items()}


def image_counts_text(spec: ModelSpec) -> str:
    """How many reference images a model takes, in words: "0, 1 or 3"."""
    counts = [str(n) for n in spec.image_counts]
    return counts[0] if len(counts) == 1 else ", ".join(counts[:-1]) + " or " + counts[-1]


@dataclass(frozen=True)
class CheckedImage:
    """An upload whose header passed the checks; its pixels are not decoded yet.

    `width` and `height` are the size the picture is shown at (its EXIF orientation applied),
    which is also the size of `encoded()`. Reading the pixels is the expensive part: it happens
    in `encoded()`, once, and only when the image is about to be stored or sent.
    """

    name: str
    content_type: str
    extension: str
    width: int
    height: int
    # The upload itself (a file object Pillow can read and seek), read again by encoded().
    upload: Any = field(repr=False, compare=False)
    # The EXIF orientation found in the header (1 to 8), applied when decoding.
    orientation: int = 1

    def encoded(self) -> EncodedImage:
        """The image decoded and written again without its metadata, or ValidationError when
        its data is damaged. Decoded on the first call only; later calls answer the same."""
        cached = self.__dict__.get("_encoded")
        if cached is None:
            cached = encode_image(self)
            # Frozen against changes to its fields; the cache is not one of them.
            object.__setattr__(self, "_encoded", cached)
        return cached


# EXIF orientation -> the transposition that shows the picture upright (as browsers do).
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# What a decoded image keeps when it is written again: transparency is part of the picture and
# the colour profile says how to show its colours; everything else in the file's info (EXIF,
# XMP, text chunks, comments, resolution, animation settings) is dropped.
KEPT_INFO = ("transparency", "icc_profile")
# Lossy formats are written again at high quality: the member's picture, barely changed.
SAVE_OPTIONS = {"PNG": {}, "JPEG": {"quality": 95}, "WEBP": {"quality": 95}}
PILLOW_FORMATS = {content_type: name for name, (content_type, _) in IMAGE_FORMATS.items()}


def megapixels(pixels: int) -> str:
    """40_000_000 -> "40 megapixels", 12_500_000 -> "12.5 megapixels", 5_000 -> "5,000 pixels"."""
    if pixels < 1_000_000:
        return f"{pixels:,} pixels"
    return f"{pixels / 1_000_000:,.1f}".removesuffix(".0") + " megapixels"


def too_many_pixels(
    name: str, width: int | None = None, height: int | None = None
) -> ValidationError:
    limit = megapixels(settings.UPLOAD_MAX_PIXELS)
    if width is None or height is None:
        return ValidationError(f"{name} has more than {limit}; choose a smaller image.")
    return ValidationError(
        f"{name} is {width}×{height} pixels ({megapixels(width * height)}); images may have "
        f"up to {limit}. Choose a smaller image."
    )


def header_orientation(image: Image.Image) -> int:
    """The EXIF orientation the file's header gives, 1 (upright) when it gives none."""
    # Only EXIF already read with the header counts: asked for more, a PNG would decode itself
    # to look for EXIF stored after its pixels.
    if "exif" not in image.info:
        return 1
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError, struct.error):
        return 1  # unreadable EXIF: the picture is shown as stored, as browsers do
    return value if value in UPRIGHT else 1


def check_image(upload) -> CheckedImage:
    """The upload as a CheckedImage, or ValidationError saying in plain words what is wrong.

    Only the file's header is read (format, size, orientation), from the upload itself: no
    pixel is decoded, and no more than the upload's own bytes are held (a WebP's container is
    read whole), so a refusal costs next to nothing however large the image claims to be.
    Damaged pixel data is found later, by CheckedImage.encoded().
    """
    name = upload.name or "The upload"
    if upload.size > MAX_IMAGE_BYTES:
        raise ValidationError(f"{name} is larger than 10 MB; choose a smaller image.")
    refused = ValidationError(f"{name} is not a PNG, JPEG or WebP image.")
    try:
        # Only these decoders are tried: an SVG or a text file renamed .png is not an image here.
        # Image.open reads the header; it decodes no pixel.
        with Image.open(upload, formats=list(IMAGE_FORMATS)) as image:
            image_format = image.format
            width, height = image.size
            orientation = header_orientation(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own limit (set from UPLOAD_MAX_PIXELS when Omniweb starts) stopped it.
        raise too_many_pixels(name) from None
    except (OSError, SyntaxError, ValueError, EOFError):
        raise refused from None
    if image_format not in IMAGE_FORMATS:
        raise refused
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise ValidationError(
            f"{name} is {width}×{height} pixels; each side must be {MIN_SIDE} to "
            f"{MAX_SIDE:,} pixels."
        )
    if width * height > settings.UPLOAD_MAX_PIXELS:
        raise too_many_pixels(name, width, height)
    if orientation >= 5:  # turned a quarter: shown with its sides swapped
        width, height = height, width
    content_type, extension = IMAGE_FORMATS[image_format]
    return CheckedImage(name, content_type, extension, width, height, upload, orientation)


def encode_image(checked: CheckedImage) -> EncodedImage:
    """Decode `checked` and write it again in its format, upright and without metadata.

    Memory is bounded by the pixel limit: the size is checked again before decoding, so
    nothing larger than UPLOAD_MAX_PIXELS is ever decoded here, whoever built `checked`.
    """
    image_format = PILLOW_FORMATS[checked.content_type]
    damaged = ValidationError(f"{checked.name} is damaged or incomplete; export it again.")
    buffer = io.BytesIO()
    try:
        with Image.open(checked.upload, formats=[image_format]) as image:
            width, height = image.size
            if width * height > settings.UPLOAD_MAX_PIXELS:
                raise too_many_pixels(checked.name, width, height)
            image.load()  # reads every pixel: truncated or corrupt data fails here
            kept = {key: image.info[key] for key in KEPT_INFO if key in image.info}
            turn = UPRIGHT.get(checked.orientation)
            clean = image if turn is None else image.transpose(turn)
            # What the writers would otherwise copy from the source (a JPEG's comment, for one)
            # comes from `info`; only the kept entries are left in it.
            clean.info = dict(kept)
            options = dict(SAVE_OPTIONS[image_format])
            if "icc_profile" in kept:
                options["icc_profile"] = kept["icc_profile"]
            clean.save(buffer, image_format, **options)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise too_many_pixels(checked.name) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error):
        raise damaged from None
    content_type, extension = IMAGE_FORMATS[image_format]
    return EncodedImage(buffer.getvalue(), content_type, extension)


class MultipleFileInput(forms.FileInput):
    allow_multiple_selected = True


class ImagesField(forms.FileField):
    """Several uploaded files under one name, checked one by one as images."""

    widget = MultipleFileInput

    def clean(self, data, initial=None):
        uploads = data if isinstance(data, list | tuple) else [data] if data else []
        single = super().clean
        return [single(upload, initial) for upload in uploads if upload]


# --- images carried over from earlier tasks -------------------------------------------------

# More than any model takes: a longer list is refused before anything is looked up.
MAX_CARRIED = 10
CARRIED_KINDS = ("reference", "result", "poster")


@dataclass(frozen=True)
class CarriedImage:
    """A stored image the create form carries over from a task the member may see: one the
    task was sent ("reference"), the image it made ("result"), or its poster ("poster").

    A file input cannot keep a file across a page load, so the form names the stored image
    instead, as `value` ("<kind>:<task code>:<position>"): never its public link, never a
    primary key. The next submit stores a new copy of it (`source`) with the new task.
    """

    value: str
    source: OrderImage
    url: str  # the member-only address the thumbnail is shown from
    description: str
    width: int | None
    height: int | None
    task: Task  # the task it comes from
    removed: bool = False


def find_carried(user, value: str) -> CarriedImage | None:
    """The stored image `value` names, if its task is one `user` may see; None otherwise.
    A mistyped value, a deleted task and another member's private task all look the same."""
    kind, _, rest = str(value).partition(":")
    code, _, position = rest.partition(":")
    try:
        code, position = uuid.UUID(code), int(position)
    except ValueError:
        return None
    if kind not in CARRIED_KINDS or position < 0:
        return None
    visible = Task.objects.visible_to(user)
    value = f"{kind}:{code}:{position}"
    if kind == "reference":
        # A task's references in the order it was sent them: position n is the nth image.
        found = list(
            ReferenceImage.objects.filter(task__in=visible, task__code=code)
            .select_related("task")
            .order_by("id")[position : position + 1]
        )
        if not found:
            return None
        (reference,) = found
        return CarriedImage(
            value,
            StoredReference(reference),
            reverse("generations-task-reference", args=[code, position]),
            f"Reference image {position + 1} of “{_short(reference.task.prompt)}”",
            reference.width,
            reference.height,
            reference.task,
        )
    result = (
        Result.objects.filter(task__in=visible, task__code=code, position=position)
        .select_related("task")
        .first()
    )
    if result is None:
        return None
    poster = reverse("generations-poster", args=[code, position])
    if kind == "poster":
        if not result.poster:
            return None
        what, url = "The poster of", poster
    else:
        if result.content_type not in PILLOW_FORMATS:
            return None  # a video, or an image format references cannot be
        what = "The result of"
        # The poster is the image's small copy: enough for a thumbnail.
        url = poster if result.poster else reverse("generations-file", args=[code, position])
    return CarriedImage(
        value,
        StoredResult(result, poster=kind == "poster"),
        url,
        f"{what} “{_short(result.task.prompt)}”",
        result.width,
        result.height,
        result.task,
    )


def carried_references(task: Task, count: int | None = None) -> list[str]:
    """The values that carry every image `task` was sent, in the order it was sent them.
    `count` is how many it was sent, where the caller knows (it has just stored them)."""
    if count is None:
        count = task.references.count()
    return [f"reference:{task.code}:{n}" for n in range(count)]


def _short(prompt: str) -> str:
    return Truncator(prompt).chars(60)


class ValuesField(forms.Field):
    """Short strings posted under one name, by hidden inputs or checkboxes."""

    widget = forms.MultipleHiddenInput

    def to_python(self, value) -> list[str]:
        values = value if isinstance(value, list | tuple) else [value] if value else []
        return [str(v) for v in values if v]


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

    def __init__(
        self, *args, user, spec: ModelSpec, keys: list[ProviderKey] | None = None, **kwargs
    ):
        """`keys` are the member's choices_for() keys of this gateway, when this request has
        read them already (the form a submit answers with is the submitted form's twin)."""
        super().__init__(*args, **kwargs)
        self.user = user
        self.spec = spec
        self.gateway = providers.REGISTRY[spec.provider].name
        if keys is None:
            keys = list(ProviderKey.objects.choices_for(user, spec.provider))
        self.keys = keys
        # The first key of each other gateway, read when a model to also try on needs it.
        self._other_keys: dict[str, ProviderKey | None] = {}
        self.also_keys: dict[str, ProviderKey] = {}
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
                    f"PNG, JPEG or WebP, up to 10 MB and "
                    f"{megapixels(settings.UPLOAD_MAX_PIXELS)} each, {MIN_SIDE} to "
                    f"{MAX_SIDE:,} pixels a side. Location and camera details are removed."
                ),
                widget=MultipleFileInput(attrs={"accept": ACCEPT}),
            )
            self.fields["reference_urls"] = forms.CharField(
                label="Or paste image addresses",
                required=False,
                help_text="One web address per line, starting with https://.",
                widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false"}),
            )
            # Images carried over from an earlier task (shown as thumbnails by
            # _carried_images.html), and those the member ticked to leave out.
            self.fields["carried"] = ValuesField(required=False)
            self.fields["remove_carried"] = ValuesField(required=False)
        self.fields["variations"] = forms.TypedChoiceField(
            label="Variations",
            choices=[(n, str(n)) for n in range(1, MAX_VARIATIONS + 1)],
            coerce=int,
            initial=1,
            # Left out (an API, an old page), it is one.
            required=False,
            empty_value=1,
            help_text="The same request several times; each is a task of its own.",
            widget=forms.Select(attrs=PRICED),
            error_messages={"invalid_choice": f"Choose 1 to {MAX_VARIATIONS} variations."},
        )
        self.fields["also"] = forms.MultipleChoiceField(
            label="Also try on",
            required=False,
            choices=[
                (gateway, [(key, label) for key, label in models if key != spec.key])
                for gateway, models in model_choices()
            ],
            help_text=(
                "The same prompt on other models, side by side in one run. Each takes the "
                "settings above that it has, and is paid with your first key of its gateway."
            ),
            widget=forms.CheckboxSelectMultiple(attrs=PRICED),
            error_messages={"invalid_choice": "Choose models from the list."},
        )
        self.fields["key"] = forms.ChoiceField(
            label="Pay with key",
            choices=[(str(key.code), self._key_label(key)) for key in self.keys],
            error_messages={
                "required": (
                    f"Add your own {self.gateway} key under Keys, or ask an admin to share one."
                ),
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
        names = ("reference_files", "reference_urls", "carried")
        return any(self.has_error(name) for name in names)

    @property
    def carried_images(self) -> list[CarriedImage]:
        """The carried images to show, those ticked to leave out included (marked)."""
        return self._carried[0]

    @cached_property
    def _carried(self) -> tuple[list[CarriedImage], int]:
        """(the carried images the member may see, how many named ones they may not)."""
        if "carried" not in self.fields:
            return [], 0
        removed = set(self["remove_carried"].value() or ())
        images, missing, seen = [], 0, set()
        for value in (self["carried"].value() or [])[:MAX_CARRIED]:
            image = find_carried(self.user, value)
            if image is None:
                if value not in removed:  # left out anyway: nothing to tell
                    missing += 1
            elif image.value not in seen:
                seen.add(image.value)
                images.append(replace(image, removed=image.value in removed or value in removed))
        return images, missing

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
        prompt = self.cleaned_data["prompt"].replace("\r\n", "\n")
        if SLOT in prompt:
            # A preset's prompt marks the words to write each time; sent as is, the gateway
            # would be asked for "{slot}" and charged for it.
            raise ValidationError(
                f"Replace {SLOT} in the prompt with your words: it marks the part of the "
                "preset's prompt that changes each time."
            )
        return prompt

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

    def clean_carried(self) -> list[CarriedImage]:
        if len(self.cleaned_data["carried"]) > MAX_CARRIED:
            raise ValidationError(
                f"A form carries at most {MAX_CARRIED} images; reload the page and try again."
            )
        images, missing = self._carried
        if missing:
            raise ValidationError(
                "An image carried over from an earlier task is no longer available (its task "
                "was deleted or is no longer shared), so it was left out. Check the images and "
                "submit again."
            )
        return [image for image in images if not image.removed]

    def clean_also(self) -> list[ModelSpec]:
        specs = [spec_for(value) for value in dict.fromkeys(self.cleaned_data["also"])]
        return [spec for spec in specs if spec is not None and spec != self.spec]

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
        images = [*(cleaned.get("reference_files") or []), *(cleaned.get("carried") or [])]
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
        self._check_also(stand_ins, bool(images))
        return cleaned

    def _check_also(self, stand_ins: tuple[str, ...], has_uploads: bool) -> None:
        """Each model to also try on must take the request as it stands: its problems are
        shown beside "Also try on", one line per model, in the catalog's words (which say
        what the model does allow); nothing is changed to make it fit."""
        self.also_keys: dict[str, ProviderKey] = {}
        if self.has_error("also"):
            return
        for spec in self.cleaned_data.get("also") or ():
            request = catalog.with_defaults(self.request_for(spec, stand_ins))
            for name, messages in catalog.validate(request).items():
                if name == "prompt":
                    continue  # the prompt is the main model's too, and checked there
                for message in messages:
                    if name == "reference_images":
                        message = f"{spec.label}: {message}"
                    self.add_error("also", message)
            gateway = providers.REGISTRY[spec.provider].name
            if has_uploads and spec.provider not in DATA_URI_GATEWAYS and not settings.PUBLIC_URL:
                self.add_error("also", f"{spec.label}: {PUBLIC_URL_NEEDED}")
            key = self._key_for(spec.provider)
            if key is None:
                self.add_error(
                    "also",
                    f"{spec.label}: you have no usable {gateway} key. Add one under Keys, or ask "
                    "an admin to share one.",
                )
            else:
                self.also_keys[spec.provider] = key

    def _key_for(self, provider: str) -> ProviderKey | None:
        """The key that pays for a model to also try on: the chosen key on the main model's
        gateway, the member's first key (own before team) on any other."""
        if provider == self.spec.provider:
            return self.cleaned_data.get("key")
        keys = self._other_keys
        if provider not in keys:
            keys[provider] = ProviderKey.objects.choices_for(self.user, provider).first()
        return keys[provider]

    def request_for(self, spec: ModelSpec, uploads: tuple[str, ...]) -> GenerationRequest:
        """The request for another model: the same prompt and images, and the settings of
        this form that `spec` has."""
        data = self.cleaned_data
        return GenerationRequest(
            provider=spec.provider,
            model=spec.model,
            prompt=data.get("prompt") or "",
            reference_images=tuple(uploads) + tuple(data.get("reference_urls") or ()),
            **option_values(spec, data),
        )

    def order_items(self) -> list[tuple[GenerationRequest, ProviderKey]]:
        """Every task a valid form asks for, as (request, key): each model's variations in
        turn, the chosen model first."""
        data = self.cleaned_data
        wanted = [(self.generation_request(()), data["key"])]
        for spec in data.get("also") or ():
            wanted.append((self.request_for(spec, ()), self.also_keys[spec.provider]))
        return [item for item in wanted for _ in range(data.get("variations") or 1)]

    @property
    def images_field(self) -> str:
        """Where a problem with the reference images as a whole is shown."""
        cleaned = getattr(self, "cleaned_data", {})
        images = cleaned.get("reference_files") or cleaned.get("carried")
        return "reference_files" if images else "reference_urls"

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
    if data.get("variations"):
        initial["variations"] = data["variations"]
    if hasattr(data, "getlist"):
        # The models to also try on stay chosen, except the one that is now the main model.
        initial["also"] = [value for value in data.getlist("also") if value != spec.key]
    if hasattr(data, "getlist"):
        # Carried images stay with the form (checked again when it is submitted), except
        # those the member ticked to leave out.
        removed = set(data.getlist("remove_carried"))
        initial["carried"] = [v for v in data.getlist("carried") if v not in removed]
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
