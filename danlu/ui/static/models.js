// danlu dashboard, a model's page: each compressed parent's variants on two ECharts scatters,
// the test metric against batch-1 latency and against size (one series per status).
"use strict";
(function () {
  if (!window.echarts) return;
  const charts = [];
  function scatter(element, group, x, xName, log) {
    const statuses = [...new Set(group.points.map((p) => p.status))];
    const chart = echarts.init(element);
    chart.setOption({
      animation: false,
      title: { text: group.metric + " vs " + xName, left: "center", textStyle: { fontSize: 13 } },
      tooltip: {
        trigger: "item",
        // names come from stored files: escaped, the tooltip is HTML
        formatter: (item) => echarts.format.encodeHTML(item.data.name + " (" + item.seriesName + ")") + "<br>" + xName + ": " +
          item.data.value[0].toPrecision(4) + "<br>" + group.metric + ": " + item.data.value[1].toPrecision(4),
      },
      legend: { top: 22 },
      grid: { left: 60, right: 30, top: 60, bottom: 45 },
      xAxis: { type: log ? "log" : "value", name: xName, nameLocation: "middle", nameGap: 28, scale: true },
      yAxis: { type: "value", name: group.metric, scale: true },
      series: statuses.map((status) => ({
        name: status,
        type: "scatter",
        symbolSize: status === "fp32" ? 14 : 10,
        label: { show: true, position: "right", formatter: (item) => item.data.name, fontSize: 11 },
        labelLayout: { hideOverlap: true },
        data: group.points
          .filter((p) => p.status === status && p[x] !== null && p[x] > 0)
          .map((p) => ({ name: p.variant + (p.version ? " · " + p.version : ""), value: [p[x], p.value] })),
      })),
    });
    charts.push(chart);
  }
  for (const box of document.querySelectorAll(".compression")) {
    const group = danlu.data(box, "compression");
    scatter(box.querySelector(".compression-latency"), group, "latency_ms", "latency (ms, batch 1)", true);
    scatter(box.querySelector(".compression-size"), group, "size_bytes", "size (bytes)", true);
  }
  window.addEventListener("resize", () => charts.forEach((c) => c.resize()));
})();
