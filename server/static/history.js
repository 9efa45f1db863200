/*
 * anystep playground session history: every request's server-reported latency, steps and
 * NFE, as a table row and a point of the latency-against-steps chart (one colour per
 * model / solver series). Plain JS; drawing is in plots.js. Exposes
 * window.AnystepHistory = {create}.
 */
(function () {
  "use strict";

  // Okabe-Ito palette: distinguishable with common colour-vision deficiencies.
  var PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"];

  function seriesKey(r) {
    return r.model + (r.solver ? " / " + r.solver : "");
  }

  /**
   * The history of one page: `chart` (canvas), `legend` (element), `body` (the table's tbody);
   * `modelMaxSteps()` gives the selected model's max_steps (the chart's x axis reaches at least
   * it, 8 and every recorded step count). Returns {record(r), draw()}, `r` a /generate result.
   */
  function create(chart, legend, body, modelMaxSteps) {
    var history = [];
    var seriesColors = {};

    function colorFor(key) {
      if (!(key in seriesColors)) {
        var n = Object.keys(seriesColors).length;
        seriesColors[key] = PALETTE[n % PALETTE.length];
      }
      return seriesColors[key];
    }

    function renderLegend(keys) {
      legend.textContent = "";
      keys.forEach(function (key) {
        var item = document.createElement("span");
        item.className = "legend-item";
        var sw = document.createElement("span");
        sw.className = "swatch";
        sw.style.background = seriesColors[key];
        item.appendChild(sw);
        item.appendChild(document.createTextNode(key));
        legend.appendChild(item);
      });
    }

    function draw() {
      var maxSteps = 8;
      history.forEach(function (e) { maxSteps = Math.max(maxSteps, e.steps); });
      maxSteps = Math.max(maxSteps, modelMaxSteps());
      renderLegend(window.AnystepPlots.drawChart(chart, history, seriesColors, maxSteps, seriesKey));
    }

    function record(r) {
      if (!Number.isFinite(r.latencyMs) || !Number.isFinite(r.steps)) return;
      var entry = { model: r.model, solver: r.solver, steps: r.steps, nfe: r.nfe, n: r.n, latencyMs: r.latencyMs };
      history.push(entry);
      colorFor(seriesKey(entry));
      var tr = document.createElement("tr");
      [history.length, entry.model, entry.solver || "–", entry.steps, entry.nfe, entry.n,
        entry.latencyMs.toFixed(2)].forEach(function (v) {
        var td = document.createElement("td");
        td.textContent = String(v);
        tr.appendChild(td);
      });
      body.appendChild(tr);
      draw();
    }

    return { record: record, draw: draw };
  }

  window.AnystepHistory = { create: create };
})();
