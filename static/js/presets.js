// Presets on Create. A preset whose prompt has a {slot} fills the prompt with the slot
// selected, so what the member types replaces it; the server marks that prompt (data-slot,
// autofocus) on a full page and on the picker's htmx swap alike. And Enter in the preset's
// name saves the preset: the form's default button is Generate, which would charge.
(function () {
  "use strict";

  function selectSlot(root) {
    if (!(root instanceof Element) && root !== document) return;
    var prompt = root.querySelector ? root.querySelector("textarea[data-slot]") : null;
    if (!prompt) return;
    var slot = prompt.getAttribute("data-slot");
    var at = prompt.value.indexOf(slot);
    if (at < 0) return;
    prompt.focus({ preventScroll: true });
    prompt.setSelectionRange(at, at + slot.length);
  }

  document.addEventListener("DOMContentLoaded", function () { selectSlot(document); });
  document.addEventListener("htmx:load", function (event) {
    if (event.target !== document.body) selectSlot(event.target);
  });

  document.addEventListener("keydown", function (event) {
    var field = event.target;
    if (event.key !== "Enter" || !(field instanceof Element) || field.id !== "id_preset_name") {
      return;
    }
    event.preventDefault();
    var button = field.form && field.form.querySelector(".save-preset-button");
    if (button) button.click();
  });
})();
