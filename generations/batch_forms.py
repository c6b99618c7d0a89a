"""The batch page's input and its preview: prompts pasted one a line or a CSV file, the
defaults that fill what a row leaves empty, and the check and price of every row.

Nothing here writes. The rows travel in the preview form's own inputs (never the session) and
are read and checked again on every POST, so what is submitted is what the last preview priced
(the preview's digest says so). Every input is bounded before it is kept: the file's bytes, the
number of rows (the team's cap on tasks per run, read no further than one row past it) and
each cell's length.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import uuid
from dataclasses import dataclass, field

from django import forms
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator

from accounts.models import ProviderKey
from generations import providers
from generations.forms import DEFAULT_SPEC, MAX_URL_LENGTH, model_choices
from generations.models import RUN_NAME_CHARS, PriceMissing, Quote, Task, price_list, quote
from generations.providers import GenerationRequest, catalog
from generations.providers.catalog import ModelSpec

# The columns a row has, in the order a file may name them (any order is fine).
COLUMNS = ("prompt", "model", "duration", "resolution", "aspect_ratio", "reference_image")
ALLOWED_COLUMNS = ", ".join(COLUMNS)
# Other spellings of a column people write in a spreadsheet's header.
ALIASES = {"reference_image_address": "reference_image", "reference_image_url": "reference_image"}
# The words a message uses for a column.
WORDS = {
    "prompt": "prompt",
    "model": "model",
    "duration": "duration",
    "resolution": "resolution",
    "aspect_ratio": "aspect ratio",
    "reference_image": "reference image address",
}

MAX_FILE_BYTES = 1024 * 1024
# The most reference images any model takes: a cell may hold that many addresses.
MAX_REFERENCES = max(max(spec.image_counts) for spec in catalog.MODELS)
# Longer than any value a model accepts: a cell past its limit is refused, not kept.
CELL_LIMITS = {
    "prompt": catalog.PROMPT_MAX_CHARS,
    "model": 100,
    "duration": 10,
    "resolution": 20,
    "aspect_ratio": 10,
    "reference_image": MAX_REFERENCES * (MAX_URL_LENGTH + 1),
}
HTTPS_ADDRESS = URLValidator(schemes=["https"])


class BatchRefused(Exception):
    """Why the pasted or uploaded rows cannot be used; `field` is the input to show it by."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


@dataclass
class Row:
    """One row as the member wrote it: each cell stripped, "" where the defaults decide."""

    cells: dict[str, str]
    drop: bool = False

    def __post_init__(self) -> None:
        self.cells = {name: self.cells.get(name, "") for name in COLUMNS}


def _options(values, blank: str) -> list[tuple[str, str]]:
    return [("", blank), *((str(v), str(v)) for v in values)]


# Every value some model takes: a default applies only to rows whose model has the field.
DURATIONS = sorted({d for spec in catalog.MODELS for d in spec.durations})
RESOLUTIONS = list(dict.fromkeys(r for spec in catalog.MODELS for r in spec.resolutions))
ASPECT_RATIOS = list(dict.fromkeys(a for spec in catalog.MODELS for a in spec.aspect_ratios))


