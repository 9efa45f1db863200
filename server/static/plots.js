/*
 * anystep playground plots: samples of a 2D model (points, or a density when there are
 * thousands) and the session's latency against steps. Plain JS, no dependencies;
 * exposes window.AnystepPlots = {drawScatter, drawChart, drawImage}.
 */
(function () {
  "use strict";

  // 2D models: from this many points on, draw a density (a few hundred points do not
  // show the shape; thousands drawn as dots saturate).
  var DENSITY_MIN_POINTS = 600;


  function setupCanvas(canvas, cssWidth, cssHeight) {
    var dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(cssWidth * dpr);
    canvas.height = Math.round(cssHeight * dpr);
    var ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    return ctx;
  }

  /** Draw samples [n, d] (first two coordinates; d=1 is drawn on a line). */
  function drawScatter(canvas, samples) {
    var size = Math.max(120, Math.round(canvas.clientWidth || 300));
    var ctx = setupCanvas(canvas, size, size);
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, size, size);
    var pts = Array.isArray(samples) ? samples : [];
    var absVals = [];
    pts.forEach(function (p) {
      var a = Array.isArray(p) ? p : [p];
      for (var k = 0; k < Math.min(2, a.length); k++) if (Number.isFinite(a[k])) absVals.push(Math.abs(a[k]));
    });
    absVals.sort(function (a, b) { return a - b; });
    var q = absVals.length ? absVals[Math.floor(0.99 * (absVals.length - 1))] : 0;
    var lim = Math.max(4.5, 1.05 * q); // toy 2D data sets live in about [-4, 4]^2
    var sx = function (x) { return ((x + lim) / (2 * lim)) * size; };
    var sy = function (y) { return ((lim - y) / (2 * lim)) * size; };
    ctx.strokeStyle = "#e2e2e2";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(0, sy(0)); ctx.lineTo(size, sy(0));
    ctx.moveTo(sx(0), 0); ctx.lineTo(sx(0), size);
    ctx.stroke();
    if (pts.length >= DENSITY_MIN_POINTS) {
      drawDensity(ctx, pts, lim, size);
      canvas.setAttribute("data-render", "density");
    } else {
      var r = pts.length > 300 ? 1.8 : 2.6;
      ctx.fillStyle = "rgba(0, 114, 178, 0.6)";
      pts.forEach(function (p) {
        var a = Array.isArray(p) ? p : [p];
        var x = a[0], y = a.length > 1 ? a[1] : 0;
        if (!Number.isFinite(x) || !Number.isFinite(y)) return;
        ctx.beginPath();
        ctx.arc(sx(x), sy(y), r, 0, 2 * Math.PI);
        ctx.fill();
      });
      canvas.setAttribute("data-render", "points");
    }
    ctx.font = "11px system-ui, sans-serif";
    var labels = [["±" + (Math.round(lim * 10) / 10), 13], ["n = " + pts.length, size - 5]];
    labels.forEach(function (lab) {
      var w = ctx.measureText(lab[0]).width;
      ctx.fillStyle = "rgba(255, 255, 255, 0.85)";
      ctx.fillRect(2, lab[1] - 11, w + 5, 14);
      ctx.fillStyle = "#555";
      ctx.fillText(lab[0], 4, lab[1]);
    });
  }

  /**
   * A 2D histogram of the samples on [-lim, lim]^2, drawn as a heat map: white (empty)
   * through light to dark blue, intensity sqrt(count / c99) where c99 is the 99th
   * percentile of the non-empty bins (a few dense bins do not wash out the rest).
   */
  function drawDensity(ctx, pts, lim, size) {
    var bins = Math.max(24, Math.min(160, Math.round(Math.sqrt(pts.length / 1.5))));
    var counts = new Float32Array(bins * bins);
    pts.forEach(function (p) {
      var a = Array.isArray(p) ? p : [p];
      var x = a[0], y = a.length > 1 ? a[1] : 0;
      if (!Number.isFinite(x) || !Number.isFinite(y)) return;
      var i = Math.floor(((x + lim) / (2 * lim)) * bins);
      var j = Math.floor(((lim - y) / (2 * lim)) * bins);
      if (i >= 0 && i < bins && j >= 0 && j < bins) counts[j * bins + i] += 1;
    });
    var nonzero = [];
    for (var k = 0; k < counts.length; k++) if (counts[k] > 0) nonzero.push(counts[k]);
    nonzero.sort(function (a, b) { return a - b; });
    var top = nonzero.length ? nonzero[Math.floor(0.99 * (nonzero.length - 1))] : 1;
    var off = document.createElement("canvas");
    off.width = bins;
    off.height = bins;
    var octx = off.getContext("2d");
    var img = octx.createImageData(bins, bins);
    // light (190, 215, 235) to dark (8, 48, 107) blue; empty bins stay white
    for (var b = 0; b < counts.length; b++) {
      var c = counts[b];
      var o = 4 * b;
      if (c <= 0) {
        img.data[o] = 255; img.data[o + 1] = 255; img.data[o + 2] = 255; img.data[o + 3] = 255;
        continue;
      }
      var v = Math.min(1, Math.sqrt(c / top));
      img.data[o] = Math.round(190 - 182 * v);
      img.data[o + 1] = Math.round(215 - 167 * v);
      img.data[o + 2] = Math.round(235 - 128 * v);
      img.data[o + 3] = 255;
    }
    octx.putImageData(img, 0, 0);
    ctx.save();
    ctx.imageSmoothingEnabled = true; // a smooth upscale reads as a density, not as tiles
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(off, 0, 0, size, size);
    ctx.restore();
  }

  /**
   * Latency against steps: x log2(steps), y log10(latency) in whole decades (a dopri5
   * point with 100+ evaluations does not flatten the flow-map lines). Points per request,
   * a line through the mean latency at each step count per series.
   *
   * Returns the series keys drawn (for the legend).
   */
  function drawChart(canvas, hist, seriesColors, maxSteps, seriesKey) {
    var w = Math.max(200, Math.round(canvas.clientWidth || 600));
    var h = w < 420 ? 200 : 260;
    var ctx = setupCanvas(canvas, w, h);
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, w, h);
    var left = 46, right = 12, top = 12, bottom = 34;
    var pw = w - left - right, ph = h - top - bottom;

    var xMax = Math.log2(maxSteps);
    // log latency axis: a dopri5 point (100+ evaluations) must not flatten the flow-map lines
    var lats = hist.map(function (e) { return e.latencyMs; }).filter(function (v) { return v > 0; });
    var lo = lats.length ? Math.min.apply(null, lats) : 1;
    var hi = lats.length ? Math.max.apply(null, lats) : 100;
    var yMinLog = Math.floor(Math.log10(lo * 0.9));
    var yMaxLog = Math.ceil(Math.log10(hi * 1.1));
    if (yMaxLog - yMinLog < 1) yMaxLog = yMinLog + 1;
    canvas.setAttribute("data-y-scale", "log");
    canvas.setAttribute("data-y-range", Math.pow(10, yMinLog) + "," + Math.pow(10, yMaxLog));
    var X = function (s) { return left + (xMax > 0 ? Math.log2(s) / xMax : 0) * pw; };
    var Y = function (ms) {
      var v = Math.log10(Math.max(ms, Math.pow(10, yMinLog)));
      return top + ph - ((v - yMinLog) / (yMaxLog - yMinLog)) * ph;
    };

    // axes and ticks
    ctx.strokeStyle = "#999";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(left, top); ctx.lineTo(left, top + ph); ctx.lineTo(left + pw, top + ph);
    ctx.stroke();
    ctx.fillStyle = "#444";
    ctx.font = "11px system-ui, sans-serif";
    ctx.textAlign = "center";
    var minGap = 26;
    var lastX = -Infinity;
    for (var s = 1; s <= maxSteps; s *= 2) {
      var x = X(s);
      if (x - lastX < minGap && s !== 1) continue;
      lastX = x;
      ctx.fillText(String(s), x, top + ph + 14);
      ctx.strokeStyle = "#eee";
      ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + ph); ctx.stroke();
    }
    ctx.fillText("steps (log scale)", left + pw / 2, h - 4);
    ctx.textAlign = "right";
    var decades = yMaxLog - yMinLog;
    var mults = decades <= 2 ? [1, 2, 5] : [1];
    for (var e = yMinLog; e <= yMaxLog; e++) {
      mults.forEach(function (mul) {
        var v = mul * Math.pow(10, e);
        if (Math.log10(v) > yMaxLog + 1e-9) return;
        var y = Y(v);
        var label = v >= 1 ? String(Math.round(v)) : String(Number(v.toPrecision(1)));
        ctx.fillStyle = mul === 1 ? "#444" : "#888";
        ctx.fillText(label, left - 4, y + 4);
        ctx.strokeStyle = mul === 1 ? "#e4e4e4" : "#f2f2f2";
        ctx.beginPath(); ctx.moveTo(left + 1, y); ctx.lineTo(left + pw, y); ctx.stroke();
      });
    }
    ctx.fillStyle = "#444";
    ctx.save();
    ctx.translate(11, top + ph / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "center";
    ctx.fillText("latency (ms, log scale)", 0, 0);
    ctx.restore();

    if (!hist.length) {
      ctx.textAlign = "center";
      ctx.fillStyle = "#777";
      ctx.fillText("No requests yet: press Generate or Compare.", left + pw / 2, top + ph / 2);
      return [];
    }

    // per series: points, plus a line through the mean latency at each step count
    var keys = Object.keys(seriesColors);
    keys.forEach(function (key) {
      var pts = hist.filter(function (e) { return seriesKey(e) === key; });
      if (!pts.length) return;
      var color = seriesColors[key];
      var byStep = {};
      pts.forEach(function (e) { (byStep[e.steps] = byStep[e.steps] || []).push(e.latencyMs); });
      var steps = Object.keys(byStep).map(Number).sort(function (a, b) { return a - b; });
      ctx.strokeStyle = color;
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      steps.forEach(function (s, j) {
        var arr = byStep[s];
        var mean = arr.reduce(function (a, b) { return a + b; }, 0) / arr.length;
        if (j === 0) ctx.moveTo(X(s), Y(mean)); else ctx.lineTo(X(s), Y(mean));
      });
      ctx.stroke();
      ctx.fillStyle = color;
      pts.forEach(function (e) {
        ctx.beginPath();
        ctx.arc(X(e.steps), Y(e.latencyMs), 3, 0, 2 * Math.PI);
        ctx.fill();
      });
    });
    return keys;
  }

  /**
   * One image [H][W] (grey) or [H][W][3] (RGB) in data units 0..hi, drawn pixel for pixel
   * on the canvas (CSS scales it up, pixelated). Values outside 0..hi are clipped for display.
   */
  function drawImage(canvas, image, hi) {
    var h = image.length, w = h ? image[0].length : 0;
    canvas.width = w;
    canvas.height = h;
    var ctx = canvas.getContext("2d");
    var img = ctx.createImageData(w, h);
    var scale = 255 / (hi || 1);
    for (var i = 0; i < h; i++) {
      for (var j = 0; j < w; j++) {
        var v = image[i][j];
        var rgb = Array.isArray(v) ? v : [v, v, v];
        var o = 4 * (i * w + j);
        for (var k = 0; k < 3; k++) {
          // as the server's PNG grids: 0 = black, hi = white
          img.data[o + k] = Math.max(0, Math.min(255, Math.round(Number(rgb[k]) * scale)));
        }
        img.data[o + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
  }

  window.AnystepPlots = {
    drawScatter: drawScatter, drawChart: drawChart, drawImage: drawImage, DENSITY_MIN_POINTS: DENSITY_MIN_POINTS,
  };
})();
