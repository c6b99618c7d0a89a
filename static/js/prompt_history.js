// Recent prompts on Create: each entry is a link that opens Create with that prompt (so it
// works without JavaScript); here choosing one fills the prompt in place instead, keeping
// everything else on the form, and puts the cursor at its end.
(function () {
  "use strict";

  document.addEventListener("click", function (event) {
    var link = event.target instanceof Element && event.target.closest("a.recent-prompt");
    if (!link) return;
    var prompt = document.getElementById("id_prompt");
    if (!prompt) return;
    event.preventDefault();
    prompt.value = link.getAttribute("data-prompt");
    prompt.dispatchEvent(new Event("input", { bubbles: true }));
    var list = link.closest("details");
    if (list) list.open = false;
    prompt.focus();
    prompt.setSelectionRange(prompt.value.length, prompt.value.length);
  });
})();
