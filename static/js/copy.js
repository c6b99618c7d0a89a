// "Copy" buttons beside secrets and addresses a member has to take elsewhere: a new API token,
// a webhook's signing secret, a share link. The buttons are rendered hidden and shown here, so
// a browser without JavaScript (or without clipboard access) only sees the selectable text.
(function () {
  "use strict";

  function textOf(target) {
    return "value" in target ? target.value : target.textContent.trim();
  }

  function setUp(root) {
    if (!navigator.clipboard) return;
    root.querySelectorAll("button[data-copy]").forEach(function (button) {
      if (button.dataset.copyReady) return;
      button.dataset.copyReady = "1";
      button.hidden = false;
      button.addEventListener("click", function () {
        var target = document.getElementById(button.dataset.copy);
        if (!target) return;
        var label = button.innerHTML;
        navigator.clipboard.writeText(textOf(target)).then(
          function () {
            button.textContent = "Copied";
          },
          function () {
            button.textContent = "Select it and copy";
          }
        );
        setTimeout(function () {
          button.innerHTML = label;
        }, 2000);
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    setUp(document);
  });
  document.addEventListener("htmx:afterSwap", function (event) {
    setUp(event.target);
  });
})();
