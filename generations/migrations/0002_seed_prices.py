"""Starting prices for every catalogued model; admins edit them afterwards."""

from django.db import migrations

# provider, model, unit, credits per unit, resolution multipliers
PRICES = [
    ("omniakey", "sora", "second", 10, {"720p": 1, "1080p": 1.5}),
    ("omniakey", "runway-gen3", "second", 8, {"720p": 1, "1080p": 1.5}),
    ("omniakey", "kling-1.5", "second", 6, {"720p": 1, "1080p": 1.5}),
    ("omniakey", "pika-1.5", "second", 5, {"720p": 1, "1080p": 1.5}),
    ("omnivideo", "seedance-2", "task", 60, {}),
    ("omnivideo", "gpt-image-2", "image", 10, {}),
    ("omnivideo", "nano-banana-2", "image", 8, {}),
    ("apimart", "Omni-Flash-Ext", "second", 8, {"720p": 1, "1080p": 1.5, "4k": 3}),
    (
        "omixa",
        "sora",
        "second",
        10,
        {"1280x720": 1, "720x1280": 1, "1792x1024": 1.6, "1024x1792": 1.6},
    ),
]


def seed(apps, schema_editor):
    ModelPrice = apps.get_model("generations", "ModelPrice")
    for provider, model, unit, credits, multipliers in PRICES:
        ModelPrice.objects.get_or_create(
            provider=provider,
            model=model,
            defaults={
                "unit": unit,
                "credits_per_unit": credits,
                "resolution_multipliers": multipliers,
            },
        )


class Migration(migrations.Migration):
    dependencies = [("generations", "0001_initial")]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
