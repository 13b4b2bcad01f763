// The case page's keyboard shortcuts and zoom (served from this origin: CSP script-src 'self').
// R / F: choose the decision (its reasons only), Enter: decide; Z: zoom; O: heatmap on/off.
(function () {
  "use strict";
  var form = document.getElementById("decide");
  var reason = document.getElementById("reason");
  var viewer = document.getElementById("face");
  var overlay = document.getElementById("overlay");
  var chosen = null;

  function choose(decision) {
    if (!form) return;
    chosen = decision;
    Array.prototype.forEach.call(reason.querySelectorAll("option[data-decision]"), function (o) {
      o.disabled = o.getAttribute("data-decision") !== decision;
    });
    if (reason.selectedOptions.length && reason.selectedOptions[0].disabled) reason.value = "";
    form.setAttribute("data-chosen", decision);
    reason.focus();
  }

  if (viewer) {
    viewer.addEventListener("click", function () { viewer.classList.toggle("zoomed"); });
  }
  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    var typing = e.target && (e.target.tagName === "TEXTAREA" || e.target.tagName === "INPUT");
    if (typing && e.key !== "Escape") return;
    var key = e.key.toLowerCase();
    if (key === "z" && viewer) { viewer.classList.toggle("zoomed"); e.preventDefault(); }
    else if (key === "o" && overlay) { overlay.checked = !overlay.checked; e.preventDefault(); }
    else if (key === "r") { choose("real"); e.preventDefault(); }
    else if (key === "f") { choose("fake"); e.preventDefault(); }
    else if (key === "enter" && chosen && reason.value) {
      form.querySelector("button[value=" + chosen + "]").click();
      e.preventDefault();
    }
  });
  if (reason) {
    reason.addEventListener("keydown", function (e) {
      if (e.key === "Enter" && chosen && reason.value) {
        form.querySelector("button[value=" + chosen + "]").click();
        e.preventDefault();
      }
    });
  }
})();
