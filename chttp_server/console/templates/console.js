// Reload the page every data-refresh seconds (0: never), but not while the operator is
// typing in a form: a reload would throw the input away. The only script of the console;
// the Content-Security-Policy runs no other.
(function () {
  "use strict";
  var seconds = parseInt(document.body.getAttribute("data-refresh") || "0", 10);
  if (!(seconds > 0)) { return; }
  function typing() {
    var fields = document.querySelectorAll("input, select");
    for (var i = 0; i < fields.length; i++) {
      var field = fields[i];
      if (field === document.activeElement) { return true; }
      if (field.type === "password" && field.value) { return true; }
      if (field.type === "search" && field.value !== field.defaultValue) { return true; }
    }
    return false;
  }
  function tick() {
    if (typing()) { window.setTimeout(tick, seconds * 1000); } else { window.location.reload(); }
  }
  window.setTimeout(tick, seconds * 1000);
}());
