"""The batch page: paste or upload many prompts, preview their prices row by row, fix or drop
rows, and submit the rest as one run, charged once."""

from html.parser import HTMLParser

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from accounts import ledger
from accounts.models import LedgerEntry, ProviderKey, Quota, TeamQuota
from generations import providers
from generations.batch_forms import BatchRefused, rows_from_csv
from generations.models import Run, Task
from generations.providers import catalog

pytestmark = pytest.mark.django_db

BATCH = "/batch/"
HX = {"HTTP_HX_REQUEST": "true"}
SORA = catalog.get("omniakey", "sora")  # the default model: 10 credits a second, 1080p × 1.5
SORA_PRICE = 75  # its default 5 s at its default 1080p
ALL_COLUMNS = "prompt,model,duration,resolution,aspect_ratio,reference_image"


class Form(HTMLParser):
    """The values a browser would post from the page's batch form: hidden and text inputs,
    checked boxes and radios, each select's selected option, textareas; plus the rows' price
    cells, by row number."""

    def __init__(self, html: str):
        super().__init__()
        self.html = " ".join(html.replace("&#x27;", "'").split())
        self.values: dict[str, str] = {}
        self.statuses: dict[int, str] = {}
        self.buttons: list[str] = []
        self._select = self._textarea = self._status = None
        self._first_option: str | None = None
        self._in_form = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form" and attrs.get("id") == "batch-form":
            self._in_form = True
        if not self._in_form:
            return
        name = attrs.get("name")
        if tag == "input" and name:
            kind = attrs.get("type", "text")
            if kind in ("checkbox", "radio"):
                if "checked" in attrs:
                    self.values[name] = attrs.get("value", "on")
            # A submit input is sent only when it is the button pressed; a file input's
            # value is never in the page.
            elif kind not in ("submit", "file"):
                self.values[name] = attrs.get("value", "")
        elif tag == "button" and name:
            self.buttons.append(name)
        elif tag == "select":
            self._select, self._first_option = name, None
        elif tag == "option" and self._select:
            if self._first_option is None:
                self._first_option = attrs["value"]
                self.values.setdefault(self._select, attrs["value"])
            if "selected" in attrs:
                self.values[self._select] = attrs["value"]
        elif tag == "textarea":
            self._textarea = name
            self.values[name] = ""
        elif tag == "td" and attrs.get("id", "").startswith("batch-status-"):
            self._status = int(attrs["id"].rsplit("-", 1)[1])
            self.statuses[self._status] = ""

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None
        elif tag == "textarea" and self._textarea:
            # A browser drops the line break that may follow <textarea>, as Django writes it.
            self.values[self._textarea] = self.values[self._textarea].removeprefix("\n")
            self._textarea = None
        elif tag == "td":
            self._status = None
        elif tag == "form":
            self._in_form = False

    def handle_data(self, data):
        if self._textarea:
            self.values[self._textarea] += data
        if self._status is not None:
            self.statuses[self._status] += data


def text(response) -> str:
    return response.content.decode()


def page(response) -> Form:
    assert response.status_code == 200, response.status_code
    return Form(text(response))


def make_key(owner, provider: str, label: str = "Mine") -> ProviderKey:
    key = ProviderKey(provider=provider, label=label, owner=owner)
    key.set_secret(f"sk-{provider}-test-0001")
    key.save()
    return key


@pytest.fixture
def funded(alice, carol):
    ledger.grant(alice, 1000, by=carol, reason="welcome")
    alice.refresh_from_db()
    return alice


@pytest.fixture
def keys(funded):
    return {provider: make_key(funded, provider) for provider in providers.REGISTRY}


@pytest.fixture
def as_alice(client, funded, keys):
    client.force_login(funded)
    return client


@pytest.fixture
def run_page():
    """Where a submitted batch leads: its run's page."""
    return lambda run: reverse("generations-run", args=[run.code])


def nothing_written(user, entries_before: int) -> None:
    assert LedgerEntry.objects.filter(user=user).count() == entries_before
    assert not Task.objects.exists()
    assert not Run.objects.exists()


def entries(user) -> int:
    return LedgerEntry.objects.filter(user=user).count()


def start(client) -> dict:
    """The empty page's form, as a browser would post it."""
    return page(client.get(BATCH)).values


def preview_paste(client, prompts: str, **fields) -> Form:
    data = start(client) | {"prompts": prompts, "preview": "1"} | fields
    return page(client.post(BATCH, data))


