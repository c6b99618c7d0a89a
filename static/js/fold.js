// Panels folded in <details data-open-wide> start closed, so a phone shows what matters first
// (the gallery's results, not its filters); on a wide screen there is room, so they open here.
// The page loads this right after the panel and without defer: the panel is open before the
// page is first drawn. It runs again when htmx brings a new page in (a boosted filter form).
(function () {
  "use strict";
  if (!window.matchMedia || !window.matchMedia("(min-width: 48rem)").matches) {
    return;
  }
  var panels = document.querySelectorAll("details[data-open-wide]");
  for (var i = 0; i < panels.length; i++) {
    panels[i].open = true;
  }
})();
