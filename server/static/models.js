/*
 * anystep playground model rules: what a model's /v1/models entry allows (step counts,
 * solvers, default n, the 1·2·4·8 comparison, display units). Pure functions of that
 * entry, no DOM. Plain JS, no dependencies; exposes window.AnystepModels.
 */
(function () {
  "use strict";

  var COMPARE_STEPS = [1, 2, 4, 8];
  // The steps control offers the step counts people use (1, 2, 4, 8, ...), not 1..max linearly.
  var STEP_CHOICES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];
  // 2D models: draw thousands of points as a density (a few hundred do not show the shape).
  var VECTOR_DEFAULT_N = 4096;
  var DEFAULT_SOLVERS = ["euler", "heun", "rk4", "dopri5"];
  var SOLVER_STAGES = { euler: 1, heun: 2, rk4: 4 };

  /** 2D (or other vector) data is fetched as JSON and drawn here; images come as PNG. */
  function isVectorModel(m) {
    return Array.isArray(m.data_shape) && m.data_shape.length === 1;
  }

  function solversOf(m) {
    return Array.isArray(m.solvers) && m.solvers.length ? m.solvers : DEFAULT_SOLVERS;
  }

  function maxStepsOf(m) {
    return Math.max(1, parseInt(m && m.max_steps, 10) || 1);
  }

  /** The model's supported_steps (shortcut / consistency / PD maps) up to max_steps; null: any. */
  function supportedSteps(m) {
    if (!m || !Array.isArray(m.supported_steps) || !m.supported_steps.length) return null;
    var maxSteps = maxStepsOf(m);
    var sup = m.supported_steps.filter(function (s) { return s <= maxSteps; });
    return sup.length ? sup : null;
  }

  /** Step counts offered for a model: powers of two up to its max_steps (and max_steps itself),
   *  or only its supported_steps (shortcut / consistency / PD maps, from /v1/models). */
  function stepChoices(m) {
    var sup = supportedSteps(m);
    if (sup) return sup;
    var maxSteps = maxStepsOf(m);
    var out = STEP_CHOICES.filter(function (s) { return s <= maxSteps; });
    if (out[out.length - 1] !== maxSteps) out.push(maxSteps);
    return out;
  }

  /** The step counts Compare runs: those of 1, 2, 4, 8 the model serves, else its first four choices. */
  function compareSteps(m) {
    var maxSteps = parseInt(m.max_steps, 10) || 1;
    var steps = COMPARE_STEPS.filter(function (s) { return s <= maxSteps; });
    if (Array.isArray(m.supported_steps)) {  // a model trained for some step counts only
      steps = steps.filter(function (s) { return m.supported_steps.indexOf(s) >= 0; });
      if (!steps.length) steps = stepChoices(m).slice(0, 4);
    }
    return steps;
  }

  /** "1 step", "2 and 4 steps", "1, 2 and 4 steps". */
  function stepsList(steps) {
    var last = steps[steps.length - 1];
    var head = steps.length > 1 ? steps.slice(0, -1).join(", ") + " and " : "";
    return head + last + (steps.length === 1 && last === 1 ? " step" : " steps");
  }

  /** Why Compare ran `steps` and not 1, 2, 4, 8 ("" when it ran those): which step counts the model serves. */
  function compareNote(m, steps) {
    if (steps.join(",") === COMPARE_STEPS.join(",")) return "";
    var maxSteps = parseInt(m.max_steps, 10) || 1;
    var sup = Array.isArray(m.supported_steps) && m.supported_steps.length ? m.supported_steps : null;
    if (!sup) return " (this model serves at most " + maxSteps + " steps)";
    var served = supportedSteps(m) || [];
    if (served.length === sup.length) return " (this model supports only " + stepsList(sup) + ")";
    return " (this model supports " + stepsList(sup) + "; this server serves at most " + maxSteps + " steps)";
  }

  /**
   * Default n: 16 images, or for 2D data as many points (up to VECTOR_DEFAULT_N) as the
   * model's compute budget n x NFE allows at 8 steps (Compare's largest), dopri5 being
   * charged its max_nfe per sample. `solver` is the selected one ("" before the selector is filled).
   */
  function defaultN(m, solver) {
    var maxN = Math.max(1, parseInt(m.max_n, 10) || 1);
    if (!isVectorModel(m)) return Math.min(maxN, 16);
    var nfe = 8;
    if (m.kind === "velocity") {
      solver = solver || m.default_solver || "euler";
      nfe = solver === "dopri5" ? parseInt(m.max_nfe, 10) || 256 : 8 * (SOLVER_STAGES[solver] || 4);
    }
    var n = Math.min(maxN, VECTOR_DEFAULT_N);
    var budget = parseInt(m.max_compute, 10);
    if (budget > 0) n = Math.min(n, Math.max(1, Math.floor(budget / nfe)));
    return n;
  }

  /** The largest data value of an image model's units (for display), e.g. 16 for digits grey levels. */
  function unitsHi(m) {
    var units = m ? m.source_units || m.units : "";
    if (units === "digits-grey-levels") return 16;
    if (units === "uint8-levels") return 255;
    return 1;
  }

  /** Velocity models of `models` for the same data set and shape as `m`: its ODE baselines. */
  function baselinesFor(models, m) {
    return models.filter(function (b) {
      return b.kind === "velocity" && b.dataset === m.dataset && b.name !== m.name &&
        JSON.stringify(b.data_shape) === JSON.stringify(m.data_shape);
    });
  }

  function stepsLabel(s) {
    return s + (s === 1 ? " step" : " steps");
  }

  window.AnystepModels = {
    COMPARE_STEPS: COMPARE_STEPS, isVectorModel: isVectorModel, solversOf: solversOf,
    stepChoices: stepChoices, compareSteps: compareSteps, compareNote: compareNote, defaultN: defaultN,
    unitsHi: unitsHi, baselinesFor: baselinesFor, stepsLabel: stepsLabel,
  };
})();