class BatchForm(forms.Form):
    """The batch page's own fields: the input (a paste or a file), the defaults, the run's
    name and visibility, a key per gateway and the submit token. The rows themselves are
    read by rows_from_post(): their count depends on the input."""

    prompts = forms.CharField(
        label="Paste prompts",
        required=False,
        strip=False,
        help_text="One prompt a line; empty lines are skipped.",
        widget=forms.Textarea(attrs={"rows": 8, "spellcheck": "true"}),
    )
    csv_file = forms.FileField(
        label="Or upload a CSV file",
        required=False,
        allow_empty_file=True,
        help_text=(
            f"UTF-8, up to {MAX_FILE_BYTES // 1024 // 1024} MB. The first row names the "
            f"columns: {ALLOWED_COLUMNS}. Only prompt is required; empty cells take the "
            "defaults below."
        ),
        widget=forms.FileInput(attrs={"accept": ".csv,text/csv"}),
    )
    model = forms.ChoiceField(
        label="Model",
        choices=model_choices,
        initial=DEFAULT_SPEC.key,
        help_text="For rows that name no model.",
        error_messages={"required": "Choose a model.", "invalid_choice": "Choose a model."},
    )
    duration = forms.ChoiceField(
        label="Duration (seconds)",
        required=False,
        choices=_options(DURATIONS, "Each model's default"),
        error_messages={"invalid_choice": "Choose a duration from the list."},
    )
    resolution = forms.ChoiceField(
        label="Resolution",
        required=False,
        choices=_options(RESOLUTIONS, "Each model's default"),
        error_messages={"invalid_choice": "Choose a resolution from the list."},
    )
    aspect_ratio = forms.ChoiceField(
        label="Aspect ratio",
        required=False,
        choices=_options(ASPECT_RATIOS, "Each model's default"),
        error_messages={"invalid_choice": "Choose an aspect ratio from the list."},
    )
    visibility = forms.ChoiceField(
        label="Who can see the results",
        choices=Task.Visibility.choices,
        initial=Task.Visibility.TEAM,
        widget=forms.RadioSelect,
        error_messages={
            "required": "Choose who can see the results.",
            "invalid_choice": "Choose who can see the results.",
        },
    )
    name = forms.CharField(
        label="Run name",
        required=False,
        max_length=RUN_NAME_CHARS,
        help_text="Left empty, the run is named after its first prompt.",
    )
    form_token = forms.UUIDField(
        widget=forms.HiddenInput,
        error_messages={
            "required": "This form is incomplete; reload the page and start again.",
            "invalid": "This form is incomplete; reload the page and start again.",
        },
    )

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user
        self.fields["form_token"].initial = uuid.uuid4()
        # Each gateway's keys the member may pay with, their own first: the first is the default.
        self.keys: dict[str, list[ProviderKey]] = {}
        self.gateways_without_keys: list[str] = []
        for provider, gateway in providers.REGISTRY.items():
            keys = list(ProviderKey.objects.choices_for(user, provider))
            self.keys[provider] = keys
            if not keys:
                self.gateways_without_keys.append(gateway.name)
                continue
            self.fields[f"key_{provider}"] = forms.ChoiceField(
                label=f"Pay {gateway.name} tasks with",
                choices=[(str(key.code), self._key_label(key)) for key in keys],
                error_messages={
                    "required": f"Choose a key for {gateway.name}.",
                    "invalid_choice": f"Choose one of your active keys for {gateway.name}.",
                },
            )

    def _key_label(self, key: ProviderKey) -> str:
        whose = "your key" if key.owner_id == self.user.pk else "team key"
        return f"{key.label} {key.masked} · {whose}"

    @property
    def key_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.fields if name.startswith("key_")]

    @property
    def default_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in ("model", "duration", "resolution", "aspect_ratio")]

    def chosen_keys(self) -> dict[str, ProviderKey]:
        """The key each gateway's rows pay with (valid form only); a gateway the member has no
        key for is missing."""
        chosen = {}
        for provider, keys in self.keys.items():
            code = self.cleaned_data.get(f"key_{provider}")
            found = [key for key in keys if str(key.code) == code]
            if found:
                chosen[provider] = found[0]
        return chosen

    def defaults(self) -> Defaults:
        data = self.cleaned_data
        return Defaults(
            spec=model_for(data["model"]) or DEFAULT_SPEC,
            duration=data.get("duration") or "",
            resolution=data.get("resolution") or "",
            aspect_ratio=data.get("aspect_ratio") or "",
        )


@dataclass(frozen=True)
class Defaults:
    """What fills a row's empty cells; empty here too means the model's own default."""

    spec: ModelSpec
    duration: str = ""
    resolution: str = ""
    aspect_ratio: str = ""


# --- reading rows ---------------------------------------------------------------------------


def too_many(cap: int, what: str) -> str:
    return (
        f"This {what} more than {cap} prompts; one batch may make at most {cap} tasks "
        "(your team's limit). Split it into smaller batches."
    )


