// The usage chart: leases, successes and errors per group of the table below it.
"use strict";

document.addEventListener("DOMContentLoaded", function () {
  const source = document.getElementById("usage-data");
  const canvas = document.getElementById("usage-chart");
  if (!source || !canvas || !window.Chart) return;
  const data = JSON.parse(source.textContent);
  new Chart(canvas, {
    type: "bar",
    data: {
      labels: data.labels,
      datasets: [
        { label: "leases", data: data.leases, backgroundColor: "#3557d4" },
        { label: "successes", data: data.successes, backgroundColor: "#32d583" },
        { label: "errors", data: data.errors, backgroundColor: "#f97066" },
      ],
    },
    options: {
      animation: false, responsive: true, maintainAspectRatio: false,
      scales: { y: { beginAtZero: true, ticks: { precision: 0 } } },
      plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } },
    },
  });
});
