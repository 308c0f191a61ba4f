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
