/*
 * anystep playground messages: the error box (the server's message shown as worded, the
 * offending control marked aria-invalid), the status line, and the server-reported figures
 * (steps, NFE, latency, seed) of the last request. Plain JS; exposes
 * window.AnystepStatus = {create}.
 */
(function () {
  "use strict";

  // Controls that a server error's `field` can point at.
  var FIELD_CONTROLS = {
    model: "model", steps: "steps", n: "n", seed: "seed", solver: "solver", rtol: "rtol", class: "class", guidance: "guidance",
    source: "sources",
  };

  function $(id) {
    return document.getElementById(id);
  }

  /**
   * `el`: the page's elements (error, status, reportedSteps, nfe, latency, reportedSeed).
   * Returns {clearError, showError, setStatus, reportFailure, clearStats, showStats}.
   */
  function create(el) {
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

    /** A failed request: an AnystepApi.ApiError (the server's JSON error) or a network error. */
    function reportFailure(err) {
      if (err instanceof window.AnystepApi.ApiError) {
        showError(err.message, err.field);
        if (err.retryAfter) setStatus("Server busy: retry after " + err.retryAfter + " s.");
        else if (err.status === 401) setStatus("The server needs a valid API key: enter it above.");
        else setStatus("");
      } else {
        showError("Could not reach the server: " + (err && err.message ? err.message : String(err)));
        setStatus("");
      }
    }

    function clearStats() {
      [el.reportedSteps, el.nfe, el.latency, el.reportedSeed].forEach(function (d) {
        d.textContent = "–";
        d.removeAttribute("title");
      });
    }

    function showStats(r) {
      var formatMs = window.AnystepPanels.formatMs;
      el.reportedSteps.textContent = String(r.steps);
      el.nfe.textContent = String(r.nfe);
      el.latency.textContent = formatMs(r.latencyMs);
      el.latency.title = "server-reported time; round trip " + formatMs(r.roundTripMs);
      el.reportedSeed.textContent = String(r.seed);
    }

    return {
      clearError: clearError, showError: showError, setStatus: setStatus, reportFailure: reportFailure,
      clearStats: clearStats, showStats: showStats,
    };
  }

  window.AnystepStatus = { create: create };
})();
