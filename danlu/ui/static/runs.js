// Runs table: the Compare button counts the selected runs (the form itself needs no script).
"use strict";
(function () {
  const form = document.getElementById("compare-form");
  const button = document.getElementById("compare-button");
  if (!form || !button) return;
  function update() {
    const n = form.querySelectorAll("input[name=runs]:checked").length;
    button.textContent = n ? "Compare " + n + " selected" : "Compare selected";
    button.disabled = n === 1;
  }
  form.addEventListener("change", update);
  update();
})();
