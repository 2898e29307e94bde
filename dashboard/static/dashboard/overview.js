// The overview's per-pool charts: leases as a line, successes and errors as stacked bars, per hour.
"use strict";

(function () {
  const charts = {};

  function hourLabel(iso) {
    const d = new Date(iso);
    return String(d.getHours()).padStart(2, "0") + ":00";
  }

  function draw() {
    const source = document.getElementById("overview-charts");
    if (!source || !window.Chart) return;
    const data = JSON.parse(source.textContent);
    document.querySelectorAll("canvas[data-chart-pool]").forEach(function (canvas) {
      const series = data[canvas.dataset.chartPool];
      if (!series) return;
      const old = charts[canvas.dataset.chartPool];
      if (old) old.destroy();
      charts[canvas.dataset.chartPool] = new Chart(canvas, {
        data: {
          labels: series.hours.map(hourLabel),
          datasets: [
            { type: "line", label: "leases", data: series.leases, borderColor: "#3557d4", backgroundColor: "#3557d4", tension: 0, pointRadius: 2 },
            { type: "bar", label: "successes", data: series.successes, backgroundColor: "#32d583", stack: "outcomes" },
            { type: "bar", label: "errors", data: series.errors, backgroundColor: "#f97066", stack: "outcomes" },
          ],
        },
        options: {
          animation: false, responsive: true, maintainAspectRatio: false,
          interaction: { mode: "index", intersect: false },
          scales: { x: { stacked: true, ticks: { maxTicksLimit: 8 } }, y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } } },
          plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } },
        },
      });
    });
  }

  document.addEventListener("DOMContentLoaded", draw);
  document.addEventListener("htmx:afterSettle", draw);
})();