def upload(content: bytes | str, name: str = "batch.csv") -> SimpleUploadedFile:
    data = content.encode() if isinstance(content, str) else content
    return SimpleUploadedFile(name, data, content_type="text/csv")


def preview_csv(client, content, **fields) -> Form:
    data = start(client) | {"csv_file": upload(content), "preview": "1"} | fields
    return page(client.post(BATCH, data))


def again(client, form: Form, **changes) -> Form:
    return page(client.post(BATCH, form.values | {"preview": "1"} | changes))


def submit(client, form: Form, **changes):
    return client.post(BATCH, form.values | {"submit": "1"} | changes)


# --- the happy paths --------------------------------------------------------------------------


def test_three_pasted_prompts_preview_three_prices_and_submit_as_one_run(
    as_alice, funded, run_page
):
    before = entries(funded)
    form = preview_paste(as_alice, "A fox in the snow\n\n  A heron at dawn  \nA city at night\n")
    assert form.values["rows"] == "3"
    assert [form.values[f"row-{i}-prompt"] for i in range(3)] == [
        "A fox in the snow",
        "A heron at dawn",
        "A city at night",
    ]
    for number in (1, 2, 3):
        assert f"{SORA_PRICE} credits" in form.statuses[number]
    total = 3 * SORA_PRICE
    assert "submit" in form.buttons
    assert not Task.objects.exists()  # a preview charges nothing
    response = as_alice.get(BATCH)  # the form keeps nothing between pages
    assert "A fox in the snow" not in text(response)

    response = submit(as_alice, form)
    run = Run.objects.get()
    assert response.status_code == 302
    assert response["Location"] == run_page(run)
    assert run.user == funded
    assert run.name == "A fox in the snow"
    tasks = list(run.tasks.order_by("id"))
    assert [t.prompt for t in tasks] == ["A fox in the snow", "A heron at dawn", "A city at night"]
    assert {(t.provider, t.model, t.params["duration"], t.params["resolution"]) for t in tasks} == {
        ("omniakey", "sora", 5, "1080p")
    }
    assert entries(funded) == before + 3
    funded.refresh_from_db()
    assert funded.credit_balance == 1000 - total


def test_the_preview_shows_the_total_and_the_balance_after_it(as_alice):
    response = as_alice.post(
        BATCH, start(as_alice) | {"prompts": "One\nTwo\nThree", "preview": "1"}
    )
    html = " ".join(text(response).split())
    assert f"3 tasks ready · {3 * SORA_PRICE} credits" in html
    assert f"your balance after: {1000 - 3 * SORA_PRICE}" in html
    assert f"Submit 3 tasks for {3 * SORA_PRICE} credits" in html


def test_a_csv_with_every_column_makes_one_run_on_two_models(as_alice, funded, run_page):
    content = (
        "\ufeffPrompt, Model ,Duration,Resolution,Aspect Ratio,Reference Image\n"
        "A fox in the snow,omniakey/sora,8,720p,9:16,\n"
        '"A heron, at dawn",omnivideo/seedance-2,,,1:1,https://images.example/heron.png\n'
        "A city at night,,,,,\n"
    )
    form = preview_csv(as_alice, content)
    assert form.values["rows"] == "3"
    assert form.values["row-1-prompt"] == "A heron, at dawn"
    assert form.values["row-1-model"] == "omnivideo/seedance-2"
    assert form.values["row-1-reference_image"] == "https://images.example/heron.png"
    assert "80 credits" in form.statuses[1]  # 10 a second × 8 s at 720p
    assert "60 credits" in form.statuses[2]  # Seedance: per task
    assert f"{SORA_PRICE} credits" in form.statuses[3]  # the defaults

    response = submit(as_alice, form)
    run = Run.objects.get()
    assert response["Location"] == run_page(run)
    fox, heron, city = run.tasks.order_by("id")
    assert (fox.model, fox.params["duration"], fox.params["resolution"]) == ("sora", 8, "720p")
    assert fox.params["aspect_ratio"] == "9:16"
    assert (heron.provider, heron.model, heron.params["aspect_ratio"]) == (
        "omnivideo",
        "seedance-2",
        "1:1",
    )
    assert heron.params["reference_images"] == ["https://images.example/heron.png"]
    assert heron.prompt == "A heron, at dawn"
    assert city.model == "sora"
    assert {t.key.provider for t in (fox, heron, city)} == {"omniakey", "omnivideo"}
    funded.refresh_from_db()
    assert funded.credit_balance == 1000 - 80 - 60 - SORA_PRICE