def check_cell(where: str, name: str, value: str, field: str | None) -> str:
    """`value` if it is within its column's limit, else BatchRefused naming the row."""
    limit = CELL_LIMITS[name]
    if len(value) > limit:
        raise BatchRefused(
            f"{where}: the {WORDS[name]} is {len(value):,} characters long; the limit is "
            f"{limit:,}.",
            field,
        )
    return value


def clean_text(value: str) -> str:
    # Browsers send line breaks as \r\n; a prompt keeps one \n for each.
    return value.replace("\r\n", "\n").replace("\r", "\n").strip()


def rows_from_paste(text: str, cap: int) -> list[Row]:
    """One row a non-empty line. Lines are read one by one and reading stops at the first
    line past `cap`."""
    rows: list[Row] = []
    for number, line in enumerate(io.StringIO(text, newline=None), start=1):
        prompt = line.strip()
        if not prompt:
            continue
        if len(rows) == cap:
            raise BatchRefused(too_many(cap, "paste has"), "prompts")
        rows.append(Row({"prompt": check_cell(f"Line {number}", "prompt", prompt, "prompts")}))
    if not rows:
        raise BatchRefused("Paste at least one prompt, one a line.", "prompts")
    return rows


def column_name(text: str) -> str:
    """A header cell as a column name: any case, spaces or dashes for underscores."""
    name = re.sub(r"[\s\-]+", "_", text.strip().lower())
    return ALIASES.get(name, name)


def header_columns(header: list[str]) -> list[str | None]:
    """The column each of the header's cells names (None for an empty one), or BatchRefused
    saying which columns are allowed."""
    names = [column_name(cell) or None for cell in header]
    unknown = [
        cell.strip()
        for cell, name in zip(header, names, strict=True)
        if name and name not in COLUMNS
    ]
    if unknown:
        listed = ", ".join(f"“{cell[:40]}”" for cell in unknown[:5])
        hint = ""
        if any(";" in cell or "\t" in cell for cell in unknown):
            hint = " Separate the columns with commas."
        raise BatchRefused(
            f"The file's first row names columns Omniweb does not know: {listed}. The allowed "
            f"columns are {ALLOWED_COLUMNS} (only prompt is required).{hint}",
            "csv_file",
        )
    repeated = [name for name in COLUMNS if names.count(name) > 1]
    if repeated:
        raise BatchRefused(
            f"The file's first row names the column {repeated[0]} more than once.", "csv_file"
        )
    if "prompt" not in names:
        raise BatchRefused(
            "The file's first row must name its columns, prompt among them. The allowed "
            f"columns are {ALLOWED_COLUMNS} (only prompt is required).",
            "csv_file",
        )
    return names


def rows_from_csv(upload, cap: int) -> list[Row]:
    """The rows of an uploaded CSV file: UTF-8 (with or without a byte order mark), its first
    row naming the columns. The file is read row by row and reading stops one row past `cap`;
    a file over MAX_FILE_BYTES is refused before any of it is read."""
    if upload.size > MAX_FILE_BYTES:
        raise BatchRefused(
            # Rounded up: a file just over the limit must not read as "1.0 MB".
            f"The file is {math.ceil(upload.size / 1024 / 102.4) / 10} MB; a batch file may be "
            f"at most {MAX_FILE_BYTES // 1024 // 1024} MB. Split it into smaller files.",
            "csv_file",
        )
    if not upload.size:
        raise BatchRefused("The file is empty.", "csv_file")
    upload.seek(0)
    # "utf-8-sig" drops the byte order mark spreadsheets put at the start, if there is one.
    text = io.TextIOWrapper(upload, encoding="utf-8-sig", newline="")
    reader = csv.reader(text)
    number = 1
    try:
        header = next(reader, None)
        if header is None:
            raise BatchRefused("The file is empty.", "csv_file")
        columns = header_columns(header)
        rows: list[Row] = []
        # Row numbers as a spreadsheet shows them: the header is row 1.
        for number, record in enumerate(reader, start=2):
            if not any(cell.strip() for cell in record):
                continue
            if len(rows) == cap:
                raise BatchRefused(too_many(cap, "file has"), "csv_file")
            cells: dict[str, str] = {}
            for position, cell in enumerate(record):
                name = columns[position] if position < len(columns) else None
                value = clean_text(cell)
                if name is None:
                    if value:
                        raise BatchRefused(
                            f"Row {number} of the file has a value in a column the first row "
                            f"does not name. The allowed columns are {ALLOWED_COLUMNS}.",
                            "csv_file",
                        )
                    continue
                cells[name] = check_cell(f"Row {number} of the file", name, value, "csv_file")
            rows.append(Row(cells))
    except UnicodeDecodeError:
        raise BatchRefused(
            "The file is not UTF-8 text. Save it from your spreadsheet as “CSV UTF-8” and "
            "upload it again.",
            "csv_file",
        ) from None
    except csv.Error:
        raise BatchRefused(
            f"The file could not be read as CSV near row {number}. Save it from your "
            "spreadsheet as “CSV UTF-8” and upload it again.",
            "csv_file",
        ) from None
    finally:
        # The upload stays open for Django to close; the wrapper must not close it.
        text.detach()
    if not rows:
        raise BatchRefused("The file has no prompts below its first row.", "csv_file")
    return rows


