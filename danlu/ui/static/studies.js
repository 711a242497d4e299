// danlu dashboard, a study's page: optimisation history and parallel coordinates (ECharts).
// While the study runs, the page re-reads itself every few seconds and swaps in the new summary,
// importance and trials table (server-rendered, escaped HTML) and redraws both charts.
"use strict";
(function () {
  const root = document.getElementById("study-charts");
  if (!root || !window.echarts) return;
  const REFRESH_MS = 5000;
  const history = echarts.init(document.getElementById("history"));
  const parallel = echarts.init(document.getElementById("parallel"));

  function draw(study) {
    // each trial's objective by trial number (pruned trials at their last reported value), and
    // the best so far as a step line
    const done = study.history.filter((h) => h.value !== null).map((h) => [h.trial, h.value]);
    const pruned = study.history.filter((h) => h.value === null && h.state === "pruned");
    const best = study.history.filter((h) => h.best !== null).map((h) => [h.trial, h.best]);
    history.setOption({
      animation: false,
      tooltip: { trigger: "item" },
      legend: { top: 0 },
      grid: { left: 60, right: 20, top: 30, bottom: 40 },
      xAxis: { type: "value", name: "trial", nameLocation: "middle", nameGap: 25, minInterval: 1 },
      yAxis: { type: "value", name: study.metric, scale: true },
      series: [
        { name: "trial " + study.metric, type: "scatter", data: done, symbolSize: 8 },
        {
          name: "pruned (last reported)", type: "scatter", symbol: "triangle", symbolSize: 8,
          data: pruned.filter((h) => h.last !== null).map((h) => [h.trial, h.last]),
        },
        { name: "best so far", type: "line", step: "end", data: best, showSymbol: false },
      ],
    });

    const axes = study.parallel.axes;
    const values = study.parallel.lines.map((l) => l.value[axes.length - 1]);
    parallel.setOption({
      animation: false,
      tooltip: { trigger: "item" },
      parallel: { left: 60, right: 120, top: 40, bottom: 30 },
      parallelAxis: axes,
      visualMap: values.length ? {
        dimension: axes.length - 1, type: "continuous", orient: "vertical", right: 0, top: "middle",
        min: Math.min(...values), max: Math.max(...values),
        inRange: { color: study.direction === "maximize" ? ["#d94e5d", "#eac736", "#50a3ba"] : ["#50a3ba", "#eac736", "#d94e5d"] },
        calculable: true,
      } : undefined,
      series: [{ type: "parallel", lineStyle: { width: 2, opacity: 0.7 }, data: study.parallel.lines.map((l) => ({ name: "trial " + l.trial, value: l.value })) }],
    }, true);
    root.setAttribute("data-trials", String(study.history.length));
  }

  // the page again, from this server; the parts that change while trials run are swapped in
  async function refresh() {
    const response = await fetch(location.pathname, { credentials: "same-origin", headers: { Accept: "text/html" } });
    if (!response.ok) return false;
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    ["study-summary", "importance-block", "trials"].forEach(function (id) {
      const now = document.getElementById(id), next = fresh.getElementById(id);
      if (now && next) now.replaceWith(document.importNode(next, true));
    });
    const charts = fresh.getElementById("study-charts");
    if (charts) draw(danlu.data(charts, "study"));
    return charts !== null && charts.getAttribute("data-live") === "1";
  }

  function poll() {
    setTimeout(async function () {
      let again = true;
      try { again = await refresh(); } catch (e) { again = true; } // a failed poll tries again
      root.setAttribute("data-refreshed", String(Date.now()));
      if (again) poll();
    }, REFRESH_MS);
  }

  draw(danlu.data(root, "study"));
  if (root.getAttribute("data-live") === "1") poll();
  window.addEventListener("resize", () => { history.resize(); parallel.resize(); });
})();
