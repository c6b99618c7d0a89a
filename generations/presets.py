"""Presets and prompt history on the Create page, and the page that manages presets.

A preset is saved from the create form itself (its "Save as preset" button posts the whole
form, so the settings saved are the ones on screen) and used from the picker above it: the
preset's values fill a fresh form where the catalog still allows them, and what no longer fits
is named and left out. Recent prompts come from the member's own tasks, read once per full
Create page. Lookups start from the member: another member's personal preset answers 404.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from urllib.parse import urlencode

from django.contrib import messages
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.text import Truncator
from django.views.decorators.http import require_GET, require_POST

from generations import create as create_page
from generations.forms import DEFAULT_SPEC, CreateForm, initial_from, option_values, spec_for
from generations.models import Task, Visibility
from generations.models.presets import (
    MAX_PRESETS_PER_MEMBER,
    PRESET_NAME_CHARS,
    SLOT,
    Preset,
)
from generations.providers import catalog

SETTINGS = ("duration", "resolution", "aspect_ratio")
SETTING_WORDS = {"duration": "duration", "resolution": "resolution", "aspect_ratio": "aspect ratio"}
# The create form's fields that save a preset; they are not CreateForm fields.
NAME, VISIBILITY, WITH_PROMPT = "preset_name", "preset_visibility", "preset_prompt"

# Recent prompts: how many are offered, and how many of the newest tasks are read to find them
# (a member who repeats one prompt many times gets fewer; reading the whole history would not
# be cheap).
RECENT_PROMPTS = 10
RECENT_SCAN = 60
# Longer prompts are linked by their task rather than written into the address.
PROMPT_IN_LINK_CHARS = 1000


# --- lookups ---------------------------------------------------------------------------------


def _code(value) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise Http404("No such preset.") from None


def visible_preset(user, code) -> Preset:
    """A preset `user` may use: their own or the team's; anything else answers 404."""
    return get_object_or_404(Preset.objects.visible_to(user), code=_code(code))


def changeable_presets(user):
    """What `user` may rename or delete: their own presets, and team presets for admins."""
    if user.is_staff:
        return Preset.objects.filter(Q(owner=user) | Q(visibility=Visibility.TEAM))
    return Preset.objects.filter(owner=user)


# --- filling the create form from a preset ---------------------------------------------------


@dataclass
class Filling:
    """What a preset puts in the create form, and what it leaves out and why."""

    initial: dict = field(default_factory=dict)
    left_out: list[str] = field(default_factory=list)
    usable: bool = True

    @property
    def spec(self):
        return spec_for(self.initial.get("model"))


def filling(preset: Preset) -> Filling:
    """The form's starting values from `preset`: nothing when its model is gone; otherwise its
    model, its prompt, and each setting the catalog still allows (the others are left to the
    model's defaults and named, in the catalog's words)."""
    spec = preset.spec
    if spec is None:
        return Filling(left_out=preset.problems(), usable=False)
    result = Filling(initial={"model": spec.key})
    if preset.prompt:
        result.initial["prompt"] = preset.prompt[: catalog.PROMPT_MAX_CHARS]
    errors = catalog.validate(preset.request())
    for name in SETTINGS:
        value = getattr(preset, name)
        if value in (None, ""):
            continue
        if name in errors:
            result.left_out.extend(errors[name])
        else:
            result.initial[name] = str(value)
    return result


def preset_form(request: HttpRequest, preset: Preset) -> CreateForm:
    """A fresh create form filled from `preset`, with a message saying what it did."""
    fill = filling(preset)
    spec = fill.spec or DEFAULT_SPEC
    form = CreateForm(user=request.user, spec=spec, initial=fill.initial)
    if not fill.usable:
        messages.warning(
            request,
            f"The preset “{preset.name}” no longer fits: {' '.join(fill.left_out)} "
            "Nothing was filled in.",
        )
        return form
    if fill.left_out:
        messages.warning(
            request,
            f"Used the preset “{preset.name}”, except what no longer fits (left at the "
            f"model's defaults): {' '.join(fill.left_out)}",
        )
    else:
        messages.success(request, f"Used the preset “{preset.name}”.")
    if SLOT in fill.initial.get("prompt", ""):
        mark_slot(form)
    return form


def mark_slot(form: CreateForm) -> None:
    """The prompt has a {slot}: it takes the focus and presets.js selects the slot, so what
    the member types replaces it."""
    attrs = form.fields["prompt"].widget.attrs
    attrs.update({"autofocus": True, "data-slot": SLOT})
    form.fields[
        "prompt"
    ].help_text = (
        f"Type your words in place of {SLOT}; up to {catalog.PROMPT_MAX_CHARS:,} characters."
    )