def posted_count(data) -> int:
    """How many rows a preview form says it carries: 0 for a new paste or file."""
    try:
        return max(int(data.get("rows") or 0), 0)
    except ValueError:
        return 0


def rows_from_post(data, cap: int) -> list[Row]:
    """The rows a preview form carries (row-<n>-<column> and row-<n>-drop), at most `cap`."""
    count = posted_count(data)
    if count > cap:
        raise BatchRefused(too_many(cap, "form carries"))
    rows = []
    for index in range(count):
        where = f"Row {index + 1}"
        cells = {
            name: check_cell(where, name, clean_text(data.get(f"row-{index}-{name}") or ""), None)
            for name in COLUMNS
        }
        rows.append(Row(cells, drop=data.get(f"row-{index}-drop") == "1"))
    return rows


def rows_from_input(data: dict, cap: int) -> list[Row]:
    """The rows of a new paste or file (a valid BatchForm's cleaned data)."""
    text, upload = data.get("prompts") or "", data.get("csv_file")
    if upload is not None and text.strip():
        raise BatchRefused("Paste prompts or upload a file, not both.", "prompts")
    if upload is not None:
        return rows_from_csv(upload, cap)
    return rows_from_paste(text, cap)


# --- checking and pricing rows ----------------------------------------------------------------

_BY_KEY = {spec.key.lower(): spec for spec in catalog.MODELS}
_BY_LABEL: dict[str, list[ModelSpec]] = {}
for _spec in catalog.MODELS:
    _BY_LABEL.setdefault(_spec.label.lower(), []).append(_spec)


def model_for(text: str) -> ModelSpec | None:
    """The model a cell names: "provider/model" as the catalog writes it, or the model's name
    where only one model has it; either in any case."""
    value = text.strip().lower()
    if value in _BY_KEY:
        return _BY_KEY[value]
    named = _BY_LABEL.get(value, [])
    return named[0] if len(named) == 1 else None


def reference_addresses(cell: str) -> tuple[tuple[str, ...], list[str]]:
    """(the addresses a cell holds, separated by spaces, problems with them)."""
    urls = tuple(cell.split())
    for number, url in enumerate(urls, start=1):
        try:
            if len(url) > MAX_URL_LENGTH:
                raise ValidationError("too long")
            HTTPS_ADDRESS(url)
        except ValidationError:
            which = "The reference image address" if len(urls) == 1 else f"Address {number}"
            return urls, [
                f"{which} is not a web address starting with https:// (up to "
                f"{MAX_URL_LENGTH:,} characters); separate several addresses with spaces."
            ]
    return urls, []


@dataclass
class CheckedRow:
    """A row with its defaults applied, checked and priced: `errors` by column (and "key",
    "price"), empty when it can be submitted."""

    number: int
    row: Row
    spec: ModelSpec | None = None
    request: GenerationRequest | None = None
    key: ProviderKey | None = None
    price: Quote | None = None
    errors: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.row.drop and not self.errors and self.price is not None

    @property
    def messages(self) -> list[str]:
        return [message for messages in self.errors.values() for message in messages]

    def add(self, name: str, message: str) -> None:
        self.errors.setdefault(name, []).append(message)


