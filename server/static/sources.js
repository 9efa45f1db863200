/*
 * anystep playground source picker of translation models (a data-set base, e.g.
 * digits-restore): the degraded sources the server draws from the seed, shown as a
 * radio group (click, or arrow keys) from which one is restored. Plain JS; exposes
 * window.AnystepSources = {create}.
 */
(function () {
  "use strict";

  // Translation models: how many degraded sources the picker offers.
  var SOURCE_CHOICES = 8;

  /**
   * `box`: the radio group element, `hint`: its hint line; `generate(params)` posts /generate,
   * `reportFailure(err)` shows an error. Returns {load(m, seed), picked()}.
   */
  function create(box, hint, generate, reportFailure) {
    var sources = [], pick = 0, loadedKey = "";

    function pickSource(i) {
      pick = i;
      box.querySelectorAll(".source-choice").forEach(function (b, k) {
        b.setAttribute("aria-checked", k === i ? "true" : "false");
        b.tabIndex = k === i ? 0 : -1;
      });
    }

    /** Ask the server for SOURCE_CHOICES degraded sources of `seed` (its JSON echoes them). */
    async function load(m, seed) {
      if (!m || !m.translation) return;
      var key = m.name + "|" + String(seed);
      if (key === loadedKey && sources.length) return;
      loadedKey = key;
      hint.textContent = "loading sources…";
      try {
        var r = await generate({ model: m.name, steps: 1, n: SOURCE_CHOICES, seed: seed, wantSource: true });
        if (loadedKey !== key) return;  // the model or seed changed meanwhile
        sources = r.source || [];
        var hi = window.AnystepModels.unitsHi(m);
        box.textContent = "";
        sources.forEach(function (src, i) {
          var b = document.createElement("button");
          b.type = "button";
          b.className = "source-choice";
          b.setAttribute("role", "radio");
          b.setAttribute("data-testid", "source-choice");
          b.setAttribute("aria-label", "degraded source " + (i + 1) + " (seed " + (r.seed + i) + ")");
          b.appendChild(window.AnystepPanels.imageCanvas(src, hi, "degraded source " + (i + 1)));
          b.addEventListener("click", function () { pickSource(i); });
          box.appendChild(b);
        });
        pickSource(Math.min(pick, Math.max(0, sources.length - 1)));
        hint.textContent = "Sources of seeds " + r.seed + "–" + (r.seed + sources.length - 1) +
          " from " + m.base + "; change the seed for others.";
      } catch (err) {
        loadedKey = "";
        sources = [];
        box.textContent = "";
        hint.textContent = "";
        reportFailure(err);
      }
    }

    /** The chosen source (data units), or null before any is loaded. */
    function picked() {
      return sources.length ? sources[pick] : null;
    }

    box.addEventListener("keydown", function (ev) {  // radio group: arrows move the choice
      var n = sources.length;
      if (!n || (ev.key !== "ArrowRight" && ev.key !== "ArrowLeft")) return;
      ev.preventDefault();
      pickSource((pick + (ev.key === "ArrowRight" ? 1 : n - 1)) % n);
      box.querySelectorAll(".source-choice")[pick].focus();
    });

    return { load: load, picked: picked };
  }

  window.AnystepSources = { create: create };
})();