@require_GET
def preset_fill(request: HttpRequest) -> HttpResponse:
    """The picker's htmx request: the create form filled from a preset. Without htmx the
    picker asks for /create/?preset=<code>, the whole page."""
    preset = visible_preset(request.user, request.GET.get("preset"))
    if not request.htmx:
        return redirect(f"{reverse('generations-create')}?{urlencode({'preset': preset.code})}")
    form = preset_form(request, preset)
    return create_page.render_form(request, form)


# --- saving a preset from the create form ----------------------------------------------------


@dataclass
class Saving:
    """The "Save as preset" fields as posted, and their problems."""

    name: str = ""
    visibility: str = Visibility.PRIVATE
    with_prompt: bool = False
    errors: list[str] = field(default_factory=list)
    open: bool = False


def saving_from(data) -> Saving:
    visibility = data.get(VISIBILITY)
    return Saving(
        name=(data.get(NAME) or "").strip()[: PRESET_NAME_CHARS * 2],
        visibility=visibility if visibility in Visibility.values else Visibility.PRIVATE,
        with_prompt=bool(data.get(WITH_PROMPT)),
        open=True,
    )


def preset_from_post(user, data, saving: Saving) -> Preset | None:
    """The preset the posted create form describes, or None with `saving.errors` filled in."""
    spec = spec_for(data.get("model"))
    if not saving.name:
        saving.errors.append("Give the preset a name.")
    elif len(saving.name) > PRESET_NAME_CHARS:
        saving.errors.append(f"A preset's name has at most {PRESET_NAME_CHARS} characters.")
    if spec is None:
        saving.errors.append("Choose a model from the list.")
        return None
    values = option_values(spec, data)
    duration = values["duration"] or None
    if duration is not None:
        try:
            duration = int(duration)
        except ValueError:
            saving.errors.append("Choose a duration in seconds from the list.")
            return None
    prompt = (data.get("prompt") or "").replace("\r\n", "\n").strip() if saving.with_prompt else ""
    if saving.with_prompt and not prompt:
        saving.errors.append("Write the prompt to include, or untick “Include the text above”.")
    preset = Preset(
        owner=user,
        name=saving.name,
        visibility=saving.visibility,
        provider=spec.provider,
        model=spec.model,
        duration=duration,
        resolution=values["resolution"] or "",
        aspect_ratio=values["aspect_ratio"] or "",
        prompt=prompt,
    )
    # The catalog's own words for a setting (or a prompt) the model does not take.
    problems = catalog.validate(preset.request(prompt or "x"))
    saving.errors.extend(message for messages_ in problems.values() for message in messages_)
    if Preset.objects.filter(owner=user).count() >= MAX_PRESETS_PER_MEMBER:
        saving.errors.append(
            f"You have {MAX_PRESETS_PER_MEMBER} presets, the most one member may keep; "
            "delete one under Presets first."
        )
    return None if saving.errors else preset


def save_from_create(request: HttpRequest) -> HttpResponse:
    """The create form's "Save as preset" button: save the settings on screen, then show
    Create again with the same form (the settings are the preset's) and a message. Nothing is
    submitted or charged; a refusal saves nothing and says why beside the button."""
    spec = spec_for(request.POST.get("model")) or DEFAULT_SPEC
    saving = saving_from(request.POST)
    preset = preset_from_post(request.user, request.POST, saving)
    if preset is not None:
        same = Preset.objects.filter(
            owner=request.user,
            name=preset.name,
            visibility=preset.visibility,
            provider=preset.provider,
            model=preset.model,
            duration=preset.duration,
            resolution=preset.resolution,
            aspect_ratio=preset.aspect_ratio,
            prompt=preset.prompt,
        ).first()
        if same is None:
            # A name and settings already saved (a form sent twice) are not saved again.
            preset.save()
            messages.success(request, f"Saved the preset “{preset.name}”.")
        else:
            messages.info(request, f"The preset “{preset.name}” is saved already.")
        saving = Saving()
    initial = initial_from(request.POST, spec)
    form = CreateForm(user=request.user, spec=spec, initial=initial)
    return create_page.render_form(request, form, saving=saving, picker=True)


# --- prompt history --------------------------------------------------------------------------


@dataclass(frozen=True)
class RecentPrompt:
    prompt: str
    code: uuid.UUID  # the newest task with it

    @property
    def excerpt(self) -> str:
        return Truncator(" ".join(self.prompt.split())).chars(90)

    @property
    def link(self) -> str:
        """Create with this prompt filled in, without JavaScript."""
        if len(self.prompt) <= PROMPT_IN_LINK_CHARS:
            query = {"prompt": self.prompt}
        else:
            query = {"prompt_of": str(self.code)}
        return f"{reverse('generations-create')}?{urlencode(query)}"


