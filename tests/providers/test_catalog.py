"""The model catalog and the validation that runs before anything is sent."""

import pytest

from generations.providers import GenerationRequest, Kind, catalog


def errors_for(**fields) -> dict[str, list[str]]:
    base = {"provider": "apimart", "model": "Omni-Flash-Ext", "prompt": "a cat on a boat"}
    return catalog.validate(GenerationRequest(**{**base, **fields}))


def test_the_catalog_lists_every_documented_model():
    assert [spec.key for spec in catalog.MODELS] == [
        "omniakey/sora",
        "omniakey/runway-gen3",
        "omniakey/kling-1.5",
        "omniakey/pika-1.5",
        "omnivideo/seedance-2",
        "omnivideo/gpt-image-2",
        "omnivideo/nano-banana-2",
        "apimart/Omni-Flash-Ext",
        "omixa/sora",
    ]
    assert {spec.model: spec.max_duration for spec in catalog.for_provider("omniakey")} == {
        "sora": 15,
        "runway-gen3": 10,
        "kling-1.5": 10,
        "pika-1.5": 5,
    }
    assert catalog.get("omnivideo", "gpt-image-2").kind == Kind.IMAGE
    assert catalog.get("omnivideo", "seedance-2").kind == Kind.VIDEO


def test_where_a_document_is_silent_the_catalog_says_so_and_offers_no_field():
    for model in ("seedance-2", "gpt-image-2", "nano-banana-2"):
        spec = catalog.get("omnivideo", model)
        assert spec.durations == () and spec.resolutions == ()
        assert any("no duration or resolution field" in note for note in spec.notes)
    assert any("assumed" in note for note in catalog.get("omixa", "sora").notes)
    assert all(spec.image_counts == (0,) for spec in catalog.for_provider("omniakey"))


def test_a_documented_request_passes():
    assert errors_for(duration=10, resolution="1080p", aspect_ratio="9:16") == {}
    assert errors_for(resolution="4K") == {}  # case-insensitive, as documented


@pytest.mark.parametrize("seconds", [5, 7])
def test_apimart_refuses_durations_it_does_not_offer(seconds):
    assert errors_for(duration=seconds) == {
        "duration": [f"Omni Flash Ext accepts 4, 6, 8 or 10 seconds; {seconds} s is not possible."]
    }


def test_apimart_refuses_two_reference_images():
    two = ("https://example.com/a.jpg", "https://example.com/b.jpg")
    assert errors_for(reference_images=two) == {
        "reference_images": ["Omni Flash Ext takes 0, 1 or 3 reference images, not 2."]
    }
    assert errors_for(reference_images=two + ("data:image/png;base64,iVBORw0KGgo=",)) == {}


def test_apimart_refuses_480p():
    assert errors_for(resolution="480p") == {
        "resolution": ["Omni Flash Ext supports 720p, 1080p or 4k; '480p' is not one of them."]
    }


def test_omniakey_pika_refuses_eight_seconds():
    assert errors_for(provider="omniakey", model="pika-1.5", duration=8) == {
        "duration": ["Pika 1.5 makes videos of 3 to 5 seconds; 8 s is not possible."]
    }
    assert errors_for(provider="omniakey", model="sora", duration=8) == {}


def test_an_image_model_refuses_a_duration():
    assert errors_for(provider="omnivideo", model="gpt-image-2", duration=5) == {
        "duration": ["ChatGPT Image 2 makes images and takes no duration."]
    }


@pytest.mark.parametrize(
    "prompt, message",
    [
        ("   ", "Write a prompt: describe what you want to see."),
        ("x" * 4001, "The prompt is 4,001 characters long; the limit is 4,000."),
    ],
)
def test_empty_and_overlong_prompts_are_refused(prompt, message):
    assert errors_for(prompt=prompt) == {"prompt": [message]}
    assert errors_for(prompt="x" * 4000) == {}


def test_unknown_models_and_values_name_their_field():
    assert "model" in errors_for(model="Omni-Flash-Pro")
    assert "aspect_ratio" in errors_for(aspect_ratio="1:1")
    assert "reference_images" in errors_for(
        provider="omixa", model="sora", reference_images=("https://a/b",)
    )
    assert "reference_images" in errors_for(reference_images=("file:///etc/passwd",))
    assert "resolution" in errors_for(provider="omnivideo", model="seedance-2", resolution="720p")


def test_defaults_fill_only_what_was_left_empty():
    filled = catalog.with_defaults(GenerationRequest("apimart", "Omni-Flash-Ext", "p"))
    assert (filled.duration, filled.resolution, filled.aspect_ratio) == (6, "720p", "16:9")
    sora = catalog.with_defaults(GenerationRequest("omniakey", "sora", "p", duration=12))
    assert (sora.duration, sora.resolution, sora.aspect_ratio) == (12, "1080p", "16:9")
    image = catalog.with_defaults(GenerationRequest("omnivideo", "gpt-image-2", "p"))
    assert (image.duration, image.resolution, image.aspect_ratio) == (None, None, "16:9")


def test_case_insensitive_resolutions_are_sent_and_priced_in_one_spelling():
    upper = GenerationRequest("apimart", "Omni-Flash-Ext", "p", resolution="4K")
    assert catalog.with_defaults(upper).resolution == "4k"
