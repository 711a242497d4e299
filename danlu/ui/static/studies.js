// danlu dashboard, a study's page: optimisation history and parallel coordinates (ECharts).
"use strict";
(function () {
  const root = document.getElementById("study-charts");
  if (!root || !window.echarts) return;
  const study = danlu.data(root, "study");

  // each trial's objective by trial number (pruned trials at their last reported value), and
  // the best so far as a step line
  const history = echarts.init(document.getElementById("history"));
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
  const parallel = echarts.init(document.getElementById("parallel"));
  parallel.setOption({
    animation: false,
    tooltip: { trigger: "item" },
    parallel: { left: 60, right: 120, top: 40, bottom: 30 },
    parallelAxis: axes,
    visualMap: study.parallel.lines.length ? {
      dimension: axes.length - 1, type: "continuous", orient: "vertical", right: 0, top: "middle",
      min: Math.min(...study.parallel.lines.map((l) => l.value[axes.length - 1])),
      max: Math.max(...study.parallel.lines.map((l) => l.value[axes.length - 1])),
      inRange: { color: study.direction === "maximize" ? ["#d94e5d", "#eac736", "#50a3ba"] : ["#50a3ba", "#eac736", "#d94e5d"] },
      calculable: true,
    } : undefined,
    series: [{ type: "parallel", lineStyle: { width: 2, opacity: 0.7 }, data: study.parallel.lines.map((l) => ({ name: "trial " + l.trial, value: l.value })) }],
  });
  window.addEventListener("resize", () => { history.resize(); parallel.resize(); });
})();
