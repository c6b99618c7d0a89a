"""The admin for presets: every member's presets, and featuring team presets.

Featured presets come first in every member's Create picker; only team presets may be featured
(the table refuses a featured personal preset), so the actions skip personal ones and say so.
"""

from django import forms
from django.contrib import admin, messages

from generations.models import Visibility
from generations.models.presets import Preset


class PresetForm(forms.ModelForm):
    class Meta:
        model = Preset
        fields = [
            "owner",
            "name",
            "visibility",
            "featured",
            "provider",
            "model",
            "duration",
            "resolution",
            "aspect_ratio",
            "prompt",
            "created_at",
        ]

    def clean(self):
        cleaned = super().clean()
        # The table refuses it too, but as an error page rather than a note on the form.
        if cleaned.get("featured") and cleaned.get("visibility") != Visibility.TEAM:
            self.add_error("featured", "Only team presets can be featured.")
        return cleaned


@admin.register(Preset)
class PresetAdmin(admin.ModelAdmin):
    form = PresetForm
    list_display = ("name", "owner", "visibility", "featured", "provider", "model", "updated_at")
    list_select_related = ("owner",)
    list_filter = ("visibility", "featured", "provider")
    search_fields = ("name", "owner__username", "model")
    readonly_fields = ("code", "created_at", "updated_at")
    actions = ("toggle_featured",)

    @admin.action(description="Feature or unfeature the selected team presets")
    def toggle_featured(self, request, queryset) -> None:
        team = list(queryset.filter(visibility=Visibility.TEAM))
        for preset in team:
            preset.featured = not preset.featured
        Preset.objects.bulk_update(team, ["featured"])
        featured = sum(preset.featured for preset in team)
        self.message_user(
            request,
            f"{featured} preset(s) now featured, {len(team) - featured} no longer featured.",
            messages.SUCCESS,
        )
        skipped = queryset.exclude(visibility=Visibility.TEAM).count()
        if skipped:
            self.message_user(
                request,
                f"{skipped} personal preset(s) left as they are: only team presets are featured.",
                messages.WARNING,
            )
