// danlu dashboard, deployments page: refresh the table from /api/deployments every 5 s (the
// dashboard scrapes each live server's /metrics; rates cover the time since the last refresh).
"use strict";
(function () {
  const table = document.getElementById("deployments");
  if (!table) return;
  const body = table.tBodies[0];
  const summary = document.getElementById("deployments-summary");
  const empty = document.getElementById("no-deployments");

  function when(seconds) {
    if (!seconds) return "-";
    const d = new Date(seconds * 1000);
    const pad = (n) => String(n).padStart(2, "0");
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }
  const ms = (v) => (v === null || v === undefined ? "-" : v.toFixed(1) + " ms");
  const pct = (v) => (v === null || v === undefined ? "-" : (v * 100).toFixed(1) + "%");

  function cell(row, text, cls) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = text;
    row.appendChild(td);
    return td;
  }
  function lines(td, items) {  // one line per item, as text (never HTML)
    td.textContent = "";
    if (!items.length) { td.textContent = "-"; return; }
    items.forEach(function (item, i) {
      if (i) td.appendChild(document.createElement("br"));
      const span = document.createElement("span");
      span.className = item.cls;
      span.textContent = item.text;
      td.appendChild(span);
    });
  }

  function row(d) {
    const tr = document.createElement("tr");
    tr.className = "deployment";
    tr.setAttribute("data-deployment", d.id);
    const status = cell(tr, "");
    const pill = document.createElement("span");
    pill.className = "pill status-" + d.status;
    pill.textContent = d.status;
    status.appendChild(pill);
    const server = cell(tr, d.url, "server");
    server.appendChild(document.createElement("br"));
    const where = document.createElement("span");
    where.className = "muted";
    where.textContent = d.host + " · " + (d.workers > 1
      ? d.workers + " workers (pids " + d.pids.join(", ") + "; figures from the worker that answered)"
      : "pid " + d.pid);
    server.appendChild(where);
    lines(cell(tr, "", "models"), d.models.map(function (m) {
      let text = m.ref;
      if (m.name !== m.ref.split(":")[0]) text += " as " + m.name;
      if (m.role !== "primary") text += " (" + m.role + ")";
      return { cls: "model", text: text };
    }));
    const s = d.stats;
    if (s && s.error) {
      const td = cell(tr, s.error, "scrape-error");
      td.colSpan = 7;
    } else if (s) {
      cell(tr, String(s.requests), "num requests");
      cell(tr, s.rps.toFixed(2), "num rps");
      cell(tr, ms(s.latency_ms.p50), "num p50");
      cell(tr, ms(s.latency_ms.p95), "num p95");
      cell(tr, ms(s.latency_ms.p99), "num p99");
      cell(tr, pct(s.error_rate), "num errors");
      const drift = [];
      Object.keys(s.models).forEach(function (name) {
        const m = s.models[name].drift;
        if (m) drift.push({ cls: "drift-" + m.status, text: name + ": " + m.psi.toFixed(3) + " " + m.status + " (" + m.feature + ")" });
      });
      lines(cell(tr, "", "drift"), drift);
    } else {
      ["num requests", "num rps", "num p50", "num p95", "num p99", "num errors", "drift"].forEach(function (c) { cell(tr, "-", c); });
    }
    cell(tr, when(d.started_at));
    cell(tr, d.stopped_at ? "stopped " + when(d.stopped_at) : Math.round(d.heartbeat_age_s) + " s ago");
    return tr;
  }

  async function refresh() {
    try {
      const data = await window.danlu.getJSON("/api/deployments");
      const rows = data.deployments;
      body.replaceChildren.apply(body, rows.map(row));
      table.hidden = rows.length === 0;
      if (empty) empty.hidden = rows.length > 0;
      if (summary) {
        const live = rows.filter(function (d) { return d.status === "live"; }).length;
        summary.textContent = live + " live of " + rows.length + " listed";
      }
      table.setAttribute("data-refreshed", String(data.time));
    } catch (err) {
      console.warn("deployments: refresh failed", err);
    }
  }
  setInterval(refresh, 5000);
})();
