// Keyboard shortcuts, on every page a member sees:
//   Ctrl+Enter (Cmd+Enter on a Mac) in the create form generates, as the Generate button does;
//   "/" goes to the page's search box (the gallery's, My tasks');
//   "?" opens the list of shortcuts (_shortcuts.html; the footer's button opens it too);
//   Escape closes what is open: that list, the <details> menu the focus is in (or one in the
//   header), a gallery tile's preview.
// "/" and "?" act only outside text fields, so they can still be typed; in a text field Escape
// keeps its own uses (a search box clears) and closes no menu.
(function () {
  "use strict";

  var platform = navigator.userAgentData ? navigator.userAgentData.platform : navigator.platform;
  var MAC = /mac|iphone|ipad|ipod/i.test(platform || "");
  // Input types a member types text into.
  var TEXT_INPUTS =
    /^(text|search|email|url|tel|password|number|date|datetime-local|month|time|week)$/;
  var opener = null;

  function typing(element) {
    if (!(element instanceof Element)) return false;
    if (element.isContentEditable) return true;
    var tag = element.tagName;
    if (tag === "TEXTAREA" || tag === "SELECT") return true;
    return tag === "INPUT" && TEXT_INPUTS.test(element.type);
  }

  function panel() {
    return document.getElementById("shortcuts");
  }

  function openHelp(from) {
    var dialog = panel();
    if (!dialog || dialog.open) return;
    opener = from || document.activeElement;
    // Modal: the page behind is inert, focus moves to the panel's first control (Close), and
    // Escape closes it natively.
    dialog.showModal();
  }

  function focusBack() {
    var back = opener;
    opener = null;
    if (back && back !== document.body && back.isConnected && typeof back.focus === "function") {
      back.focus();
    }
  }

  function generate(target) {
    var form = target.closest("#create-form");
    if (!form) return false;
    var button = form.querySelector(".submit-button");
    // Disabled while a submit is on its way, or when there is no key to pay with.
    if (button && !button.disabled) form.requestSubmit(button);
    return true;
  }

  function focusSearch() {
    var search = document.querySelector('main input[type="search"]');
    if (!search) return false;
    var fold = search.closest("details");
    if (fold && !fold.open) fold.open = true;
    search.focus({ preventScroll: true });
    search.select();
    // The whole field, label and help included, where the member can see it.
    var field = search.closest(".field") || search;
    var rect = field.getBoundingClientRect();
    if (rect.top < 0 || rect.bottom > window.innerHeight) field.scrollIntoView({ block: "center" });
    return true;
  }

  function stopPreviews() {
    // As gallery.js stops one when the pointer leaves: dropping the source also ends the download.
    var videos = document.querySelectorAll("video.gallery-preview");
    for (var i = 0; i < videos.length; i++) {
      videos[i].pause();
      videos[i].removeAttribute("src");
      videos[i].load();
      videos[i].remove();
    }
    return videos.length > 0;
  }

  function closeMenus(target) {
    var open = [];
    var around = target instanceof Element ? target.closest("details[open]") : null;
    if (around) open.push(around);
    var header = document.querySelectorAll(".site-header details[open]");
    for (var i = 0; i < header.length; i++) {
      if (open.indexOf(header[i]) < 0) open.push(header[i]);
    }
    open.forEach(function (details) {
      var hadFocus = details.contains(document.activeElement);
      details.open = false;
      var summary = details.querySelector("summary");
      if (hadFocus && summary) summary.focus();
    });
    return open.length > 0;
  }

  function onEscape(event) {
    var dialog = panel();
    // The open panel closes by itself (the browser's own Escape for a modal dialog).
    if (dialog && dialog.open) return;
    var closed = stopPreviews();
    if (!typing(event.target)) closed = closeMenus(event.target) || closed;
    if (closed) event.preventDefault();
  }

  document.addEventListener("keydown", function (event) {
    if (event.defaultPrevented || event.isComposing) return;
    var target = event.target instanceof Element ? event.target : document.body;
    var withModifier = (event.ctrlKey || event.metaKey) && !event.altKey && !event.shiftKey;
    if (event.key === "Enter" && withModifier) {
      if (generate(target)) event.preventDefault();
      return;
    }
    if (event.key === "Escape") {
      onEscape(event);
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey || typing(target)) return;
    var dialog = panel();
    if (dialog && dialog.open) return;
    if (event.key === "/") {
      if (focusSearch()) event.preventDefault();
    } else if (event.key === "?") {
      if (dialog) {
        event.preventDefault();
        openHelp();
      }
    }
  });

  document.addEventListener("click", function (event) {
    var button = event.target instanceof Element && event.target.closest("#shortcuts-button");
    if (button) openHelp(button);
  });

  // "close" does not bubble; the panel may be swapped in again by a boosted page, so listen on
  // the document while capturing.
  document.addEventListener("close", function (event) {
    if (event.target === panel()) focusBack();
  }, true);

  function prepare() {
    var button = document.getElementById("shortcuts-button");
    if (button) button.hidden = false;
    if (!MAC) return;
    var keys = document.querySelectorAll(".shortcut-modifier");
    for (var i = 0; i < keys.length; i++) keys[i].textContent = "Cmd";
  }

  prepare();
  // A boosted page (the gallery's filters) brings a new footer: show its button too.
  document.addEventListener("htmx:load", prepare);
})();