def test_a_model_may_be_named_by_its_label_in_any_case(as_alice):
    form = preview_csv(as_alice, "prompt,model\nA fox,seedance 2.0\nA heron,OMNIAKEY/KLING-1.5\n")
    assert form.values["row-0-model"] == "omnivideo/seedance-2"
    assert form.values["row-1-model"] == "omniakey/kling-1.5"
    assert "60 credits" in form.statuses[1]


def test_defaults_fill_the_cells_a_row_leaves_empty(as_alice, funded, run_page):
    form = preview_paste(
        as_alice,
        "A fox\nA heron",
        model="apimart/Omni-Flash-Ext",
        duration="10",
        resolution="1080p",
        visibility="private",
        name="Birds and foxes",
    )
    assert "120 credits" in form.statuses[1]  # 8 a second × 10 s × 1.5
    submit(as_alice, form)
    run = Run.objects.get()
    assert (run.name, run.visibility) == ("Birds and foxes", "private")
    for task in run.tasks.all():
        assert (task.provider, task.params["duration"], task.params["resolution"]) == (
            "apimart",
            10,
            "1080p",
        )
        assert task.visibility == "private"


def test_each_gateway_pays_with_the_key_chosen_for_it(as_alice, funded, keys):
    shared = make_key(None, "omniakey", label="A team key")
    shared.allowed_users.add(funded)
    form = preview_paste(as_alice, "A fox\nA heron")
    assert form.values["key_omniakey"] == str(keys["omniakey"].code)  # their own first
    assert "A team key" in form.html
    # Another key is another account at the gateway: the submit shows the rows again first.
    response = submit(as_alice, form, key_omniakey=str(shared.code))
    assert "changed since the preview" in text(response)
    submit(as_alice, page(response))
    assert {task.key for task in Task.objects.all()} == {shared}


# --- fixing and dropping rows -----------------------------------------------------------------


def test_a_row_can_be_fixed_and_another_dropped_before_submitting(as_alice, funded, run_page):
    content = (
        "prompt,model,duration\n"
        "A fox,omniakey/pika-1.5,9\n"  # Pika makes 3 to 5 seconds
        "A heron,omniakey/sora,\n"
        "A city,nobody/nothing,\n"
    )
    before = entries(funded)
    form = preview_csv(as_alice, content)
    assert "Pika 1.5 makes videos of 3 to 5 seconds; 9 s is not possible." in form.statuses[1]
    assert "There is no model “nobody/nothing”" in form.statuses[3]
    assert form.values["row-2-model"] == "nobody/nothing"  # kept as written, to be fixed
    assert "submit" not in form.buttons
    # Submitting anyway is refused, nothing charged.
    response = submit(as_alice, form)
    assert "Rows 1 and 3 need fixing, or tick Drop to leave them out." in text(response)
    nothing_written(funded, before)

    fixed = again(as_alice, form, **{"row-0-duration": "4", "row-2-drop": "1"})
    assert "30 credits" in fixed.statuses[1]  # 5 a second × 4 s × 1.5 for 1080p
    assert "Dropped: not submitted." in fixed.statuses[3]
    assert fixed.values["row-2-drop"] == "1"  # still dropped on the next preview
    response = submit(as_alice, fixed)
    run = Run.objects.get()
    assert response["Location"] == run_page(run)
    assert [(t.model, t.params["duration"]) for t in run.tasks.order_by("id")] == [
        ("pika-1.5", 4),
        ("sora", 5),
    ]
    assert entries(funded) == before + 2


def test_a_submit_of_rows_changed_since_the_preview_shows_them_again(as_alice, funded):
    before = entries(funded)
    form = preview_paste(as_alice, "A fox\nA heron")
    response = submit(as_alice, form, **{"row-1-duration": "15"})
    assert "changed since the preview" in text(response)
    nothing_written(funded, before)
    shown = page(response)
    assert "225 credits" in shown.statuses[2]  # the new price, for the member to check
    submit(as_alice, shown)
    assert Task.objects.count() == 2


