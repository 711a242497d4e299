// Run detail: one uPlot chart per metric family (losses, validation metrics, ...), fed by
// /api/runs/{id}/metrics; while the run trains, new points are polled every second and appended.
"use strict";
(function () {
  const root = document.getElementById("curves");
  if (!root) return;
  const runId = root.getAttribute("data-run");
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];
  // family -> {box, plot, keys: [..], points: Map(step -> {key: value})}
  const charts = {};
  let after = -1;
  let status = root.getAttribute("data-status");
  window.danlu.charts = charts;

  function width(box) {
    return Math.max(320, Math.min(900, box.clientWidth || root.clientWidth || 900));
  }

  function columns(chart) {
    const steps = Array.from(chart.points.keys()).sort(function (a, b) { return a - b; });
    const data = [steps];
    chart.keys.forEach(function (key) {
      data.push(steps.map(function (s) {
        const v = chart.points.get(s)[key];
        return v === undefined ? null : v;
      }));
    });
    return data;
  }

  function draw(family, chart) {
    const data = columns(chart);
    if (chart.plot && chart.plot.series.length === chart.keys.length + 1) {
      chart.plot.setData(data);
    } else {
      if (chart.plot) chart.plot.destroy();
      const series = [{ label: "epoch" }].concat(chart.keys.map(function (key, i) {
        return { label: key, stroke: COLORS[i % COLORS.length], width: 2, points: { show: true, size: 5 }, spanGaps: true };
      }));
      chart.plot = new uPlot({
        width: width(chart.box), height: 280, series: series,
        scales: { x: { time: false } },
        axes: [{ label: "epoch", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000] }, {}],
      }, data, chart.box);
    }
    chart.box.setAttribute("data-points", String(data[0].length));
    chart.box.setAttribute("data-series", String(chart.keys.length));
  }

  function merge(payload) {
    const series = payload.series || {};
    const families = payload.families || {};
    const touched = {};
    Object.keys(series).forEach(function (key) {
      const family = families[key] || "Other";
      let chart = charts[family];
      if (!chart) {
        const section = document.createElement("section");
        section.className = "curve";
        const title = document.createElement("h3");
        title.textContent = family;
        const box = document.createElement("div");
        box.className = "chart";
        box.setAttribute("data-family", family);
        section.appendChild(title);
        section.appendChild(box);
        root.appendChild(section);
        chart = charts[family] = { box: box, plot: null, keys: [], points: new Map() };
      }
      if (chart.keys.indexOf(key) < 0) chart.keys.push(key);
      series[key].forEach(function (point) {
        const step = point[0];
        if (!chart.points.has(step)) chart.points.set(step, {});
        chart.points.get(step)[key] = point[1];
      });
      touched[family] = chart;
    });
    Object.keys(touched).forEach(function (family) { draw(family, touched[family]); });
    const empty = document.getElementById("curves-empty");
    if (empty && Object.keys(charts).length) empty.remove();
    if (typeof payload.steps === "number" && payload.steps > after) after = payload.steps;
    if (payload.status && payload.status !== status) {
      status = payload.status;
      root.setAttribute("data-status", status);
      const pill = document.getElementById("run-status");
      if (pill) { pill.textContent = status; pill.className = "pill status-" + status; }
    }
  }

  async function poll() {
    try {
      merge(await window.danlu.getJSON("/api/runs/" + encodeURIComponent(runId) + "/metrics?after=" + after));
    } catch (err) {
      console.warn("metrics poll failed", err);
    }
    if (status === "running") setTimeout(poll, 1000);
  }
  poll();
})();