def recent_prompts(user, limit: int = RECENT_PROMPTS) -> list[RecentPrompt]:
    """The member's last distinct prompts, newest first, from their own tasks: one query over
    their newest tasks (the index on user and creation time serves it)."""
    newest = Task.objects.owned_by(user).order_by("-created_at")
    rows = newest.values_list("prompt", "code")[:RECENT_SCAN]
    found: dict[str, RecentPrompt] = {}
    for prompt, code in rows:
        key = prompt.strip()
        if key and key not in found:
            found[key] = RecentPrompt(prompt, code)
            if len(found) == limit:
                break
    return list(found.values())


def prompt_of(user, value) -> str | None:
    """The prompt of one of the member's own tasks, for a recent prompt's link."""
    try:
        code = uuid.UUID(str(value))
    except ValueError:
        return None
    return Task.objects.owned_by(user).filter(code=code).values_list("prompt", flat=True).first()


# --- the presets page ------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One preset as /presets/ and the picker show it."""

    preset: Preset
    problems: list[str]
    mine: bool
    changeable: bool

    @property
    def settings(self) -> str:
        p = self.preset
        parts = [f"{p.duration} s" if p.duration else "", p.resolution, p.aspect_ratio]
        return " · ".join(part for part in parts if part)

    @property
    def model_label(self) -> str:
        spec = self.preset.spec
        return spec.label if spec else self.preset.model_key

    @property
    def excerpt(self) -> str:
        return Truncator(" ".join(self.preset.prompt.split())).chars(80)


def rows_for(user, presets) -> list[Row]:
    return [
        Row(
            preset,
            preset.problems(),
            preset.owner_id == user.pk,
            preset.owner_id == user.pk or (user.is_staff and preset.visibility == Visibility.TEAM),
        )
        for preset in presets
    ]


def picker_groups(user) -> list[tuple[str, list[Row]]]:
    """The Create picker's presets: featured, then the member's own, then the team's."""
    rows = rows_for(user, Preset.objects.for_create(user).select_related("owner"))
    groups = {"Featured": [], "Yours": [], "Team": []}
    for row in rows:
        if row.preset.featured:
            groups["Featured"].append(row)
        elif row.mine:
            groups["Yours"].append(row)
        else:
            groups["Team"].append(row)
    return [(label, rows) for label, rows in groups.items() if rows]


@require_GET
def presets_page(request: HttpRequest) -> HttpResponse:
    rows = rows_for(request.user, Preset.objects.for_create(request.user).select_related("owner"))
    return render(
        request,
        "presets/presets.html",
        {
            "mine": [row for row in rows if row.mine],
            "team": [row for row in rows if not row.mine],
            "name_chars": PRESET_NAME_CHARS,
            "most": MAX_PRESETS_PER_MEMBER,
        },
    )


def _answer(request: HttpRequest, preset: Preset) -> HttpResponse:
    """After a change: the page again without JavaScript, the preset's row with htmx."""
    if not request.htmx:
        return redirect("generations-presets")
    (row,) = rows_for(request.user, [preset])
    return render(request, "presets/_row.html", {"row": row, "name_chars": PRESET_NAME_CHARS})


@require_POST
def preset_rename(request: HttpRequest, code: uuid.UUID) -> HttpResponse:
    preset = get_object_or_404(changeable_presets(request.user), code=code)
    name = (request.POST.get("name") or "").strip()
    if not name or len(name) > PRESET_NAME_CHARS:
        messages.error(
            request, f"A preset's name has 1 to {PRESET_NAME_CHARS} characters; it was not renamed."
        )
    else:
        preset.name = name
        preset.save(update_fields=["name", "updated_at"])
        messages.success(request, f"Renamed the preset to “{name}”.")
    return _answer(request, preset)


@require_POST
def preset_delete(request: HttpRequest, code: uuid.UUID) -> HttpResponse:
    preset = get_object_or_404(changeable_presets(request.user), code=code)
    preset.delete()
    if request.htmx:
        # The row says so in place of the preset.
        return render(request, "presets/_deleted.html", {"name": preset.name})
    messages.success(request, f"Deleted the preset “{preset.name}”.")
    return redirect("generations-presets")


@require_POST
def preset_feature(request: HttpRequest, code: uuid.UUID) -> HttpResponse:
    """Admins mark a team preset as featured (shown first on Create for everyone), or not."""
    if not request.user.is_staff:
        raise Http404("No such preset.")
    preset = get_object_or_404(
        Preset.objects.visible_to(request.user), code=code, visibility=Visibility.TEAM
    )
    preset.featured = request.POST.get("featured") == "1"
    preset.save(update_fields=["featured", "updated_at"])
    state = "featured" if preset.featured else "no longer featured"
    messages.success(request, f"The preset “{preset.name}” is {state}.")
    return _answer(request, preset)