def test_a_bad_setting_keeps_the_rows_and_charges_nothing(as_alice, funded):
    before = entries(funded)
    form = preview_paste(as_alice, "A fox\nA heron")
    shown = page(submit(as_alice, form, duration="99"))
    assert "Some settings need fixing." in shown.html
    assert "Choose a duration from the list." in shown.html
    assert shown.values["rows"] == "2"
    assert shown.values["row-1-prompt"] == "A heron"
    assert "Not checked" in shown.statuses[1]
    nothing_written(funded, before)


def test_every_row_dropped_submits_nothing(as_alice, funded):
    before = entries(funded)
    form = preview_paste(as_alice, "A fox")
    response = submit(as_alice, form, **{"row-0-drop": "1"})
    assert "Every row is dropped" in text(response)
    nothing_written(funded, before)


# --- limits and bad input ---------------------------------------------------------------------


def long_csv(rows: int) -> str:
    return "prompt\n" + "".join(f"Prompt number {n}\n" for n in range(rows))


BAD_INPUTS = {
    "empty paste": ({"prompts": "  \n \n"}, "Paste at least one prompt"),
    "empty file": ({"csv_file": b""}, "The file is empty."),
    "header only": ({"csv_file": "prompt,model\n"}, "The file has no prompts below its first row."),
    "10,000 rows": (
        {"csv_file": long_csv(10_000)},
        "This file has more than 100 prompts; one batch may make at most 100 tasks",
    ),
    "10,000 lines": (
        {"prompts": "A fox\n" * 10_000},
        "This paste has more than 100 prompts",
    ),
    "a file over 1 MB": (
        {"csv_file": "prompt\n" + ("x" * 99 + "\n") * 11_000},
        "The file is 1.1 MB; a batch file may be at most 1 MB.",
    ),
    "wrong columns": (
        {"csv_file": "prompt,length,style\nA fox,5,noir\n"},
        "The file's first row names columns Omniweb does not know: “length”, “style”. The "
        "allowed columns are prompt, model, duration, resolution, aspect_ratio, "
        "reference_image (only prompt is required).",
    ),
    "no header": (
        {"csv_file": "A fox in the snow\nA heron\n"},
        "names columns Omniweb does not know: “A fox in the snow”",
    ),
    "semicolons": ({"csv_file": "prompt;model\nA fox;x\n"}, "Separate the columns with commas."),
    "a repeated column": (
        {"csv_file": "prompt,Prompt\nA,B\n"},
        "names the column prompt more than once",
    ),
    "not UTF-8": (
        {"csv_file": "prompt\nUn renard sous la neige, très joli\n".encode("latin-1")},
        "The file is not UTF-8 text.",
    ),
    "a value in an unnamed column": (
        {"csv_file": "prompt\nA fox,extra\n"},
        "Row 2 of the file has a value in a column the first row does not name.",
    ),
    "a prompt too long": (
        {"csv_file": "prompt\nA fox\n" + "y" * 4001 + "\n"},
        "Row 3 of the file: the prompt is 4,001 characters long; the limit is 4,000.",
    ),
    "a pasted line too long": (
        {"prompts": "A fox\n" + "y" * 4001},
        "Line 2: the prompt is 4,001 characters long; the limit is 4,000.",
    ),
    "a paste and a file": (
        {"prompts": "A fox", "csv_file": "prompt\nA heron\n"},
        "Paste prompts or upload a file, not both.",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_is_refused_with_its_message_and_nothing_charged(as_alice, funded, case):
    fields, message = BAD_INPUTS[case]
    before = entries(funded)
    blank = start(as_alice)

    def posted(**extra) -> dict:
        data = blank | extra
        for name, value in fields.items():
            data[name] = upload(value) if name == "csv_file" else value
        return data

    response = as_alice.post(BATCH, posted(preview="1"))
    assert response.status_code == 200
    html = text(response)
    assert message in " ".join(html.replace("&#x27;", "'").split())
    assert 'role="alert"' in html
    assert 'name="row-0-prompt"' not in html  # no table of half-read rows
    # A submit of the same input is refused the same way.
    response = as_alice.post(BATCH, posted(submit="1"))
    assert message in " ".join(text(response).replace("&#x27;", "'").split())
    nothing_written(funded, before)


def test_the_file_is_read_no_further_than_one_row_past_the_cap():
    # Bytes that are not UTF-8 far past row 101: reading stopped before them, so the refusal
    # is about the rows, not the encoding.
    content = long_csv(5_000).encode() + b"\xff\xfe not utf-8\n"
    with pytest.raises(BatchRefused, match="more than 100 prompts"):
        rows_from_csv(upload(content), 100)


def test_the_team_cap_on_tasks_per_run_bounds_a_batch(as_alice, funded):
    TeamQuota.objects.update_or_create(singleton=1, defaults={"max_tasks_per_run": 2})
    before = entries(funded)
    assert "Up to 2 prompts a batch" in text(as_alice.get(BATCH))
    form = preview_paste(as_alice, "One\nTwo\nThree")
    assert "This paste has more than 2 prompts; one batch may make at most 2 tasks" in form.html
    assert form.values["rows"] == "0"  # no rows: nothing half-read to act on
    assert form.values["prompts"] == "One\nTwo\nThree"  # kept, to be shortened
    assert "2 credits" not in form.html
    two = preview_paste(as_alice, "One\nTwo")
    assert two.values["rows"] == "2"
    nothing_written(funded, before)


def test_a_batch_of_exactly_the_cap_previews_and_submits(as_alice, funded, carol, run_page):
    # Every row, each of its cells and a ticked Drop box, fits in one POST (Django's field cap).
    ledger.grant(funded, 10_000, by=carol, reason="a big batch")
    form = preview_csv(as_alice, long_csv(100))
    assert form.values["rows"] == "100"
    form.values["row-99-drop"] = "1"
    form = again(as_alice, form)
    assert "99 tasks ready" in form.html
    response = submit(as_alice, form)
    assert response.status_code == 302
    run = Run.objects.get()
    assert run.tasks.count() == 99


def test_a_preview_form_carrying_more_rows_than_the_cap_is_refused(as_alice, funded):
    before = entries(funded)
    form = preview_paste(as_alice, "A fox")
    data = form.values | {"rows": "101", "submit": "1"}
    for index in range(101):
        data[f"row-{index}-prompt"] = f"Prompt {index}"
    response = as_alice.post(BATCH, data)
    assert "This form carries more than 100 prompts" in text(response)
    nothing_written(funded, before)


def test_a_model_outside_the_members_quota_is_refused(as_alice, funded):
    Quota.objects.create(user=funded, allowed_models=["omnivideo/*"])
    before = entries(funded)
    form = preview_csv(
        as_alice, "prompt,model\nA fox,omnivideo/seedance-2\nA heron,omniakey/sora\n"
    )
    assert "60 credits" in form.statuses[1]
    assert "Your quota does not include Sora." in form.statuses[2]
    response = submit(as_alice, form)
    assert "Row 2 needs fixing, or tick Drop to leave it out." in text(response)
    nothing_written(funded, before)


def test_a_gateway_without_a_key_marks_its_rows(client, funded):
    make_key(funded, "omnivideo")
    client.force_login(funded)
    before = entries(funded)
    form = preview_csv(client, "prompt,model\nA fox,omnivideo/seedance-2\nA heron,omniakey/sora\n")
    assert "60 credits" in form.statuses[1]
    assert "You have no usable key for OmniaKey" in form.statuses[2]
    assert "submit" not in form.buttons
    submit(client, form)
    nothing_written(funded, before)


def test_a_total_above_the_balance_is_refused_and_nothing_charged(as_alice, funded, carol):
    before_entries = entries(funded)
    prompts = "\n".join(f"Prompt {n}" for n in range(14))  # 14 × 75 = 1,050 > 1,000
    form = preview_paste(as_alice, prompts)
    html = " ".join(as_alice.post(BATCH, form.values | {"preview": "1"}).content.decode().split())
    assert "you need 50 more credits; submitting would be refused" in html
    assert "submit" not in form.buttons
    response = submit(as_alice, form)
    assert "These 14 tasks cost 1050 credits and your balance is 1000." in text(response)
    nothing_written(funded, before_entries)


def test_the_balance_spent_elsewhere_since_the_preview_refuses_the_submit(as_alice, funded, carol):
    form = preview_paste(as_alice, "A fox\nA heron")
    ledger.deduct(funded, 900, by=carol, reason="spent elsewhere")
    before = entries(funded)
    response = submit(as_alice, form)
    assert "These 2 tasks cost 150 credits and your balance is 100." in text(response)
    assert 'name="row-1-prompt"' in text(response)  # the rows are still there to act on
    nothing_written(funded, before)


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ("http://images.example/a.png", "is not a web address starting with https://"),
        ("https://" + "a" * 2000 + ".example/a.png", "is not a web address starting with https://"),
        ("ftp://images.example/a.png", "is not a web address starting with https://"),
        ("https://a.example/1.png https://a.example/2.png", "takes 0 or 1 reference images, not 2"),
    ],
    ids=["http", "too long", "ftp", "too many for the model"],
)
def test_reference_addresses_are_https_and_counted_against_the_model(
    as_alice, funded, cell, message
):
    before = entries(funded)
    form = preview_csv(
        as_alice, f"prompt,model,reference_image\nA fox,omnivideo/seedance-2,{cell}\n"
    )
    assert message in form.statuses[1]
    submit(as_alice, form)
    nothing_written(funded, before)


