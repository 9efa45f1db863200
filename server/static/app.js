/*
 * anystep playground: pick a model, a step count, n and a seed; POST /generate;
 * show the samples (scatter for 2D models drawn from JSON, the server's PNG grid
 * for image models), the server-reported steps / NFE / latency, and a running
 * chart of latency against steps. "Compare" runs the same seed at 1, 2, 4, 8 steps.
 * Translation models (a data-set base, e.g. digits-restore): pick a degraded source
 * (drawn by the server from the seed) and see it restored beside it, at any steps.
 *
 * Plain JS, no dependencies, no build step. Talks only to the same origin, using
 * the HTTP API contract of `anystep serve` (GET /v1/models, POST /generate). The
 * drawing (scatter / density, latency chart) is in plots.js.
 */
(function () {
  "use strict";

  var KEY_STORAGE = "anystep.apiKey";
  var COMPARE_STEPS = [1, 2, 4, 8];
  // The steps control offers the step counts people use (1, 2, 4, 8, ...), not 1..max linearly.
  var STEP_CHOICES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];
  // 2D models: draw thousands of points as a density (a few hundred do not show the shape).
  var VECTOR_DEFAULT_N = 4096;
  // Translation models: how many degraded sources the picker offers.
  var SOURCE_CHOICES = 8;
  var DEFAULT_SOLVERS = ["euler", "heun", "rk4", "dopri5"];
  // Okabe-Ito palette: distinguishable with common colour-vision deficiencies.
  var PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"];
  // Controls that a server error's `field` can point at.
  var FIELD_CONTROLS = {
    model: "model", steps: "steps", n: "n", seed: "seed", solver: "solver", rtol: "rtol", class: "class", guidance: "guidance",
    source: "sources",
  };

  var state = {
    models: [],
    history: [],
    seriesColors: {},
    blobUrls: [],
    busy: false,
    nTouched: false,
    sources: [],
    sourcePick: 0,
    sourcesKey: "",
  };

  function $(id) {
    return document.getElementById(id);
  }

  var el = {};
  var STEPS_HINT = "";

  // ---------------------------------------------------------------- API key

  function storage() {
    try {
      return window.sessionStorage;
    } catch (e) {
      return null; // storage disabled: the key then lives only in the input field
    }
  }

  function loadKey() {
    var s = storage();
    return (s && s.getItem(KEY_STORAGE)) || "";
  }

  function saveKey(key) {
    var s = storage();
    if (!s) return;
    if (key) s.setItem(KEY_STORAGE, key);
    else s.removeItem(KEY_STORAGE);
  }

  function authHeaders() {
    var key = el.apiKey.value.trim();
    return key ? { Authorization: "Bearer " + key } : {};
  }

  // ---------------------------------------------------------------- errors / status

  function clearError() {
    el.error.hidden = true;
    el.error.textContent = "";
    Object.keys(FIELD_CONTROLS).forEach(function (f) {
      var c = $(FIELD_CONTROLS[f]);
      if (c) {
        c.removeAttribute("aria-invalid");
        c.removeAttribute("aria-errormessage");
      }
    });
  }

  /** Show an error. `message` is displayed exactly as given (the server's wording). */
  function showError(message, field) {
    el.error.textContent = message;
    el.error.hidden = false;
    document.body.setAttribute("data-state", "error");
    var id = field && FIELD_CONTROLS[field];
    var c = id && $(id);
    if (c) {
      c.setAttribute("aria-invalid", "true");
      c.setAttribute("aria-errormessage", "error");
    }
  }

  function setStatus(text) {
    el.status.textContent = text;
  }

  /** An error raised for a non-2xx response; carries the server's JSON error body. */
  function ApiError(status, body, retryAfter) {
    this.status = status;
    this.body = body;
    this.retryAfter = retryAfter;
    var msg = body && typeof body.message === "string" ? body.message : null;
    this.message = msg !== null ? msg : "HTTP " + status + " (the server sent no error message)";
    this.field = body && typeof body.field === "string" ? body.field : null;
  }

  function reportFailure(err) {
    if (err instanceof ApiError) {
      showError(err.message, err.field);
      if (err.retryAfter) setStatus("Server busy: retry after " + err.retryAfter + " s.");
      else if (err.status === 401) setStatus("The server needs a valid API key: enter it above.");
      else setStatus("");
    } else {
      showError("Could not reach the server: " + (err && err.message ? err.message : String(err)));
      setStatus("");
    }
  }

  async function readError(resp) {
    var body = null;
    try {
      body = await resp.json();
    } catch (e) {
      body = null;
    }
    throw new ApiError(resp.status, body, resp.headers.get("Retry-After"));
  }

  // ---------------------------------------------------------------- models

  function currentModel() {
    var name = el.model.value;
    for (var i = 0; i < state.models.length; i++) if (state.models[i].name === name) return state.models[i];
    return null;
  }

  function modelByName(name) {
    for (var i = 0; i < state.models.length; i++) if (state.models[i].name === name) return state.models[i];
    return null;
  }

  /** 2D (or other vector) data is fetched as JSON and drawn here; images come as PNG. */
  function isVectorModel(m) {
    return Array.isArray(m.data_shape) && m.data_shape.length === 1;
  }

  function solversOf(m) {
    return Array.isArray(m.solvers) && m.solvers.length ? m.solvers : DEFAULT_SOLVERS;
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
      var resp = await fetch("/v1/models", { headers: authHeaders(), cache: "no-store" });
      if (!resp.ok) await readError(resp);
      var body = await resp.json();
      state.models = Array.isArray(body.models) ? body.models : [];
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

  /** Step counts offered for a model: powers of two up to its max_steps (and max_steps itself),
   *  or only its supported_steps (shortcut / consistency / PD maps, from /v1/models). */
  function stepChoices(m) {
    var maxSteps = Math.max(1, parseInt(m && m.max_steps, 10) || 1);
    if (m && Array.isArray(m.supported_steps) && m.supported_steps.length) {
      var sup = m.supported_steps.filter(function (s) { return s <= maxSteps; });
      if (sup.length) return sup;
    }
    var out = STEP_CHOICES.filter(function (s) { return s <= maxSteps; });
    if (out[out.length - 1] !== maxSteps) out.push(maxSteps);
    return out;
  }

  /** The step count the slider (an index into stepChoices) points at. */
  function currentSteps() {
    var choices = stepChoices(currentModel());
    var i = Math.min(choices.length - 1, Math.max(0, parseInt(el.steps.value, 10) || 0));
    return choices[i];
  }

  function setSteps(steps) {
    var choices = stepChoices(currentModel());
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

  var SOLVER_STAGES = { euler: 1, heun: 2, rk4: 4 };

  /**
   * Default n: 16 images, or for 2D data as many points (up to VECTOR_DEFAULT_N) as the
   * model's compute budget n x NFE allows at 8 steps (Compare's largest), dopri5 being
   * charged its max_nfe per sample.
   */
  function defaultN(m) {
    var maxN = Math.max(1, parseInt(m.max_n, 10) || 1);
    if (!isVectorModel(m)) return Math.min(maxN, 16);
    var nfe = 8;
    if (m.kind === "velocity") {
      var solver = el.solver.value || m.default_solver || "euler";
      nfe = solver === "dopri5" ? parseInt(m.max_nfe, 10) || 256 : 8 * (SOLVER_STAGES[solver] || 4);
    }
    var n = Math.min(maxN, VECTOR_DEFAULT_N);
    var budget = parseInt(m.max_compute, 10);
    if (budget > 0) n = Math.min(n, Math.max(1, Math.floor(budget / nfe)));
    return n;
  }

  function updateDefaultN() {
    var m = currentModel();
    if (m && !state.nTouched) el.n.value = String(defaultN(m));
  }

  function onModelChange() {
    var m = currentModel();
    if (!m) return;
    var keep = currentStepsOr(1);
    var choices = stepChoices(m);
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
      fillSelect(el.solver, solversOf(m));
      if (!prev && m.default_solver && solversOf(m).indexOf(m.default_solver) >= 0) el.solver.value = m.default_solver;
    }
    updateRtolVisibility();
    updateStepsEnabled();
    updateDefaultN();

    // ODE baseline: velocity models for the same data set, offered beside a flow map.
    var baselines = state.models.filter(function (b) {
      return b.kind === "velocity" && b.dataset === m.dataset && b.name !== m.name &&
        JSON.stringify(b.data_shape) === JSON.stringify(m.data_shape);
    });
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
      " · engine " + (m.engine || "?") + " · up to " + maxSteps + " steps, n ≤ " + maxN +
      (m.max_compute ? ", n × NFE ≤ " + m.max_compute : "") + (m.ready === false ? " · warming up" : "");
  }

  function onBaselineChange() {
    var b = modelByName(el.baseline.value);
    el.baselineSolver.hidden = !b;
    if (b) {
      var prev = el.baselineSolver.value;
      fillSelect(el.baselineSolver, solversOf(b));
      if (!prev && b.default_solver && solversOf(b).indexOf(b.default_solver) >= 0) el.baselineSolver.value = b.default_solver;
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

  function formatMs(ms) {
    if (ms === null || ms === undefined || !Number.isFinite(ms)) return "?";
    return (ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms.toFixed(2)) + " ms";
  }

  function headerNumber(resp, name) {
    var v = resp.headers.get(name);
    if (v === null) return null;
    var x = Number(v);
    return Number.isFinite(x) ? x : null;
  }

  /**
   * POST /generate. Returns {model, kind, steps, nfe, seed, n, solver, latencyMs,
   * roundTripMs, samples | blobUrl}. Throws ApiError on a non-2xx response.
   */
  async function generate(params) {
    var m = modelByName(params.model);
    var vector = m ? isVectorModel(m) : true;
    var asJson = vector || !!params.source || !!params.wantSource;  // sources come back in JSON only
    var body = { model: params.model, format: asJson ? "json" : "png" };
    // dopri5 is adaptive: sending steps with it is a conflict the server rejects
    if (params.solver !== "dopri5") body.steps = params.steps;
    if (params.n !== undefined) body.n = params.n;
    if (params.seed !== undefined) body.seed = params.seed;
    if (params.solver) body.solver = params.solver;
    if (params.rtol !== undefined && params.solver === "dopri5") body.rtol = params.rtol;
    if (params.class !== undefined && m && m.num_classes) body.class = params.class;
    if (params.guidance !== undefined && m && m.guidance_input) body.guidance = params.guidance;
    if (params.source !== undefined) {  // translation: the sources are the request; n is their number
      body.source = params.source;
      delete body.n;
    }

    var headers = Object.assign({ "Content-Type": "application/json" }, authHeaders());
    var t0 = performance.now();
    var resp = await fetch("/generate", { method: "POST", headers: headers, body: JSON.stringify(body) });
    if (!resp.ok) await readError(resp);
    var out;
    if (asJson) {
      var j = await resp.json();
      out = {
        model: j.model, kind: j.kind, steps: j.steps, nfe: j.nfe, seed: j.seed, n: j.n,
        solver: j.solver || null, shape: j.shape, samples: j.samples, source: j.source || null,
        latencyMs: j.timing_ms ? Number(j.timing_ms.total) : null,
        chosenByBudget: !!j.chosen_by_budget,
      };
    } else {
      var blob = await resp.blob();
      var url = URL.createObjectURL(blob);
      state.blobUrls.push(url);
      out = {
        model: resp.headers.get("X-Anystep-Model") || params.model,
        kind: m ? m.kind : null,
        steps: headerNumber(resp, "X-Anystep-Steps"),
        nfe: headerNumber(resp, "X-Anystep-NFE"),
        seed: headerNumber(resp, "X-Anystep-Seed"),
        n: params.n,
        solver: params.solver || null,
        latencyMs: headerNumber(resp, "X-Anystep-Time-Ms"),
        blobUrl: url,
      };
    }
    out.roundTripMs = performance.now() - t0;
    return out;
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
      if (state.sources.length) p.source = [state.sources[state.sourcePick]];
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
    el.result.appendChild(fig);
    return { fig: fig, media: media, title: t, latency: lat, nfe: nfe };
  }

  function fillPanel(panel, r) {
    panel.media.textContent = "";
    var what = r.model + " at " + r.steps + (r.steps === 1 ? " step" : " steps") +
      (r.solver ? " (" + r.solver + ")" : "") + ", seed " + r.seed;
    if (r.source) {
      drawPairs(panel.media, r, what);
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

  /** The largest data value of an image model's units (for display), e.g. 16 for digits grey levels. */
  function unitsHi(m) {
    var units = m ? m.source_units || m.units : "";
    if (units === "digits-grey-levels") return 16;
    if (units === "uint8-levels") return 255;
    return 1;
  }

  function imageCanvas(image, hi, label) {
    var c = document.createElement("canvas");
    c.setAttribute("role", "img");
    c.setAttribute("aria-label", label);
    window.AnystepPlots.drawImage(c, image, hi);
    return c;
  }

  /** Translation: each source beside its restoration. */
  function drawPairs(media, r, what) {
    var hi = unitsHi(modelByName(r.model));
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

  function pickSource(i) {
    state.sourcePick = i;
    el.sources.querySelectorAll(".source-choice").forEach(function (b, k) {
      b.setAttribute("aria-checked", k === i ? "true" : "false");
      b.tabIndex = k === i ? 0 : -1;
    });
  }

  /** Ask the server for SOURCE_CHOICES degraded sources of the current seed (its JSON echoes them). */
  async function loadSources() {
    var m = currentModel();
    if (!m || !m.translation) return;
    var seed = numberOrRaw(el.seed);
    var key = m.name + "|" + String(seed);
    if (key === state.sourcesKey && state.sources.length) return;
    state.sourcesKey = key;
    el.sourceHint.textContent = "loading sources…";
    try {
      var r = await generate({ model: m.name, steps: 1, n: SOURCE_CHOICES, seed: seed, wantSource: true });
      if (state.sourcesKey !== key) return;  // the model or seed changed meanwhile
      state.sources = r.source || [];
      var hi = unitsHi(m);
      el.sources.textContent = "";
      state.sources.forEach(function (src, i) {
        var b = document.createElement("button");
        b.type = "button";
        b.className = "source-choice";
        b.setAttribute("role", "radio");
        b.setAttribute("data-testid", "source-choice");
        b.setAttribute("aria-label", "degraded source " + (i + 1) + " (seed " + (r.seed + i) + ")");
        b.appendChild(imageCanvas(src, hi, "degraded source " + (i + 1)));
        b.addEventListener("click", function () { pickSource(i); });
        el.sources.appendChild(b);
      });
      pickSource(Math.min(state.sourcePick, Math.max(0, state.sources.length - 1)));
      el.sourceHint.textContent = "Sources of seeds " + r.seed + "–" + (r.seed + state.sources.length - 1) +
        " from " + m.base + "; change the seed for others.";
    } catch (err) {
      state.sourcesKey = "";
      state.sources = [];
      el.sources.textContent = "";
      el.sourceHint.textContent = "";
      reportFailure(err);
    }
  }

  function failPanel(panel) {
    panel.media.textContent = "";
    var p = document.createElement("p");
    p.className = "placeholder";
    p.textContent = "failed (see the error above)";
    panel.media.appendChild(p);
    panel.fig.setAttribute("data-status", "error");
  }

  function clearStats() {
    [el.reportedSteps, el.nfe, el.latency, el.reportedSeed].forEach(function (d) {
      d.textContent = "–";
      d.removeAttribute("title");
    });
  }

  function showStats(r) {
    el.reportedSteps.textContent = String(r.steps);
    el.nfe.textContent = String(r.nfe);
    el.latency.textContent = formatMs(r.latencyMs);
    el.latency.title = "server-reported time; round trip " + formatMs(r.roundTripMs);
    el.reportedSeed.textContent = String(r.seed);
  }

  // ---------------------------------------------------------------- latency chart

  function seriesKey(r) {
    return r.model + (r.solver ? " / " + r.solver : "");
  }

  function colorFor(key) {
    if (!(key in state.seriesColors)) {
      var n = Object.keys(state.seriesColors).length;
      state.seriesColors[key] = PALETTE[n % PALETTE.length];
    }
    return state.seriesColors[key];
  }

  function recordHistory(r) {
    if (!Number.isFinite(r.latencyMs) || !Number.isFinite(r.steps)) return;
    var entry = { model: r.model, solver: r.solver, steps: r.steps, nfe: r.nfe, n: r.n, latencyMs: r.latencyMs };
    state.history.push(entry);
    colorFor(seriesKey(entry));
    var tr = document.createElement("tr");
    [state.history.length, entry.model, entry.solver || "–", entry.steps, entry.nfe, entry.n,
      entry.latencyMs.toFixed(2)].forEach(function (v) {
      var td = document.createElement("td");
      td.textContent = String(v);
      tr.appendChild(td);
    });
    el.historyBody.appendChild(tr);
    drawChart();
  }

  function drawChart() {
    var maxSteps = 8;
    state.history.forEach(function (e) { maxSteps = Math.max(maxSteps, e.steps); });
    var m = currentModel();
    if (m) maxSteps = Math.max(maxSteps, parseInt(m.max_steps, 10) || 1);
    renderLegend(window.AnystepPlots.drawChart(el.chart, state.history, state.seriesColors, maxSteps, seriesKey));
  }

  function renderLegend(keys) {
    el.legend.textContent = "";
    keys.forEach(function (key) {
      var item = document.createElement("span");
      item.className = "legend-item";
      var sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = state.seriesColors[key];
      item.appendChild(sw);
      item.appendChild(document.createTextNode(key));
      el.legend.appendChild(item);
    });
  }

  // ---------------------------------------------------------------- actions

  function begin(text) {
    state.busy = true;
    setButtons(false);
    clearError();
    el.resultSection.setAttribute("aria-busy", "true");
    document.body.setAttribute("data-state", "busy");
    clearStats(); // never show the previous request's figures beside this one's result or error
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
      clearStats();
    }
    revealResult();
  }

  function stepsLabel(s) {
    return s + (s === 1 ? " step" : " steps");
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
      showStats(r);
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
      if (panel.fig.getAttribute("data-status") !== "done") failPanel(panel);
      if (basePanel) failPanel(basePanel);
      end(false);
      reportFailure(err);
    }
  }

  async function onCompare() {
    if (state.busy || !currentModel() || adaptiveSolver()) return;
    var params = readParams();
    var m = currentModel();
    var maxSteps = parseInt(m.max_steps, 10) || 1;
    var steps = COMPARE_STEPS.filter(function (s) { return s <= maxSteps; });
    if (Array.isArray(m.supported_steps)) {  // a model trained for some step counts only
      steps = steps.filter(function (s) { return m.supported_steps.indexOf(s) >= 0; });
      if (!steps.length) steps = stepChoices(m).slice(0, 4);
    }
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
        showStats(r);
        last = r;
      } catch (err) {
        for (var j = i; j < panels.length; j++) failPanel(panels[j]);
        end(false);
        reportFailure(err);
        return;
      }
    }
    var note = steps.length < COMPARE_STEPS.length ? " (this model serves at most " + maxSteps + " steps)" : "";
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
    saveKey(el.apiKey.value.trim());
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
    el.apiKey.value = loadKey();
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
    el.sources.addEventListener("keydown", function (ev) {  // radio group: arrows move the choice
      var n = state.sources.length;
      if (!n || (ev.key !== "ArrowRight" && ev.key !== "ArrowLeft")) return;
      ev.preventDefault();
      pickSource((state.sourcePick + (ev.key === "ArrowRight" ? 1 : n - 1)) % n);
      el.sources.querySelectorAll(".source-choice")[state.sourcePick].focus();
    });
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
