// Studio, in two parts. First: tell the member when their tasks change, without moving focus.
// The card poller (an htmx element) swaps fresh cards in; after each settle this script
// compares every card's state with the last one seen and, on a change, announces it in the
// page's one polite live region (shown as a toast), updates the tab title, and shows a
// browser notification for finished tasks where the member allowed them.
(function () {
  "use strict";
  var FINISHED = { succeeded: "finished", failed: "failed", canceled: "was canceled" };
  // Worth telling: a start, an end, or a problem; "submitted" or "saving" would only be noise.
  var ANNOUNCED = { running: "started", needs_review: "needs review" };
  var baseTitle = document.title;
  var seen = {};

  function cards() {
    return Array.prototype.slice.call(document.querySelectorAll("[data-task]"));
  }

  function toast(text) {
    var region = document.getElementById("toasts");
    if (!region) return;
    var item = document.createElement("p");
    item.className = "toast";
    item.textContent = text;
    region.appendChild(item);
    setTimeout(function () { item.remove(); }, 8000);
  }

  function notify(text) {
    if (!("Notification" in window) || Notification.permission !== "granted") return;
    try { new Notification("Omniweb", { body: text }); } catch (e) { /* not allowed here */ }
  }

  function updateTitle(list) {
    var active = list.filter(function (card) { return card.querySelector(".watch"); });
    if (!active.length) { document.title = baseTitle; return; }
    var label = active.length + " running";
    if (active.length === 1 && active[0].dataset.progress) {
      label += " · " + active[0].dataset.progress + "%";
    }
    document.title = "(" + label + ") " + baseTitle;
  }

  function check(announce) {
    var list = cards();
    list.forEach(function (card) {
      var code = card.dataset.task, state = card.dataset.state;
      var before = seen[code];
      seen[code] = state;
      if (!announce || before === undefined || before === state) return;
      var name = card.dataset.label || "A task";
      var what = FINISHED[state] || ANNOUNCED[state];
      if (!what) return;
      var text = name + " " + what + ".";
      toast(text);
      if (FINISHED[state]) notify(text);
    });
    updateTitle(list);
  }

  function offerNotifications() {
    var button = document.getElementById("notify-button");
    if (!button || !("Notification" in window) || Notification.permission !== "default") return;
    button.hidden = false;
    button.addEventListener("click", function () {
      Notification.requestPermission().then(function () { button.hidden = true; });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    check(false);
    offerNotifications();
    document.body.addEventListener("htmx:afterSettle", function () { check(true); });
  });
})();

// Create: a submit that comes back with problems brings a summary of them, marked autofocus.
// htmx focuses it after the swap; this also moves it into view, since the member is at the
// Generate button, often a screen or more below on a phone. The summary's links put the cursor
// in the field they name. (Without JavaScript the browser's own autofocus does the same.)
(function () {
  "use strict";

  function bringIntoView(element) {
    var box = element.closest(".field") || element;
    var rect = box.getBoundingClientRect();
    var height = window.innerHeight || document.documentElement.clientHeight;
    if (rect.top < 0 || rect.bottom > height) {
      box.scrollIntoView({ block: "start" });
    }
  }

  function focusSwapped(root) {
    if (!(root instanceof Element)) return;
    var target = root.matches("[autofocus]") ? root : root.querySelector("[autofocus]");
    if (!target) return;
    if (document.activeElement !== target) target.focus({ preventScroll: true });
    bringIntoView(target);
  }

  document.addEventListener("htmx:load", function (event) {
    // htmx also announces the page itself once it starts; the browser has handled that one.
    if (event.target !== document.body) focusSwapped(event.target);
  });

  document.addEventListener("click", function (event) {
    var link = event.target instanceof Element &&
      event.target.closest(".error-summary a[data-control]");
    if (!link) return;
    var control = document.getElementById(link.getAttribute("data-control"));
    if (!control || control.disabled || control.type === "hidden") return;
    event.preventDefault();
    control.focus({ preventScroll: true });
    bringIntoView(control);
  });
})();