def test_a_model_without_reference_images_refuses_an_address(as_alice):
    form = preview_csv(
        as_alice, "prompt,model,reference_image\nA fox,omniakey/sora,https://a.example/1.png\n"
    )
    assert "Sora takes no reference images." in form.statuses[1]


def test_three_addresses_make_a_three_image_fusion(as_alice, funded):
    urls = " ".join(f"https://a.example/{n}.png" for n in range(3))
    form = preview_csv(
        as_alice, f"prompt,model,reference_image\nA fox,apimart/Omni-Flash-Ext,{urls}\n"
    )
    submit(as_alice, form)
    assert Task.objects.get().params["reference_images"] == urls.split()


# --- submitting once --------------------------------------------------------------------------


def test_a_double_submit_with_the_same_token_charges_once(as_alice, funded, run_page):
    form = preview_paste(as_alice, "A fox\nA heron\nA city")
    first = submit(as_alice, form)
    second = submit(as_alice, form)
    run = Run.objects.get()
    assert first["Location"] == second["Location"] == run_page(run)
    assert Task.objects.count() == 3
    assert LedgerEntry.objects.filter(user=funded, kind=LedgerEntry.Kind.DEBIT).count() == 3
    funded.refresh_from_db()
    assert funded.credit_balance == 1000 - 3 * SORA_PRICE
    messages = [m.message for m in second.wsgi_request._messages]
    assert "This batch was already submitted; nothing more was charged." in messages


