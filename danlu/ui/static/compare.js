// Compare: one uPlot chart per metric with one series per run (from each run's metrics JSON),
// and an ECharts parallel-coordinates chart over numeric params and final metrics.
"use strict";
(function () {
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];
  const root = document.getElementById("compare-curves");
  const state = { charts: {}, parallel: null };
  window.danlu.compare = state;

  async function curves() {
    if (!root) return;
    const runs = window.danlu.data(root, "runs") || [];
    const payloads = await Promise.all(runs.map(function (run) {
      return window.danlu.getJSON("/api/runs/" + encodeURIComponent(run.id) + "/metrics");
    }));
    // metric key -> [series of run 0, series of run 1, ...]
    const keys = {};
    payloads.forEach(function (payload, i) {
      Object.keys(payload.series).forEach(function (key) {
        if (!keys[key]) keys[key] = runs.map(function () { return []; });
        keys[key][i] = payload.series[key];
      });
    });
    const empty = document.getElementById("curves-empty");
    if (empty) empty.textContent = Object.keys(keys).length ? "" : "None of these runs logged curves.";
    Object.keys(keys).sort().forEach(function (key) {
      const perRun = keys[key];
      const stepSet = new Set();
      perRun.forEach(function (points) { points.forEach(function (p) { stepSet.add(p[0]); }); });
      const steps = Array.from(stepSet).sort(function (a, b) { return a - b; });
      const data = [steps].concat(perRun.map(function (points) {
        const byStep = new Map(points.map(function (p) { return [p[0], p[1]]; }));
        return steps.map(function (s) { return byStep.has(s) ? byStep.get(s) : null; });
      }));
      const section = document.createElement("section");
      section.className = "curve";
      const title = document.createElement("h3");
      title.textContent = key;
      const box = document.createElement("div");
      box.className = "chart";
      box.setAttribute("data-metric", key);
      section.appendChild(title);
      section.appendChild(box);
      root.appendChild(section);
      const series = [{ label: "epoch" }].concat(runs.map(function (run, i) {
        return { label: run.name + " (" + run.id.slice(-6) + ")", stroke: COLORS[i % COLORS.length], width: 2, points: { show: true, size: 5 }, spanGaps: true };
      }));
      const plot = new uPlot({
        width: Math.max(320, Math.min(900, root.clientWidth || 900)), height: 260, series: series,
        scales: { x: { time: false } }, axes: [{ label: "epoch", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000] }, {}],
      }, data, box);
      box.setAttribute("data-points", String(steps.length));
      box.setAttribute("data-series", String(runs.length));
      state.charts[key] = plot;
    });
  }

  function parallel() {
    const el = document.getElementById("parallel");
    if (!el || typeof echarts === "undefined") return;
    const spec = window.danlu.data(el, "parallel");
    if (!spec || !spec.axes.length) {
      el.textContent = "No numeric params or shared metrics to draw.";
      el.classList.add("muted");
      return;
    }
    const chart = echarts.init(el, null, { renderer: "canvas" });
    chart.setOption({
      animation: false,
      color: COLORS,
      tooltip: { trigger: "item" },
      legend: { top: 0, data: spec.lines.map(function (l) { return l.name + " (" + l.id.slice(-6) + ")"; }) },
      parallel: { left: 60, right: 120, top: 60, bottom: 30 },
      parallelAxis: spec.axes.map(function (name, i) { return { dim: i, name: name, nameRotate: 20, scale: true }; }),
      series: spec.lines.map(function (line) {
        return {
          type: "parallel", name: line.name + " (" + line.id.slice(-6) + ")", lineStyle: { width: 2, opacity: 0.9 },
          data: [line.values.map(function (v) { return v === null ? "-" : v; })],
        };
      }),
    });
    el.setAttribute("data-lines", String(spec.lines.length));
    el.setAttribute("data-axes", String(spec.axes.length));
    state.parallel = chart;
  }

  parallel();
  curves().catch(function (err) { console.warn("compare curves failed", err); });
})();
