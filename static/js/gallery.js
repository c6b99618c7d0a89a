// Gallery tiles: while the pointer is over a video tile, or it has keyboard focus, play a muted
// looping preview over its poster; remove it again afterwards. Nothing loads until then.
// Listeners sit on the document, so tiles added by infinite scroll work too.
(function () {
  "use strict";

  if (window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches) {
    return;
  }

  function tileOf(event) {
    var target = event.target;
    return target instanceof Element && target.matches("[data-preview]") ? target : null;
  }

  function start(tile) {
    var media = tile.querySelector(".gallery-media");
    if (!media || media.querySelector("video")) {
      return;
    }
    var video = document.createElement("video");
    video.className = "gallery-preview";
    video.muted = true;
    video.loop = true;
    video.playsInline = true;
    video.setAttribute("aria-hidden", "true");
    video.src = tile.getAttribute("data-preview");
    media.appendChild(video);
    var playing = video.play();
    if (playing && playing.catch) {
      playing.catch(function () {
        // Autoplay refused or the tile was left before it started: the poster stays.
      });
    }
  }

  function stop(tile) {
    var video = tile.querySelector("video.gallery-preview");
    if (video) {
      video.pause();
      // Dropping the source stops the download as well as the playback.
      video.removeAttribute("src");
      video.load();
      video.remove();
    }
  }

  // pointerenter and pointerleave do not bubble, but they pass the document while capturing.
  document.addEventListener("pointerenter", function (event) {
    var tile = tileOf(event);
    if (tile) {
      start(tile);
    }
  }, true);
  document.addEventListener("pointerleave", function (event) {
    var tile = tileOf(event);
    if (tile && !tile.matches(":focus-visible")) {
      stop(tile);
    }
  }, true);
  document.addEventListener("focusin", function (event) {
    var tile = tileOf(event);
    if (tile) {
      start(tile);
    }
  });
  document.addEventListener("focusout", function (event) {
    var tile = tileOf(event);
    if (tile && !tile.matches(":hover")) {
      stop(tile);
    }
  });
})();