def test_with_htmx_a_preview_swaps_the_form_and_a_submit_redirects(as_alice, run_page):
    data = start(as_alice) | {"prompts": "A fox", "preview": "1"}
    response = as_alice.post(BATCH, data, **HX)
    html = text(response)
    assert '<form id="batch-form"' in html
    assert "<html" not in html
    response = as_alice.post(BATCH, Form(html).values | {"submit": "1"}, **HX)
    assert response["HX-Redirect"] == run_page(Run.objects.get())


# --- per member -------------------------------------------------------------------------------


def test_another_member_sees_nothing_of_yours(as_alice, funded, keys, client, bob, run_page):
    form = preview_paste(as_alice, "Alice's secret fox")
    submit(as_alice, form)
    alices_run = Run.objects.get()

    client.force_login(bob)
    html = text(client.get(BATCH))
    assert "Alice's secret fox" not in html.replace("&#x27;", "'")
    assert keys["omniakey"].masked not in html
    assert str(keys["omniakey"].code) not in html
    # Bob has no key of his own: alice's keys are not offered to him.
    assert "You have no usable key for OmniaKey, Omni Video, APIMart, Omixa" in " ".join(
        html.split()
    )

    # Alice's key is not one bob may choose, and alice's token does not lead bob to her run.
    bob_key = make_key(bob, "omniakey", label="Bob's")
    ledger.grant(bob, 500, by=funded, reason="test")
    data = start(client) | {"prompts": "Bob's fox", "preview": "1"}
    stolen = page(client.post(BATCH, data | {"key_omniakey": str(keys["omniakey"].code)}))
    assert "Choose one of your active keys for OmniaKey." in stolen.html
    assert not stolen.statuses  # no rows were checked with a key that is not bob's
    bobs = page(client.post(BATCH, data))
    response = submit(client, bobs, form_token=form.values["form_token"])
    bobs_run = Run.objects.exclude(pk=alices_run.pk).get()
    assert response["Location"] == run_page(bobs_run)
    assert bobs_run.user == bob
    assert Task.objects.get(run=bobs_run).key == bob_key
    assert alices_run.tasks.count() == 1


def test_an_anonymous_visitor_is_sent_to_log_in(client):
    response = client.get(BATCH)
    assert response.status_code == 302
    assert "login" in response["Location"]