@dataclass
class Preview:
    rows: list[CheckedRow]
    balance: int

    @property
    def kept(self) -> list[CheckedRow]:
        return [row for row in self.rows if not row.row.drop]

    @property
    def problems(self) -> list[CheckedRow]:
        return [row for row in self.kept if not row.ok]

    @property
    def ready(self) -> list[CheckedRow]:
        return [row for row in self.kept if row.ok]

    @property
    def total(self) -> int:
        return sum(row.price.total for row in self.ready)

    @property
    def after(self) -> int:
        return self.balance - self.total

    @property
    def short(self) -> int:
        return max(self.total - self.balance, 0)

    @property
    def first_prompt(self) -> str:
        kept = self.kept
        return kept[0].row.cells["prompt"] if kept else ""

    @property
    def digest(self) -> str:
        """A fingerprint of what a submit would send and charge: a submit whose rows, keys or
        prices differ from what the member last saw is shown to them again instead."""
        described = [
            [
                row.number,
                row.request.provider,
                row.request.model,
                row.request.prompt,
                row.request.duration,
                row.request.resolution,
                row.request.aspect_ratio,
                list(row.request.reference_images),
                str(row.key.code),
                row.price.total,
            ]
            for row in self.ready
        ]
        text = json.dumps(described, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def _duration(row: CheckedRow, text: str) -> int | None:
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        row.add("duration", f"Write the duration in whole seconds, such as 5; not “{text}”.")
        return None


def check_rows(
    rows: list[Row], defaults: Defaults, keys: dict[str, ProviderKey], limits, balance: int
) -> Preview:
    """Every row checked as a submit would check it: the catalog's rules per field, the
    member's quota (`limits`, an EffectiveQuota), a key for its gateway, a price. The prices of
    all rows are read at once. Dropped rows are not checked."""
    checked: list[CheckedRow] = []
    for number, row in enumerate(rows, start=1):
        item = CheckedRow(number, row)
        checked.append(item)
        if row.drop:
            continue
        cells = row.cells
        spec = model_for(cells["model"]) if cells["model"] else defaults.spec
        if spec is None:
            item.add(
                "model",
                f"There is no model “{cells['model']}”: write it as gateway/model (such as "
                f"{DEFAULT_SPEC.key}) or by its name in the model list.",
            )
            continue
        item.spec = spec
        # A default applies only where the model has the field: "10 seconds" means nothing to
        # a model that makes images.
        duration = _duration(
            item, cells["duration"] or (defaults.duration if spec.durations else "")
        )
        resolution = cells["resolution"] or (defaults.resolution if spec.resolutions else "")
        aspect = cells["aspect_ratio"] or (defaults.aspect_ratio if spec.aspect_ratios else "")
        urls, url_errors = reference_addresses(cells["reference_image"])
        for message in url_errors:
            item.add("reference_image", message)
        request = catalog.with_defaults(
            GenerationRequest(
                provider=spec.provider,
                model=spec.model,
                prompt=cells["prompt"],
                duration=duration,
                resolution=resolution or None,
                aspect_ratio=aspect or None,
                reference_images=urls,
            )
        )
        item.request = request
        for name, messages in catalog.validate(request).items():
            column = "reference_image" if name == "reference_images" else name
            if column in item.errors:
                continue  # our own message about it says more
            for message in messages:
                item.add(column, message)
        if not limits.allows(spec.provider, spec.model):
            item.add("model", f"Your quota does not include {spec.label}.")
        item.key = keys.get(spec.provider)
        if item.key is None:
            gateway = providers.REGISTRY[spec.provider].name
            item.add(
                "key",
                f"You have no usable key for {gateway}: add one under Keys, or ask an admin to "
                "share one.",
            )
    priced = [item for item in checked if item.request is not None and not item.errors]
    prices = price_list([item.request for item in priced])
    for item in priced:
        try:
            item.price = quote(item.request, prices)
        except PriceMissing:
            item.add("price", f"{item.spec.label} has no price yet; an admin has to set one.")
    return Preview(checked, balance)
