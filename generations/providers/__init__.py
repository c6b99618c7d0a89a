"""Gateway adapters: one module per dialect, a registry, and the model catalog.

from generations import providers
adapter = providers.get("apimart")
status = adapter.submit(request, credentials)
"""

from generations.providers.apimart import APIMart
from generations.providers.base import (
    Credentials,
    ErrorKind,
    GenerationRequest,
    Kind,
    Provider,
    ProviderError,
    ProviderStatus,
    ResultFile,
    State,
)
from generations.providers.omixa import Omixa
from generations.providers.omniakey import OmniaKey
from generations.providers.omnivideo import OmniVideo

REGISTRY: dict[str, type[Provider]] = {cls.id: cls for cls in (OmniaKey, OmniVideo, APIMart, Omixa)}


def get(provider_id: str, **kwargs) -> Provider:
    """An adapter for `provider_id`; KeyError for a gateway Omniweb does not speak."""
    return REGISTRY[provider_id](**kwargs)


def choices() -> list[tuple[str, str]]:
    return [(cls.id, cls.name) for cls in REGISTRY.values()]


__all__ = [
    "REGISTRY",
    "Credentials",
    "ErrorKind",
    "GenerationRequest",
    "Kind",
    "Provider",
    "ProviderError",
    "ProviderStatus",
    "ResultFile",
    "State",
    "choices",
    "get",
]