def test_the_page_works_without_javascript(as_alice):
    html = text(as_alice.get(BATCH))
    assert 'method="post"' in html
    assert 'enctype="multipart/form-data"' in html
    assert 'name="preview"' in html
    assert "<script>" not in html.split("</head>", 1)[1]
    assert ' style="' not in html
    assert "onclick" not in html


def test_the_csv_reader_accepts_a_byte_order_mark_and_any_line_ending():
    content = "\ufeffPROMPT,aspect-ratio\r\nA fox,9:16\r\n\r\nA heron,\r\n".encode()
    rows = rows_from_csv(upload(content), 100)
    assert [(r.cells["prompt"], r.cells["aspect_ratio"]) for r in rows] == [
        ("A fox", "9:16"),
        ("A heron", ""),
    ]


def test_an_upload_is_read_from_a_file_on_disk_too(tmp_path):
    from django.core.files.uploadedfile import TemporaryUploadedFile

    handle = TemporaryUploadedFile("batch.csv", "text/csv", 0, "utf-8")
    handle.write(b"prompt\nA fox\n")
    handle.size = handle.tell()
    rows = rows_from_csv(handle, 100)
    assert [r.cells["prompt"] for r in rows] == ["A fox"]
    assert not handle.closed


# --- in a browser -----------------------------------------------------------------------------


@pytest.mark.browser
def test_in_a_browser_a_file_previews_in_place_and_the_submit_opens_the_run(
    page, live_server, alice, carol, tmp_path
):
    from django.conf import settings
    from django.test import Client

    ledger.grant(alice, 1000, by=carol, reason="welcome")
    make_key(alice, "omniakey")
    make_key(alice, "omnivideo")
    client = Client()
    client.force_login(alice)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    page.context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": live_server.url}]
    )
    refused = []
    page.on("console", lambda message: refused.append(message.text))
    path = tmp_path / "batch.csv"
    path.write_text(
        "prompt,model,duration\nA fox,omniakey/sora,8\nA heron,omnivideo/seedance-2,\n"
        "A city,omniakey/pika-1.5,9\n"
    )

    page.goto("/batch/")
    # A mark on the document: still there after the preview, so htmx swapped the form in place.
    page.evaluate("window.batchMark = 1")
    page.set_input_files("input[name=csv_file]", str(path))
    page.click("button[name=preview]")
    page.wait_for_selector("#batch-status-3")
    assert "120 credits" in page.inner_text("#batch-status-1")  # 10 a second × 8 s × 1.5
    assert "60 credits" in page.inner_text("#batch-status-2")
    assert "9 s is not possible" in page.inner_text("#batch-status-3")
    assert page.evaluate("window.batchMark") == 1
    assert page.locator("button[name=submit]").count() == 0

    page.fill("input[name=row-2-duration]", "4")
    page.click("button[name=preview]")
    page.wait_for_selector("button[name=submit]")
    assert "30 credits" in page.inner_text("#batch-status-3")
    page.click("button[name=submit]")
    page.wait_for_url("**/run/**")
    run = Run.objects.get()
    assert page.url.endswith(reverse("generations-run", args=[run.code]))
    assert "Submitted 3 tasks as one run, 210 credits charged." in page.inner_text("main, body")
    assert run.tasks.count() == 3
    assert not [text for text in refused if "Content Security Policy" in text]


def test_the_largest_batch_an_admin_may_allow_fits_in_one_form_post(as_alice, funded, carol):
    """At the highest cap an admin may set, every row with a prompt of the longest length and
    a ticked Drop box still fits Django's request limits: the member sees a preview, never a
    bare error page."""
    from accounts.models import MAX_TASKS_PER_RUN, TeamQuota
    from generations.providers import catalog

    TeamQuota.objects.create(max_tasks_per_run=MAX_TASKS_PER_RUN)
    ledger.grant(funded, 100_000, by=carol, reason="the largest batch")
    # Four bytes a character in UTF-8, and longer still once the form encodes it.
    prompt = "🦊" * catalog.PROMPT_MAX_CHARS
    form = preview_paste(as_alice, "\n".join([prompt] * MAX_TASKS_PER_RUN))
    assert form.values["rows"] == str(MAX_TASKS_PER_RUN)
    for row in range(MAX_TASKS_PER_RUN):
        form.values[f"row-{row}-drop"] = "1"
    form.values["row-0-drop"] = ""
    form = again(as_alice, form)
    assert "1 task ready" in form.html
