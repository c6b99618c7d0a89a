"""Presets and recent prompts on Create in headless Chromium: save a preset whose prompt has a
{slot}, start afresh, pick it and type straight into the slot; then pick a recent prompt with
the keyboard alone."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from generations.models import Task
from generations.models.presets import Preset
from tests.test_browser_create import FLASH, member, settled, signed_in

pytestmark = pytest.mark.browser


@pytest.fixture(autouse=True)
def public_url(settings, live_server, tmp_path):
    settings.PUBLIC_URL = live_server.url
    settings.MEDIA_ROOT = tmp_path


def test_a_preset_with_a_slot_fills_the_form_ready_to_type(page, live_server, alice, carol):
    member(alice, carol, live_server, 500)
    signed_in(page.context, live_server, alice)
    page.goto(FLASH)
    page.get_by_label("Duration").select_option("8")
    page.get_by_label("Resolution").select_option("1080p")
    settled(page)
    page.get_by_label("Prompt").fill("a {slot} crossing a frozen lake at dawn")
    page.get_by_text("Save as preset", exact=True).click()
    page.get_by_label("Preset name").fill("Frozen lake")
    page.get_by_label("Include the text above").check()
    page.get_by_role("button", name="Save preset").click()
    expect(page.locator("#create-form")).to_contain_text("Saved the preset “Frozen lake”.")
    saved = Preset.objects.get(owner=alice)
    assert (saved.model_key, saved.duration, saved.resolution) == (
        "apimart/Omni-Flash-Ext",
        8,
        "1080p",
    )
    assert not Task.objects.exists()

    # A new Create: another model, an empty prompt.
    page.goto("/create/")
    expect(page.get_by_label("Model")).not_to_have_value("apimart/Omni-Flash-Ext")
    page.get_by_label("Presets").select_option(
        label="Frozen lake · Omni Flash Ext · 8 s · 1080p · 16:9"
    )
    page.get_by_role("button", name="Use preset").click()

    expect(page.locator("#create-form")).to_contain_text("Used the preset “Frozen lake”.")
    expect(page.get_by_label("Model")).to_have_value("apimart/Omni-Flash-Ext")
    expect(page.get_by_label("Duration")).to_have_value("8")
    expect(page.get_by_label("Resolution")).to_have_value("1080p")
    prompt = page.get_by_label("Prompt")
    expect(prompt).to_be_focused()
    assert prompt.evaluate("p => p.value.slice(p.selectionStart, p.selectionEnd)") == "{slot}"
    page.keyboard.type("red fox")
    expect(prompt).to_have_value("a red fox crossing a frozen lake at dawn")


def test_a_recent_prompt_is_picked_with_the_keyboard_alone(page, live_server, alice, carol):
    member(alice, carol, live_server, 500)
    now = timezone.now()
    for minutes, prompt in ((5, "an older idea"), (1, "a heron lifting off the water")):
        Task.objects.create(
            user=alice,
            provider="apimart",
            model="Omni-Flash-Ext",
            kind="video",
            prompt=prompt,
            key_label="Mine",
            state=Task.State.SUCCEEDED,
            price_unit="task",
            price_credits_per_unit=10,
            price_units=1,
            price_multiplier=Decimal(1),
            credits_charged=10,
            created_at=now - timedelta(minutes=minutes),
        )
    signed_in(page.context, live_server, alice)
    page.goto(FLASH)
    page.get_by_label("Prompt").fill("something else")

    # The history's disclosure is the stop just before the prompt.
    page.keyboard.press("Shift+Tab")
    summary = page.locator(".prompt-history summary")
    expect(summary).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator(".prompt-history")).to_have_attribute("open", "")
    page.keyboard.press("Tab")
    newest = page.get_by_role("link", name="a heron lifting off the water")
    expect(newest).to_be_focused()
    page.keyboard.press("Enter")

    prompt = page.get_by_label("Prompt")
    expect(prompt).to_have_value("a heron lifting off the water")
    expect(prompt).to_be_focused()
    # Filled in place: the page did not go anywhere, the model chosen stays.
    assert page.url.endswith(FLASH)
    expect(page.get_by_label("Model")).to_have_value("apimart/Omni-Flash-Ext")
