// A click on a transcript turn moves the call's recording to that turn and plays it.
document.addEventListener("click", function (event) {
  var turn = event.target.closest("[data-offset-ms]");
  var audio = document.getElementById("call-audio");
  if (!turn || !audio) {
    return;
  }
  audio.currentTime = Number(turn.getAttribute("data-offset-ms")) / 1000;
  var playing = audio.play();
  if (playing && playing.catch) {
    playing.catch(function () {}); // a browser may refuse to autoplay; the playhead moved anyway
  }
});

// Times are sent in UTC (<time class="local-time" datetime="...">); each is shown in the reader's
// own time zone and locale, with the zone named.
function showLocalTimes(root) {
  root.querySelectorAll("time.local-time:not([data-local])").forEach(function (el) {
    var when = new Date(el.getAttribute("datetime"));
    if (isNaN(when.getTime())) {
      return;
    }
    el.setAttribute("data-local", "1");
    el.textContent = when.toLocaleString(undefined, {
      year: "numeric",
      month: "short",
      day: "numeric",
      hour: "2-digit",
      minute: "2-digit",
      timeZoneName: "short",
    });
  });
}
new MutationObserver(function () {
  showLocalTimes(document);
}).observe(document.documentElement, { childList: true, subtree: true });
