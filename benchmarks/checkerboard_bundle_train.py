"""Checkerboard: train the candidate for ``models/checkerboard`` with the one-step lever (issue 13).

The bundled map must be trained on both time directions (``/encode`` runs ``X_{1,0}``). The
lever of ``benchmarks/results/checkerboard_lever.md`` -- random Fourier features of ``x``
(64, sigma 1) and half of each batch on the end-point maps (``start_frac = 0.5``) -- is applied
to the benchmark's ``lmd_both`` row (warm start ``v_st = b_s`` from the benchmark's teacher
``runs/checkerboard/si``). In both-directions mode the start rows alternate ``s = 0`` (the maps
``X_{0,t}`` that make up ``/generate``'s one-step map) and ``s = 1`` (the maps ``X_{1,t}`` that
make up ``/encode``'s ``X_{1,0}``); both halves are kept, since the bundle must invert.

Three stages, each a resumable run directory under ``runs/cb_bundle`` (a finished one is reused):

* ``ff_both_start``: 1000 steps, the benchmark's shared budget;
* ``ff_both_start_xl``: continues it for ``XL_STEPS`` steps (lr 5e-4 cosine, checkpoint every 500);
* ``ff_both_start_xxl``: continues that for 12,000 steps (lr 3e-4 cosine), the schedule of the
  lever study's longer continuations; the bundled map.

Usage (from the repository root; ``train`` through a training slot, one thread)::

    python -m anystep.benchmarks.checkerboard_bundle_train train    # the three stages, resumable
    python -m anystep.benchmarks.checkerboard_bundle_train report   # score it beside the bundle
    python -m anystep.benchmarks.checkerboard_bundle_train bundle   # report, then models/checkerboard
    python -m anystep.benchmarks.checkerboard_bundle_train list     # the stages, 'done' when finished

``report`` scores the last stage, the first one and the map in ``models/checkerboard`` with the
benchmark's estimator (:func:`~anystep.benchmarks.checkerboard_eval.score_samples` on its 100,000
shared base points, the teacher's dopri5 samples from its evaluation cache) at K = 1, 2, 4, 8,
and the round trip ``/encode`` then ``/generate`` (``X_{0,1}(X_{1,0}(x1))`` on 100,000 exact board
samples, and the other way round, at 1 and 4 steps each way); it writes
``benchmarks/results/checkerboard_bundle.{md,json}``. ``bundle`` replaces ``models/checkerboard``
only when the new map's one-step KL beats the bundled one's (``--force`` skips that check).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["STAGES", "Stage", "main", "round_trip_errors", "stage_config"]

from anystep.benchmarks.checkerboard_variant_runs import (
    BENCH_DIR,
    Subcommand,
    run_finished,
    scoring_setup,
    train_runs,
    usage_error,
    variant_cli,
    variant_config,
)

BUNDLE_RUNS = Path("runs/cb_bundle")
RECORD = "train_record.json"  # the training record of a finished stage (``run_finished``)
RESULTS = Path("benchmarks/results")
MODELS = Path("models")
FINAL = "ff_both_start_xxl"
REFERENCE = "lmd_both_xl"  # the benchmark's best both-directions row, bundled before the lever map
MODULE = "anystep.benchmarks.checkerboard_bundle_train"
ROUND_TRIP_STEPS = (1, 4)
XL_STEPS = 8000
DEFAULT_STAGES = ["ff_both_start", "ff_both_start_xl", "ff_both_start_xxl"]

_LABEL = "LMD, both directions, Fourier features of x (64, sigma 1)"
LEVER = {"model.backbone.x_features": 64, "model.backbone.x_feature_scale": 1.0,
         "objective_hparams.start_frac": 0.5}


@dataclass(frozen=True)
class Stage:
    """One training stage: the benchmark's ``lmd_both`` row with TrainConfig overrides.

    Attributes:
        name: run directory name under ``runs/cb_bundle``.
        sets: ``key=value`` overrides (dotted TrainConfig keys; values JSON).
        init_from: the stage whose weights this one continues (else the teacher warm start).
        label: the whole schedule up to this stage, in words (the bundled map's ``method_label``).
    """

    name: str
    sets: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None
    label: str = ""


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("ff_both_start", {**LEVER, "ckpt_every": 500}, label=f"{_LABEL}, start_frac 0.5, 1000 steps"),
        Stage("ff_both_start_xl", {**LEVER, "max_steps": XL_STEPS, "lr": 5e-4, "ckpt_every": 500},
              init_from="ff_both_start", label=f"{_LABEL}, start_frac 0.5, 1000+{XL_STEPS} steps"),
        # optional stage (not in the default ``train``): start_frac 0.5 leaves the mid-interval
        # maps (X_{0,1/2}, X_{1/2,1}: two steps) short of rows; a quarter of the batch at the ends instead
        Stage("ff_both_start_xl_ft", {**LEVER, "objective_hparams.start_frac": 0.25, "max_steps": 3000,
                                      "lr": 2.5e-4, "ckpt_every": 500}, init_from="ff_both_start_xl",
              label=f"{_LABEL}, start_frac 0.5 then 0.25, 1000+{XL_STEPS}+3000 steps"),
        # the forward lever map kept improving with 12000-step continuations at lr 3e-4
        # (checkerboard_lever: 1.77x at 19,000 steps, 1.49x at 31,000, 1.38x at 43,000)
        Stage("ff_both_start_xxl", {**LEVER, "max_steps": 12000, "lr": 3e-4, "ckpt_every": 500},
              init_from="ff_both_start_xl", label=f"{_LABEL}, start_frac 0.5, 1000+{XL_STEPS}+12000 steps"),
    )
}


def stage_config(stage: Stage):
    """The TrainConfig of ``stage`` (built like the benchmark's and the lever's rows)."""
    return variant_config("lmd_both", stage.sets, f"checkerboard_bundle_train {stage.name}",
                          init_from=None if stage.init_from is None else BUNDLE_RUNS / stage.init_from)


def train(names: list[str]) -> None:
    """Train (or reuse / resume) ``names`` one after the other on one thread."""
    train_runs(names, lambda name: stage_config(STAGES[name]), BUNDLE_RUNS, RECORD)


def round_trip_errors(model, x0, x1, steps: int) -> dict[str, float]:
    """Per-sample round-trip errors of a map trained on both directions, at ``steps`` each way.

    ``encode_generate``: ``|X_{0,1}(X_{1,0}(x1)) - x1|`` on data ``x1`` (``/encode`` then
    ``/generate`` from the returned ``z``); ``generate_encode``: ``|X_{1,0}(X_{0,1}(x0)) - x0|``
    on base points ``x0``. Euclidean norms per sample; mean, 99th percentile and max of each,
    and the mean squared error (``E|.|^2``, the benchmark's ``round_trip``).
    """
    import torch

    from anystep.core.samplers import sample_flowmap

    out: dict[str, float] = {"steps": steps, "n": len(x1)}
    with torch.no_grad():
        for name, x, first_reverse in (("encode_generate", x1, True), ("generate_encode", x0, False)):
            y = sample_flowmap(model, x, steps=steps, reverse=first_reverse).x
            back = sample_flowmap(model, y, steps=steps, reverse=not first_reverse).x
            err = (back - x).pow(2).sum(1)
            d = err.sqrt()
            out[f"{name}_mean"] = float(d.mean())
            out[f"{name}_p99"] = float(d.quantile(0.99))
            out[f"{name}_max"] = float(d.max())
            out[f"{name}_mse"] = float(err.mean())
    return out


def _context():
    """The benchmark's evaluation context (``checkerboard_variant_runs.scoring_setup``) plus exact board samples."""
    import torch

    setup = scoring_setup()
    return setup.ctx, setup.cache, setup.teacher, torch.from_numpy(setup.data).float(), setup.settings


def _score_dir(model_dir: Path, ctx, x0) -> dict[int, Any]:
    import torch

    from anystep.benchmarks.checkerboard_eval import sample_map, score_samples
    from anystep.benchmarks.checkerboard_methods import EVAL_STEPS
    from anystep.core.modeldir import load_model_dir

    model = load_model_dir(model_dir).model.eval()
    out = {}
    for k in EVAL_STEPS:
        with torch.no_grad():
            out[k] = score_samples(sample_map(model, x0, k), ctx, nfe=k)
    return out


def report() -> dict[str, Any]:
    """Score the stages and the bundled map; write ``checkerboard_bundle.{md,json}``."""
    import time

    import torch

    from anystep.benchmarks.checkerboard_bundle import rel_path
    from anystep.benchmarks.checkerboard_cache import metrics_to_json
    from anystep.benchmarks.checkerboard_eval import round_trip
    from anystep.benchmarks.checkerboard_methods import EVAL_STEPS
    from anystep.benchmarks.common import command_line, load_average, machine_info, write_results
    from anystep.core.modeldir import load_model_dir, model_dir_sha256
    from anystep.training.trainer import read_log

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ctx, cache, m_si, data, settings = _context()
    rows = []
    cands = [("models/checkerboard", MODELS / "checkerboard"),
             (f"{BENCH_DIR.as_posix()}/{REFERENCE} (the benchmark's bundled map before this one)", BENCH_DIR / REFERENCE)]
    cands += [(f"runs/cb_bundle/{name}", BUNDLE_RUNS / name) for name in STAGES]
    for where, d in cands:
        if not (d / "model.safetensors").is_file():
            continue
        lm = load_model_dir(d)
        prov = lm.config.provenance
        label = f"{where} ({prov.get('method', prov.get('preset'))})" if where.startswith("models") else where
        key = cache.key("row", d)  # weights, teacher and evaluation settings
        saved = BUNDLE_RUNS / "scores" / f"{key}.json"
        hit = json.loads(saved.read_text()) if saved.is_file() else None
        if hit is None or hit.get("round_trip_steps") != list(ROUND_TRIP_STEPS):
            model = lm.model.eval()
            hit = {"metrics": metrics_to_json(_score_dir(d, ctx, ctx.x0)), "round_trip_steps": list(ROUND_TRIP_STEPS),
                   "round_trip": [round_trip_errors(model, ctx.x0, data, k) for k in ROUND_TRIP_STEPS],
                   "round_trip_benchmark": round_trip(model, ctx.x0, data.numpy())}
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(hit))
        log_rows = [r for r in read_log(d) if "loss" in r] if (d / "train_log.jsonl").is_file() else []
        rows.append({"label": label, "dir": rel_path(d), "sha256": model_dir_sha256(d),
                     "time_region": lm.config.time_region, "steps": prov.get("steps"),
                     "train_seconds": float(log_rows[-1]["time"]) if log_rows else None,
                     "metrics": hit["metrics"], "round_trip": hit["round_trip"],
                     "round_trip_benchmark": hit["round_trip_benchmark"]})
        m, rt = hit["metrics"], hit["round_trip"][0]
        print(f"[{label}] KL " + ", ".join(f"K={k}: {m[str(k)]['kl']:.4f}" for k in EVAL_STEPS)
              + f"; encode->generate mean {rt['encode_generate_mean']:.4f} max {rt['encode_generate_max']:.3f}",
              flush=True)
    res = {"machine": machine_info().describe(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "command": command_line(["report"], module=MODULE), "teacher_kl": m_si.kl,
           "teacher_blur": ctx.blur.equivalent(m_si.kl), "settings": settings, "stages": STAGES,
           "rows": rows, "eval_seconds": time.perf_counter() - t0, "load_avg": load_average()}
    write_results(RESULTS, "checkerboard_bundle", res, _markdown(res))
    return res


def _schedule(name: str) -> str:
    """Stage ``name``'s whole schedule in words, from the first stage (its ``sets``, else the shared budget).

    E.g. ``"1000 steps (lr 1e-3 cosine), then 8000 more (lr 5e-4 cosine)"``.
    """
    from anystep.benchmarks.checkerboard_methods import Settings

    chain: list[Stage] = []
    while name is not None:
        chain.append(STAGES[name])
        name = STAGES[name].init_from
    budget = Settings()
    parts = []
    for i, st in enumerate(reversed(chain)):
        mantissa, exponent = f"{st.sets.get('lr', budget.lr):e}".split("e")
        lr = f"{float(mantissa):g}e{int(exponent)}"
        parts.append(f"{st.sets.get('max_steps', budget.steps)} {'steps' if i == 0 else 'more'} (lr {lr} cosine)")
    return ", then ".join(parts)


def _markdown(res: dict[str, Any]) -> str:
    from anystep.benchmarks.checkerboard_methods import EVAL_STEPS
    from anystep.benchmarks.common import existing_notes, fmt, markdown_table, notes_section

    t = res["teacher_kl"]
    lines = [
        "# Checkerboard: the bundled map, trained on both directions with the one-step lever (issue 13)",
        "",
        (f"- Command: `python -m {MODULE} train` (one thread, nice 19, through a training slot), then "
         f"`python -m {MODULE} bundle` (runs `report`, then copies the map to `models/checkerboard` if it wins)"),
        f"- Machine: {res['machine']}",
        f"- Date: {res['date']}; scoring took {fmt(res['eval_seconds'])} s (load {fmt((res['load_avg'] or [None])[0])})",
        ("- Map: the benchmark's `lmd_both` row (LMD on the whole square 0 <= s, t <= 1, MLP 256 x 4, warm start "
         "v_st = b_s from `runs/checkerboard/si`, batch 512, EMA 0.999) with 64 random Fourier features of x "
         "(sigma 1) and `start_frac 0.5` (a quarter of each batch at s = 0, a quarter at s = 1: the maps X_0t "
         f"behind /generate and X_1t behind /encode); {_schedule(FINAL)}."),
        (f"- Scored like `checkerboard.md`: 100,000 shared base points, `score_samples`; teacher dopri5 KL "
         f"**{fmt(t, 4)}**; ratios are KL / {fmt(t, 3)}."),
        "",
        "## KL(rho_1 || rho_hat_1) at K steps (ratio to the teacher)",
        "",
    ]
    rows = [[r["label"], r["steps"], fmt(r["train_seconds"])]
            + [f"{fmt(r['metrics'][str(k)]['kl'])} ({fmt(r['metrics'][str(k)]['kl'] / t)}x)" for k in EVAL_STEPS]
            + [fmt(r["metrics"]["1"]["coupling_l2"])] for r in res["rows"]]
    lines += [markdown_table(["Map", "steps (this stage)", "train s"] + [f"K={k}" for k in EVAL_STEPS] + ["coupling K=1"], rows),
              "", "## Round trip: /encode then /generate, and /generate then /encode", "",
              ("Per-sample Euclidean error on 100,000 points (exact board samples x1 for encode -> generate, "
               "the shared base points x0 for generate -> encode), K steps each way; the board's squares are "
               "1 wide, E|x0|^2 = 2."), ""]
    rt_rows = []
    for r in res["rows"]:
        for rt in r["round_trip"]:
            rt_rows.append([r["label"], rt["steps"], fmt(rt["encode_generate_mean"]), fmt(rt["encode_generate_p99"]),
                            fmt(rt["encode_generate_max"]), fmt(rt["encode_generate_mse"]),
                            fmt(rt["generate_encode_mean"]), fmt(rt["generate_encode_max"]),
                            fmt(rt["generate_encode_mse"])])
    lines += [markdown_table(["Map", "K", "enc->gen mean", "p99", "max", "E|.|^2", "gen->enc mean", "max", "E|.|^2"],
                             rt_rows), ""]
    lines += notes_section(existing_notes(RESULTS / "checkerboard_bundle.md"), placeholder="")
    return "\n".join(lines)


def bundle(stage: str = FINAL, force: bool = False) -> int:
    """Score (``report``), then copy ``stage`` to ``models/checkerboard`` when it beats the bundle."""
    from anystep.benchmarks.checkerboard_bundle import TEACHER_BUNDLE, bundle_model
    from anystep.benchmarks.common import command_line

    if not (BUNDLE_RUNS / stage / "model.safetensors").is_file():
        print(f"error: {BUNDLE_RUNS / stage} is not trained; run python -m {MODULE} train {stage} first", flush=True)
        return 2
    res = report()
    rows = {r["dir"]: r for r in res["rows"]}
    new, old = rows[(BUNDLE_RUNS / stage).as_posix()], rows.get((MODELS / "checkerboard").as_posix())
    kl_new = new["metrics"]["1"]["kl"]
    if old is not None and not force and old["metrics"]["1"]["kl"] <= kl_new:
        print(f"[bundle] kept models/checkerboard: one-step KL {old['metrics']['1']['kl']:.4f} <= {kl_new:.4f}")
        return 0
    scores = {f"K={k}": {"kl": m["kl"], "kl_ratio": m["kl"] / res["teacher_kl"], "blur": m["blur"]}
              for k, m in ((int(k), m) for k, m in new["metrics"].items())}
    scores["round_trip"] = new["round_trip_benchmark"]
    scores["round_trip_per_sample"] = new["round_trip"]
    out = bundle_model(BUNDLE_RUNS / stage, MODELS / "checkerboard",
                       {"role": "best one-step checkerboard flow map (trained on both time directions, so that "
                                "/encode inverts it)",
                        "method": stage, "method_label": STAGES[stage].label,
                        "benchmark_scores": scores},
                       command_line(["bundle", "--stage", stage], module=MODULE),
                       benchmark=f"{MODULE} (results: benchmarks/results/checkerboard_bundle.md)",
                       bundled_teacher=TEACHER_BUNDLE)
    print(f"[bundle] {BUNDLE_RUNS / stage} -> {out}: one-step KL {kl_new:.4f}"
          + (f" (was {old['metrics']['1']['kl']:.4f})" if old else ""), flush=True)
    return 0


def _finished(name: str) -> bool:
    return run_finished(BUNDLE_RUNS / name, RECORD)


def _bundle_args(p) -> None:
    p.add_argument("--stage", default=FINAL, help=f"the stage to bundle (default {FINAL})")
    p.add_argument("--force", action="store_true", help="replace models/checkerboard even if it scores better")


def _bundle_cmd(args) -> int:
    if args.stage not in STAGES:
        return usage_error(f"python -m {MODULE} bundle", f"unknown stage {args.stage}; known: {', '.join(STAGES)}")
    return bundle(args.stage, force=args.force)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``train [NAME ...]`` (default: the three stages, in order), ``bundle [--stage S] [--force]``,
    ``report``, ``list`` (``checkerboard_variant_runs.variant_cli``)."""
    return variant_cli(
        argv, module=MODULE, kind="stage",
        description="Train the candidate for models/checkerboard (LMD both directions + Fourier features of x "
                    "+ start_frac 0.5) into runs/cb_bundle (resumable).",
        variants=STAGES, train=train, report=report, finished=_finished, run_dir=BUNDLE_RUNS,
        default_train=DEFAULT_STAGES,
        list_line=lambda s, done: f"{s.name:20s} {'done' if done else '    '}  {s.label}",
        report_help="score the stages beside models/checkerboard, write benchmarks/results/checkerboard_bundle.*",
        extra=[Subcommand("bundle", "report, then replace models/checkerboard if the new map's one-step KL wins",
                          _bundle_cmd, configure=_bundle_args)])


if __name__ == "__main__":
    raise SystemExit(main())
