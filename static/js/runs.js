// The run pages, in two parts. First: the run page's progress panel follows its cards. The
// page's one card poller swaps fresh cards in; after each settle this compares the cards'
// states with the last ones seen and, when one changed, asks the panel to load itself again
// (its hx-trigger is "run-changed"). The panel's own swap changes no card, so it never loops.
(function () {
  "use strict";
  var seen = null;

  function states() {
    var cards = document.querySelectorAll("#run-cards [data-task]");
    var parts = [];
    for (var i = 0; i < cards.length; i++) {
      parts.push(cards[i].getAttribute("data-task") + ":" + cards[i].getAttribute("data-state"));
    }
    return parts.join(",");
  }

  function follow() {
    var panel = document.getElementById("run-progress");
    if (!panel || !document.getElementById("run-cards")) return;
    var now = states();
    if (seen !== null && now !== seen && window.htmx) window.htmx.trigger(panel, "run-changed");
    seen = now;
  }

  document.addEventListener("DOMContentLoaded", function () {
    follow();
    document.body.addEventListener("htmx:afterSettle", follow);
  });
})();

// Second: Compare's arrow keys. Left and right step from one model's column to the next (to
// the result in the same row, or the column's last); up and down step through a column once
// a result has the focus (before that they scroll the page as usual). Leaving a result pauses
// its video. A video's own controls keep their arrow keys (seeking, volume), and so does any
// text field.
(function () {
  "use strict";
  var STEPS = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
  var TEXT_INPUTS =
    /^(text|search|email|url|tel|password|number|date|datetime-local|month|time|week|range)$/;

  function typing(element) {
    if (element.isContentEditable) return true;
    var tag = element.tagName;
    if (tag === "TEXTAREA" || tag === "SELECT" || tag === "VIDEO" || tag === "AUDIO") return true;
    return tag === "INPUT" && TEXT_INPUTS.test(element.type);
  }

  function list(root, selector) {
    return Array.prototype.slice.call(root.querySelectorAll(selector));
  }

  function pause(item) {
    list(item, "video").forEach(function (video) {
      if (!video.paused) video.pause();
    });
  }

  function next(current, step) {
    var columns = list(document, "[data-compare] [data-compare-column]");
    if (!columns.length) return null;
    if (!current) return step[0] ? list(columns[0], "[data-compare-item]")[0] : null;
    var column = current.closest("[data-compare-column]");
    var items = list(column, "[data-compare-item]");
    var row = items.indexOf(current);
    if (step[1]) return items[row + step[1]] || null;
    var other = columns[columns.indexOf(column) + step[0]];
    if (!other) return null;
    var others = list(other, "[data-compare-item]");
    return others[Math.min(row, others.length - 1)] || null;
  }

  document.addEventListener("keydown", function (event) {
    var step = STEPS[event.key];
    if (!step || event.defaultPrevented || event.altKey || event.ctrlKey || event.metaKey ||
        event.shiftKey || event.isComposing) return;
    var target = event.target instanceof Element ? event.target : document.body;
    if (typing(target)) return;
    var dialog = document.getElementById("shortcuts");
    if (dialog && dialog.open) return;
    var current = target.closest("[data-compare-item]");
    var item = next(current, step);
    if (!item) return;
    event.preventDefault();
    if (current) pause(current);
    item.focus({ preventScroll: true });
    item.scrollIntoView({ block: "nearest", inline: "nearest" });
  });
})();
