/*
 * anystep playground result panels: one figure per request (the server's PNG grid, a
 * scatter / density of 2D samples, or translation sources beside their restorations)
 * with its server-reported latency and NFE. Plain JS; drawing is in plots.js. Exposes
 * window.AnystepPanels = {makePanel, fillPanel, failPanel, imageCanvas, formatMs}.
 */
(function () {
  "use strict";

  function formatMs(ms) {
    if (ms === null || ms === undefined || !Number.isFinite(ms)) return "?";
    return (ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms.toFixed(2)) + " ms";
  }

  /** An empty ("waiting…") panel appended to `container`; returns its parts. */
  function makePanel(container, title) {
    var fig = document.createElement("figure");
    fig.className = "panel";
    fig.setAttribute("data-testid", "panel");
    fig.setAttribute("data-status", "pending");
    var media = document.createElement("div");
    media.className = "panel-media";
    var placeholder = document.createElement("p");
    placeholder.className = "placeholder";
    placeholder.textContent = "waiting…";
    media.appendChild(placeholder);
    var cap = document.createElement("figcaption");
    var t = document.createElement("span");
    t.className = "panel-title";
    t.textContent = title;
    var lat = document.createElement("span");
    lat.className = "panel-latency";
    lat.setAttribute("data-testid", "panel-latency");
    var nfe = document.createElement("span");
    nfe.className = "panel-nfe";
    nfe.setAttribute("data-testid", "panel-nfe");
    cap.appendChild(t);
    cap.appendChild(lat);
    cap.appendChild(nfe);
    fig.appendChild(media);
    fig.appendChild(cap);
    container.appendChild(fig);
    return { fig: fig, media: media, title: t, latency: lat, nfe: nfe };
  }

  /** Show a /generate result `r` (AnystepApi.generate's) in `panel`; `hi`: the top of its data units. */
  function fillPanel(panel, r, hi) {
    panel.media.textContent = "";
    var what = r.model + " at " + r.steps + (r.steps === 1 ? " step" : " steps") +
      (r.solver ? " (" + r.solver + ")" : "") + ", seed " + r.seed;
    if (r.source) {
      drawPairs(panel.media, r, what, hi);
    } else if (r.blobUrl) {
      var img = document.createElement("img");
      img.className = "samples-img";
      img.setAttribute("data-testid", "samples-img");
      img.src = r.blobUrl;
      img.alt = "Image grid of " + r.n + " samples from " + what;
      panel.media.appendChild(img);
    } else {
      var c = document.createElement("canvas");
      c.className = "scatter";
      c.setAttribute("data-testid", "scatter");
      c.setAttribute("role", "img");
      var count = Array.isArray(r.samples) ? r.samples.length : 0;
      c.setAttribute("aria-label", "Scatter plot of " + count + " samples from " + what);
      panel.media.appendChild(c);
      panel.fig._samples = r.samples;
      window.AnystepPlots.drawScatter(c, r.samples);
    }
    panel.latency.textContent = formatMs(r.latencyMs);
    panel.latency.title = "server time; round trip " + formatMs(r.roundTripMs);
    panel.nfe.textContent = "NFE " + r.nfe;
    panel.fig.setAttribute("data-status", "done");
    panel.fig.setAttribute("data-steps", String(r.steps));
    panel.fig.setAttribute("data-latency-ms", String(r.latencyMs));
  }

  function failPanel(panel) {
    panel.media.textContent = "";
    var p = document.createElement("p");
    p.className = "placeholder";
    p.textContent = "failed (see the error above)";
    panel.media.appendChild(p);
    panel.fig.setAttribute("data-status", "error");
  }

  function imageCanvas(image, hi, label) {
    var c = document.createElement("canvas");
    c.setAttribute("role", "img");
    c.setAttribute("aria-label", label);
    window.AnystepPlots.drawImage(c, image, hi);
    return c;
  }

  /** Translation: each source beside its restoration. */
  function drawPairs(media, r, what, hi) {
    var box = document.createElement("div");
    box.className = "pairs";
    box.setAttribute("data-testid", "pairs");
    r.source.forEach(function (src, i) {
      [["source", src], ["restored", r.samples[i]]].forEach(function (pair) {
        var f = document.createElement("figure");
        f.className = "pair";
        f.setAttribute("data-testid", "pair-" + pair[0]);
        f.appendChild(imageCanvas(pair[1], hi, pair[0] + " " + (i + 1) + " of " + what));
        var cap = document.createElement("figcaption");
        cap.textContent = pair[0];
        f.appendChild(cap);
        box.appendChild(f);
      });
    });
    media.appendChild(box);
  }

  window.AnystepPanels = {
    makePanel: makePanel, fillPanel: fillPanel, failPanel: failPanel, imageCanvas: imageCanvas, formatMs: formatMs,
  };
})();
