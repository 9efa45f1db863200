/*
 * anystep playground API client: the HTTP contract of `anystep serve` (GET /v1/models,
 * POST /generate), the API key kept for this browser tab, and the server's JSON errors.
 * Talks only to the same origin. Plain JS, no dependencies; exposes
 * window.AnystepApi = {ApiError, loadKey, saveKey, fetchModels, generate}.
 */
(function () {
  "use strict";

  var KEY_STORAGE = "anystep.apiKey";

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

  function authHeaders(key) {
    return key ? { Authorization: "Bearer " + key } : {};
  }

  // ---------------------------------------------------------------- errors

  /** An error raised for a non-2xx response; carries the server's JSON error body. */
  function ApiError(status, body, retryAfter) {
    this.status = status;
    this.body = body;
    this.retryAfter = retryAfter;
    var msg = body && typeof body.message === "string" ? body.message : null;
    this.message = msg !== null ? msg : "HTTP " + status + " (the server sent no error message)";
    this.field = body && typeof body.field === "string" ? body.field : null;
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

  function headerNumber(resp, name) {
    var v = resp.headers.get(name);
    if (v === null) return null;
    var x = Number(v);
    return Number.isFinite(x) ? x : null;
  }

  // ---------------------------------------------------------------- requests

  /** GET /v1/models: the served models (an array). Throws ApiError on a non-2xx response. */
  async function fetchModels(key) {
    var resp = await fetch("/v1/models", { headers: authHeaders(key), cache: "no-store" });
    if (!resp.ok) await readError(resp);
    var body = await resp.json();
    return Array.isArray(body.models) ? body.models : [];
  }

  /**
   * POST /generate for `params` ({model, steps, n, seed, solver, rtol, class, guidance, source,
   * wantSource}); `m` is the model's /v1/models entry (null if unknown), `key` the API key.
   * Returns {model, kind, steps, nfe, seed, n, solver, latencyMs, roundTripMs, samples | blobUrl};
   * the caller revokes blobUrl (URL.revokeObjectURL) when the image is gone.
   * Throws ApiError on a non-2xx response.
   */
  async function generate(params, m, key) {
    var vector = m ? window.AnystepModels.isVectorModel(m) : true;
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

    var headers = Object.assign({ "Content-Type": "application/json" }, authHeaders(key));
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
      out = {
        model: resp.headers.get("X-Anystep-Model") || params.model,
        kind: m ? m.kind : null,
        steps: headerNumber(resp, "X-Anystep-Steps"),
        nfe: headerNumber(resp, "X-Anystep-NFE"),
        seed: headerNumber(resp, "X-Anystep-Seed"),
        n: params.n,
        solver: params.solver || null,
        latencyMs: headerNumber(resp, "X-Anystep-Time-Ms"),
        blobUrl: URL.createObjectURL(blob),
      };
    }
    out.roundTripMs = performance.now() - t0;
    return out;
  }

  window.AnystepApi = {
    ApiError: ApiError, loadKey: loadKey, saveKey: saveKey, fetchModels: fetchModels, generate: generate,
  };
})();
