"""API input turned into an order for the one submit path (`services.submit_order`).

Both the REST API and the OpenAI-compatible facade come through here, so a task made by a
script is checked, priced, limited and charged exactly like one made on the Create page: the
catalog's rules, the member's keys, quotas and balance, the same refusals in the same words.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.validators import URLValidator

from accounts.models import ProviderKey
from generations.forms import MAX_IMAGE_BYTES, MAX_URL_LENGTH, PUBLIC_URL_NEEDED, check_image
from generations.providers import GenerationRequest, catalog
from generations.services import DATA_URI_GATEWAYS, OrderItem, SubmitRefused

# The namespace of submit tokens made from Idempotency-Key headers.
IDEMPOTENCY_NAMESPACE = uuid.UUID("5b0b6a52-3d5c-4a57-9a43-2f1c9d1a7e10")
MAX_IDEMPOTENCY_KEY = 255
MAX_REFERENCE_IMAGES = max(max(spec.image_counts) for spec in catalog.MODELS)
# A data URI of the largest image an upload may be, in base64, with room for its header.
MAX_DATA_URI_CHARS = (MAX_IMAGE_BYTES + 2) // 3 * 4 + 100
DATA_URI = re.compile(r"data:(image/[a-z0-9.+-]+);base64,", re.IGNORECASE)

check_https = URLValidator(schemes=["https"])


@dataclass(frozen=True)
class ItemInput:
    """One generation as an API caller writes it; `model` is "<gateway>/<model>"."""

    model: str
    prompt: str
    duration: int | None = None
    resolution: str | None = None
    aspect_ratio: str | None = None
    key: uuid.UUID | None = None


def idempotency_token(user, header: str | None, scope: str = "api") -> uuid.UUID | None:
    """The submit token an Idempotency-Key header stands for: the same key from the same member
    on the same API (`scope`) finds the same tasks; two members' keys, or one key used on
    /api/v1 and on /v1/videos, never meet."""
    if header is None:
        return None
    header = header.strip()
    if not header or len(header) > MAX_IDEMPOTENCY_KEY:
        raise SubmitRefused(
            f"The Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY} characters.",
            {"Idempotency-Key": ["1 to 255 characters."]},
            code="invalid",
        )
    return uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{scope}:{user.pk}:{header}")


def spec_named(value: str, field: str = "model") -> catalog.ModelSpec:
    provider, _, model = value.partition("/")
    spec = catalog.get(provider, model)
    if spec is None:
        raise SubmitRefused(
            f"There is no model {value!r}; GET /api/v1/models lists them.",
            {field: [f"Unknown model {value!r}; write it as <gateway>/<model>."]},
            code="invalid",
        )
    return spec


def key_for(user, provider: str, code: uuid.UUID | None, field: str = "key") -> ProviderKey:
    """The key that pays: the one named, if the member may use it, else their first."""
    keys = ProviderKey.objects.choices_for(user, provider)
    if code is not None:
        key = keys.filter(code=code).first()
        if key is None:
            raise SubmitRefused(
                "That key cannot be used: it is not yours or shared with you, it is for another "
                "gateway, or it is disabled.",
                {field: ["Choose one of your active keys for this gateway."]},
                code="key",
            )
        return key
    key = keys.first()
    if key is None:
        raise SubmitRefused(
            f"You have no usable key for {provider}; add one on the Keys page.",
            {field: [f"Add a key for {provider} first."]},
            code="key",
        )
    return key


def order_item(user, item: ItemInput, urls: tuple[str, ...] = (), where: str = "") -> OrderItem:
    spec = spec_named(item.model, f"{where}model")
    request = GenerationRequest(
        provider=spec.provider,
        model=spec.model,
        prompt=item.prompt,
        duration=item.duration,
        resolution=item.resolution,
        aspect_ratio=item.aspect_ratio,
        reference_images=urls,
    )
    # The key was picked from choices_for: usable by this member for this gateway.
    return OrderItem(request, key_for(user, spec.provider, item.key, f"{where}key"), True)


def reference_images(values: list[str], field: str = "reference_images"):
    """(checked images from data URIs, https addresses), or SubmitRefused with the reason.

    A data URI is decoded (its size bounded first) and checked like an upload; an address is
    passed to the gateway as the Create page passes a pasted one."""
    if len(values) > MAX_REFERENCE_IMAGES:
        raise SubmitRefused(
            f"At most {MAX_REFERENCE_IMAGES} reference images.",
            {field: [f"At most {MAX_REFERENCE_IMAGES} reference images."]},
            code="invalid",
        )
    images, urls, errors = [], [], []
    for number, value in enumerate(values, start=1):
        header = DATA_URI.match(value[:100])
        if header:
            if len(value) > MAX_DATA_URI_CHARS:
                errors.append(f"Image {number} is larger than 10 MB.")
                continue
            try:
                data = base64.b64decode(value[header.end() :], validate=True)
                images.append(check_image(ContentFile(data, name=f"Image {number}")))
            except (binascii.Error, ValueError):
                errors.append(f"Image {number} is not valid base64.")
            except ValidationError as exc:
                errors.extend(exc.messages)
            continue
        try:
            if len(value) > MAX_URL_LENGTH:
                raise ValidationError("too long")
            check_https(value)
        except ValidationError:
            errors.append(
                f"Image {number} must be an https:// address or a data:image/...;base64, URI."
            )
            continue
        urls.append(value)
    if errors:
        raise SubmitRefused("A reference image was refused.", {field: errors}, code="invalid")
    return tuple(images), tuple(urls)


def check_reachable(items, images, field: str = "reference_images") -> None:
    """Images sent as data must reach gateways that fetch them from this site's public address;
    with none set, only gateways that take data inline can have them (as on the Create page)."""
    if not images or settings.PUBLIC_URL:
        return
    for item in items:
        if item.request.provider not in DATA_URI_GATEWAYS:
            spec = catalog.get(item.request.provider, item.request.model)
            raise SubmitRefused(
                f"{spec.label} fetches reference images from this site's public address, which "
                "is not set; send an https address instead.",
                {field: [PUBLIC_URL_NEEDED]},
                code="invalid",
            )
