// danlu dashboard: small helpers shared by the pages (no inline script: CSP script-src 'self').
"use strict";
window.danlu = (function () {
  // JSON from this server (same origin, the sign-in cookie rides along)
  async function getJSON(url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(url + ": " + response.status);
    return response.json();
  }
  // the JSON a page hands its script, from a data- attribute (never an inline <script>)
  function data(element, name) {
    const raw = element.getAttribute("data-" + name);
    return raw === null ? null : JSON.parse(raw);
  }
  return { getJSON: getJSON, data: data };
})();
