// The account page's burn-down chart: available credits after each journal entry (Chart.js,
// shipped in static/vendor). The data comes in a JSON block, so the page runs no inline script.
(function () {
  "use strict";
  var canvas = document.getElementById("burn-down");
  var source = document.getElementById("burn-down-data");
  if (!canvas || !source || typeof Chart === "undefined") {
    return;
  }
  var points = JSON.parse(source.textContent || "[]").map(function (p) {
    return { x: p.t, y: p.available };
  });
  if (!points.length) {
    return;
  }
  var number = new Intl.NumberFormat("en-US");
  var first = points[0].x;
  var last = Math.max(points[points.length - 1].x, first + 10 * 1000);
  var span = last - first;
  var stamp = function (ms) {
    return new Date(ms).toISOString().slice(0, 16).replace("T", " ");
  };
  // Ticks say the date when the history spans days, the minute when it spans hours, the
  // second when it spans minutes.
  var cut = span > 2 * 86400 * 1000 ? [0, 10] : span > 600 * 1000 ? [5, 16] : [11, 19];
  var tick = function (ms) {
    return new Date(ms).toISOString().slice(cut[0], cut[1]).replace("T", " ");
  };
  new Chart(canvas, {
    type: "line",
    data: {
      datasets: [{
        label: "Available credits",
        data: points,
        stepped: true,
        borderColor: "#1d4ed8",
        backgroundColor: "rgba(29, 78, 216, 0.12)",
        fill: true,
        pointRadius: points.length > 60 ? 0 : 2,
        borderWidth: 2
      }]
    },
    options: {
      animation: false,
      maintainAspectRatio: false,
      parsing: false,
      scales: {
        x: {
          type: "linear",
          min: first,
          max: last,
          title: { display: true, text: "time (UTC)" },
          ticks: { maxTicksLimit: 6, callback: tick }
        },
        y: {
          beginAtZero: true,
          title: { display: true, text: "credits" },
          ticks: { callback: function (v) { return number.format(v); } }
        }
      },
      plugins: {
        legend: { display: false },
        tooltip: {
          callbacks: {
            title: function (items) { return stamp(items[0].parsed.x) + " UTC"; },
            label: function (item) { return number.format(item.parsed.y) + " credits"; }
          }
        }
      }
    }
  });
})();
