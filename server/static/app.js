/*
 * anystep playground: pick a model, a step count, n and a seed; POST /generate;
 * show the samples (scatter for 2D models drawn from JSON, the server's PNG grid
 * for image models), the server-reported steps / NFE / latency, and a running
 * chart of latency against steps. "Compare" runs the same seed at 1, 2, 4, 8 steps.
 * Translation models (a data-set base, e.g. digits-restore): pick a degraded source
 * (drawn by the server from the seed) and see it restored beside it, at any steps.
 *
 * Plain JS, no dependencies, no build step. Talks only to the same origin, using
 * the HTTP API contract of `anystep serve` (GET /v1/models, POST /generate).
 * This file holds the page's state, controls and actions. The other scripts, loaded
 * before it by index.html (plain scripts, one window.Anystep* object each): plots.js
 * (drawing), api.js (HTTP client, API key), models.js (what a model allows: steps,
 * solvers, n), panels.js (result panels), history.js (latency table and chart),
 * status.js (errors, status line, reported figures), sources.js (translation sources).
 */
(function () {
  "use strict";

  var Api = window.AnystepApi, Models = window.AnystepModels, Panels = window.AnystepPanels;
  var stepsLabel = Models.stepsLabel, formatMs = Panels.formatMs;

  var state = {
    models: [],
    blobUrls: [],
    busy: false,
    nTouched: false,
  };

  function $(id) {
    return document.getElementById(id);
  }

  var el = {};
  var STEPS_HINT = "";
  // Parts made in init: the history (AnystepHistory), messages (AnystepStatus), sources (AnystepSources).
  var latencyHistory = null, ui = null, sources = null;

  function apiKey() {
    return el.apiKey.value.trim();
  }

  // ---------------------------------------------------------------- errors / status

  function clearError() { ui.clearError(); }
  function setStatus(text) { ui.setStatus(text); }
  function reportFailure(err) { ui.reportFailure(err); }

  // ---------------------------------------------------------------- models

  function currentModel() {
    return modelByName(el.model.value);
  }

  function modelByName(name) {
    for (var i = 0; i < state.models.length; i++) if (state.models[i].name === name) return state.models[i];
    return null;
  }

  function fillSelect(select, values, labels) {
    var keep = select.value;
    select.textContent = "";
    values.forEach(function (v, i) {
      var o = document.createElement("option");
      o.value = v;
      o.textContent = labels ? labels[i] : v;
      select.appendChild(o);
    });
    if (values.indexOf(keep) >= 0) select.value = keep;
  }

  async function loadModels() {
    clearError();
    el.model.disabled = true;
    setButtons(false);
    setStatus("Loading models…");
    try {
      state.models = await Api.fetchModels(apiKey());
    } catch (err) {
      state.models = [];
      fillSelect(el.model, [""], ["(no models loaded)"]);
      reportFailure(err);
      document.body.setAttribute("data-state", "error");
      return;
    }
    if (!state.models.length) {
      fillSelect(el.model, [""], ["(the server serves no models)"]);
      setStatus("The server serves no models.");
      document.body.setAttribute("data-state", "idle");
      return;
    }
    fillSelect(
      el.model,
      state.models.map(function (m) { return m.name; }),
      state.models.map(function (m) { return m.name + " (" + m.kind + ", " + m.dataset + ")"; })
    );
    el.model.disabled = false;
    onModelChange();
    setButtons(true);
    setStatus(state.models.length + (state.models.length === 1 ? " model" : " models") + " available.");
    document.body.setAttribute("data-state", "ready");
  }

  /** The step count the slider (an index into stepChoices) points at. */
  function currentSteps() {
    var choices = Models.stepChoices(currentModel());
    var i = Math.min(choices.length - 1, Math.max(0, parseInt(el.steps.value, 10) || 0));
    return choices[i];
  }

  function setSteps(steps) {
    var choices = Models.stepChoices(currentModel());
    var best = 0;
    choices.forEach(function (c, i) { if (c <= steps) best = i; });
    el.steps.value = String(best);
    updateStepsOutput();
  }

  /** dopri5 picks its own steps: the steps control and the 1·2·4·8 comparison do not apply. */
  function adaptiveSolver() {
    var m = currentModel();
    return !!m && m.kind === "velocity" && el.solver.value === "dopri5";
  }

  function updateDefaultN() {
    var m = currentModel();
    if (m && !state.nTouched) el.n.value = String(Models.defaultN(m, el.solver.value));
  }

  function onModelChange() {
    var m = currentModel();
    if (!m) return;
    var keep = currentStepsOr(1);
    var choices = Models.stepChoices(m);
    var maxSteps = choices[choices.length - 1];
    el.steps.min = "0";
    el.steps.max = String(choices.length - 1);
    el.steps.setAttribute("data-max-steps", String(maxSteps));
    setSteps(Math.min(keep, maxSteps));
    var maxN = Math.max(1, parseInt(m.max_n, 10) || 1);
    el.n.max = String(maxN);

    // class-conditional models: a class picker ("any" = drawn from the seed) and a guidance slider
    var classes = parseInt(m.num_classes, 10) || 0;
    el.classField.hidden = classes === 0;
    el.guidanceField.hidden = !(classes > 0 && m.guidance_input);
    if (classes > 0) {
      var prevClass = el.cls.value;
      var values = [""], labels = ["any (from the seed)"];
      for (var c = 0; c < classes; c++) { values.push(String(c)); labels.push(String(c)); }
      fillSelect(el.cls, values, labels);
      if (values.indexOf(prevClass) >= 0) el.cls.value = prevClass;
      var range = m.guidance_range || [1, 1];
      el.guidance.min = String(range[0]);
      el.guidance.max = String(range[1]);
      el.guidanceValue.textContent = el.guidance.value;
    }

    // translation models: a source picker instead of n (n is the number of sources: one)
    el.sourceField.hidden = !m.translation;
    el.nField.hidden = !!m.translation;
    if (m.translation) loadSources();

    var velocity = m.kind === "velocity";
    el.solverField.hidden = !velocity;
    if (velocity) {
      var prev = el.solver.value;
      fillSelect(el.solver, Models.solversOf(m));
      if (!prev && m.default_solver && Models.solversOf(m).indexOf(m.default_solver) >= 0) el.solver.value = m.default_solver;
    }
    updateRtolVisibility();
    updateStepsEnabled();
    updateDefaultN();

    // ODE baseline: velocity models for the same data set, offered beside a flow map.
    var baselines = Models.baselinesFor(state.models, m);
    el.baselineField.hidden = velocity || !baselines.length;
    if (baselines.length) {
      fillSelect(
        el.baseline,
        [""].concat(baselines.map(function (b) { return b.name; })),
        ["none"].concat(baselines.map(function (b) { return b.name; }))
      );
      onBaselineChange();
    } else {
      fillSelect(el.baseline, [""], ["none"]);
    }

    var shape = Array.isArray(m.data_shape) ? "[" + m.data_shape.join(", ") + "]" : "?";
    el.modelInfo.textContent =
      m.kind + (m.translation ? " translation map " + m.base + " → " + m.dataset : " model of " + m.dataset) +
      " · sample shape " + shape +
      " · engine " + (m.engine || "?") +
      (Array.isArray(m.supported_steps) && m.supported_steps.length ? " · steps " + choices.join(", ")
        : " · up to " + maxSteps + " steps") + ", n ≤ " + maxN +
      (m.max_compute ? ", n × NFE ≤ " + m.max_compute : "") + (m.ready === false ? " · warming up" : "");
  }

  function onBaselineChange() {
    var b = modelByName(el.baseline.value);
    el.baselineSolver.hidden = !b;
    if (b) {
      var prev = el.baselineSolver.value;
      fillSelect(el.baselineSolver, Models.solversOf(b));
      if (!prev && b.default_solver && Models.solversOf(b).indexOf(b.default_solver) >= 0) el.baselineSolver.value = b.default_solver;
    }
  }

  function updateRtolVisibility() {
    el.rtolField.hidden = el.solverField.hidden || el.solver.value !== "dopri5";
  }

  function currentStepsOr(fallback) {
    var s = el.stepsValue && Number(el.stepsValue.getAttribute("data-steps"));
    return Number.isFinite(s) && s >= 1 ? s : fallback;
  }

  function updateStepsOutput() {
    var s = currentSteps();
    var adaptive = adaptiveSolver();
    el.stepsValue.textContent = adaptive ? "auto" : String(s);
    el.stepsValue.setAttribute("data-steps", String(s));
    el.steps.setAttribute("aria-valuetext", adaptive ? "chosen by dopri5" : s + (s === 1 ? " step" : " steps"));
  }

  function updateStepsEnabled() {
    var adaptive = adaptiveSolver();
    el.steps.disabled = adaptive;
    el.stepsHint.textContent = adaptive
      ? "dopri5 is adaptive: it chooses its own steps (set the tolerance instead), so the steps control and Compare do not apply."
      : STEPS_HINT;
    updateStepsOutput();
    setButtons(true);
  }

  function setButtons(enabled) {
    var on = enabled && !state.busy && !!currentModel();
    el.generate.disabled = !on;
    el.compare.disabled = !on || adaptiveSolver();
    el.compare.title = adaptiveSolver() ? "dopri5 chooses its own steps: nothing to compare across 1, 2, 4, 8" : "";
  }

  // ---------------------------------------------------------------- requests

  /** A number input's value as a number, the raw text if it is not one, or undefined if empty. */
  function numberOrRaw(input) {
    var raw = input.value.trim();
    if (raw === "") {
      // type=number reports "" for text it cannot parse; tell the server nothing then.
      return input.validity && input.validity.badInput ? "invalid" : undefined;
    }
    var v = Number(raw);
    return Number.isFinite(v) ? v : raw;
  }

  /** POST /generate (AnystepApi.generate); the PNG's object URL is released with the results. */
  async function generate(params) {
    var r = await Api.generate(params, modelByName(params.model), apiKey());
    if (r.blobUrl) state.blobUrls.push(r.blobUrl);
    return r;
  }

  function readParams() {
    var m = currentModel();
    var p = {
      model: m.name,
      steps: currentSteps(),
      n: numberOrRaw(el.n),
      seed: numberOrRaw(el.seed),
    };
    if (m.kind === "velocity") {
      p.solver = el.solver.value;
      if (p.solver === "dopri5") p.rtol = numberOrRaw(el.rtol);
    }
    if (m.num_classes) {
      if (el.cls.value !== "") p.class = parseInt(el.cls.value, 10);
      if (m.guidance_input) p.guidance = parseFloat(el.guidance.value);
    }
    if (m.translation) {
      delete p.n;
      var src = sources.picked();
      if (src) p.source = [src];
      else p.wantSource = true;  // no picker yet: the server draws the source from the seed
    }
    return p;
  }

  // ---------------------------------------------------------------- panels

  function releaseBlobs() {
    state.blobUrls.forEach(function (u) { URL.revokeObjectURL(u); });
    state.blobUrls = [];
  }

  function clearResults() {
    releaseBlobs();
    el.result.textContent = "";
    el.result.classList.remove("compare");
  }

  function makePanel(title) {
    return Panels.makePanel(el.result, title);
  }

  function fillPanel(panel, r) {
    Panels.fillPanel(panel, r, Models.unitsHi(modelByName(r.model)));
  }

  // ---------------------------------------------------------------- translation sources

  function loadSources() {
    return sources.load(currentModel(), numberOrRaw(el.seed));
  }

  // ---------------------------------------------------------------- latency chart

  function recordHistory(r) {
    latencyHistory.record(r);
  }

  function drawChart() {
    latencyHistory.draw();
  }

  // ---------------------------------------------------------------- actions

  function begin(text) {
    state.busy = true;
    setButtons(false);
    clearError();
    el.resultSection.setAttribute("aria-busy", "true");
    document.body.setAttribute("data-state", "busy");
    ui.clearStats(); // never show the previous request's figures beside this one's result or error
    setStatus(text);
    revealResult();
  }

  /** On a narrow screen the result is below the controls: bring it into view. */
  function revealResult() {
    var rect = el.resultSection.getBoundingClientRect();
    var vh = window.innerHeight || document.documentElement.clientHeight;
    if (rect.top < 0 || rect.top > vh * 0.6) {
      var reduce = window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches;
      el.resultSection.scrollIntoView({ behavior: reduce ? "auto" : "smooth", block: "start" });
    }
  }

  function end(ok, text) {
    state.busy = false;
    setButtons(true);
    el.resultSection.removeAttribute("aria-busy");
    if (ok) {
      document.body.setAttribute("data-state", "done");
      setStatus(text);
    } else {
      ui.clearStats();
    }
    revealResult();
  }

  async function onGenerate(ev) {
    if (ev) ev.preventDefault();
    if (state.busy || !currentModel()) return;
    var params = readParams();
    begin("Generating…");
    clearResults();
    var panel = makePanel(params.model + " · " + stepsLabel(params.steps));
    var baseline = el.baselineField.hidden ? null : modelByName(el.baseline.value);
    var basePanel = baseline ? makePanel(baseline.name + " (ODE baseline) · " + stepsLabel(params.steps)) : null;
    try {
      var r = await generate(params);
      fillPanel(panel, r);
      panel.title.textContent = r.model + " · " + stepsLabel(r.steps) + (r.solver ? " · " + r.solver : "");
      ui.showStats(r);
      recordHistory(r);
      var msg = "Done: " + stepsLabel(r.steps) + ", NFE " + r.nfe + ", " + formatMs(r.latencyMs) +
        (r.chosenByBudget ? " (steps chosen by the latency budget)" : "");
      if (basePanel) {
        var br = await generate({
          model: baseline.name, steps: params.steps, n: params.n, seed: r.seed,
          solver: el.baselineSolver.value, rtol: params.rtol,
        });
        fillPanel(basePanel, br);
        basePanel.title.textContent = br.model + " (ODE " + br.solver + ") · " + stepsLabel(br.steps);
        recordHistory(br);
        msg += "; ODE baseline: NFE " + br.nfe + ", " + formatMs(br.latencyMs);
      }
      end(true, msg + ".");
    } catch (err) {
      if (panel.fig.getAttribute("data-status") !== "done") Panels.failPanel(panel);
      if (basePanel) Panels.failPanel(basePanel);
      end(false);
      reportFailure(err);
    }
  }

  async function onCompare() {
    if (state.busy || !currentModel() || adaptiveSolver()) return;
    var params = readParams();
    var m = currentModel();
    var steps = Models.compareSteps(m);
    begin("Comparing " + steps.join(", ") + " steps…");
    clearResults();
    el.result.classList.add("compare");
    var panels = steps.map(function (s) { return makePanel(stepsLabel(s)); });
    var seed = params.seed;
    var last = null;
    for (var i = 0; i < steps.length; i++) {
      try {
        var r = await generate(Object.assign({}, params, { steps: steps[i], seed: seed }));
        // Without a seed, the server picks one for the first request; reuse it for the rest.
        if (seed === undefined) seed = r.seed;
        fillPanel(panels[i], r);
        panels[i].title.textContent = stepsLabel(r.steps) + (r.solver ? " · " + r.solver : "");
        recordHistory(r);
        ui.showStats(r);
        last = r;
      } catch (err) {
        for (var j = i; j < panels.length; j++) Panels.failPanel(panels[j]);
        end(false);
        reportFailure(err);
        return;
      }
    }
    var note = Models.compareNote(m, steps);
    end(true, "Compared " + steps.join(", ") + " steps with seed " + (last ? last.seed : seed) + note + ".");
  }

  function onRandomSeed() {
    var buf = new Uint32Array(1);
    if (window.crypto && window.crypto.getRandomValues) window.crypto.getRandomValues(buf);
    else buf[0] = Math.floor(Math.random() * 4294967296);
    el.seed.value = String(buf[0] % 2147483648);
    el.seed.removeAttribute("aria-invalid");
  }

  function onKeyCommit() {
    Api.saveKey(apiKey());
    loadModels();
  }

  // ---------------------------------------------------------------- init

  function init() {
    el = {
      apiKey: $("api-key"), reloadModels: $("reload-models"), model: $("model"), modelInfo: $("model-info"),
      steps: $("steps"), stepsValue: $("steps-value"), stepsHint: $("steps-hint"), n: $("n"), seed: $("seed"), randomSeed: $("random-seed"),
      solverField: $("solver-field"), solver: $("solver"), rtolField: $("rtol-field"), rtol: $("rtol"),
      classField: $("class-field"), cls: $("class"), guidanceField: $("guidance-field"), guidance: $("guidance"),
      guidanceValue: $("guidance-value"), nField: $("n-field"),
      sourceField: $("source-field"), sources: $("sources"), sourceHint: $("source-hint"),
      baselineField: $("baseline-field"), baseline: $("baseline"), baselineSolver: $("baseline-solver"),
      form: $("generate-form"), generate: $("generate"), compare: $("compare"),
      error: $("error"), status: $("status"), result: $("result"), resultSection: $("result-section"),
      reportedSteps: $("reported-steps"), nfe: $("nfe"), latency: $("latency"), reportedSeed: $("reported-seed"),
      chart: $("chart"), legend: $("chart-legend"), historyBody: document.querySelector("#history tbody"),
    };
    latencyHistory = window.AnystepHistory.create(el.chart, el.legend, el.historyBody, function () {
      var m = currentModel();
      return m ? parseInt(m.max_steps, 10) || 1 : 0;
    });
    ui = window.AnystepStatus.create(el);
    sources = window.AnystepSources.create(el.sources, el.sourceHint, generate, reportFailure);
    el.apiKey.value = Api.loadKey();
    el.apiKey.addEventListener("change", onKeyCommit);
    el.apiKey.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter") {
        ev.preventDefault(); // Enter in the key field saves the key instead of generating
        onKeyCommit();
      }
    });
    el.reloadModels.addEventListener("click", onKeyCommit);
    el.model.addEventListener("change", function () { clearError(); onModelChange(); drawChart(); });
    el.guidance.addEventListener("input", function () { el.guidanceValue.textContent = el.guidance.value; });
    STEPS_HINT = el.stepsHint.textContent;
    el.steps.addEventListener("input", updateStepsOutput);
    el.n.addEventListener("input", function () { state.nTouched = true; });
    el.solver.addEventListener("change", function () {
      updateRtolVisibility();
      updateStepsEnabled();
      updateDefaultN();
    });
    el.baseline.addEventListener("change", onBaselineChange);
    el.randomSeed.addEventListener("click", function () { onRandomSeed(); loadSources(); });
    el.seed.addEventListener("change", loadSources);
    el.form.addEventListener("submit", onGenerate);
    el.compare.addEventListener("click", onCompare);

    var resizeTimer = null;
    window.addEventListener("resize", function () {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(function () {
        drawChart();
        el.result.querySelectorAll(".panel").forEach(function (fig) {
          var c = fig.querySelector("canvas.scatter");
          if (c && fig._samples) window.AnystepPlots.drawScatter(c, fig._samples);
        });
      }, 120);
    });
    updateStepsOutput();
    drawChart();
    document.body.setAttribute("data-state", "loading");
    loadModels();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
