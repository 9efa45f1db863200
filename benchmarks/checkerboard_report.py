"""Checkerboard benchmark: the Markdown report (Table 3 layout, step columns, baselines, timing)."""

from __future__ import annotations

from typing import Any

from anystep.benchmarks.checkerboard_methods import EULER_STEPS, EVAL_STEPS, MethodSpec
from anystep.benchmarks.common import NOTES_BEGIN, NOTES_END, fmt, markdown_table

__all__ = ["DEFAULT_NOTES", "render_markdown"]

METHODS_LABEL: dict[str, str] = {}

DEFAULT_NOTES = (
    "_Hand-written notes on what was tried to reach the goal go here; this block is kept "
    "when the file is regenerated._\n"
)


def render_markdown(res: dict[str, Any], specs: list[MethodSpec], notes: str | None) -> str:
    """The Markdown report (Table 3 layout, step columns, baselines, floors, bounds, timing)."""
    METHODS_LABEL.update({sp.key: sp.label for sp in specs})
    s = res["settings"]
    mets = res["methods"]
    t = res["teacher"]
    kl_si = t["dopri5"]["kl"]
    lines = [
        "# Checkerboard: the paper's 2D experiment (Sec. 4.1, Table 3, Figs. 3 and 5)",
        "",
        f"- Command: `{res['command']}`",
        f"- Machine: {res['machine_description']}",
        (f"- Date: {res['finished']}; wall time {res['timing']['total_s'] / 60:.1f} min "
         f"(training {res['timing']['train_s'] / 60:.1f} min, evaluation {res['timing']['eval_s'] / 60:.1f} min)"),
        (f"- Budget (every map, unless its row in the Methods list says otherwise: the teacher has its own "
         f"two-stage schedule, PSD 3x the steps, rows named '+N steps' continue another row for N more steps and "
         f"'PFMM, N=1, from FMM N=4 +4000' distils the longer FMM row): MLP {s['width']} wide x {s['depth']} hidden layers, "
         f"{s['steps']} Adam steps, batch {s['batch_size']}, lr {s['lr']:g} (warm-up {s['lr_warmup_steps']}, "
         f"cosine to {s['lr_min']:g}), EMA {s['ema_decay']}, grad clip {s['grad_clip']}, seed {s['seed']}, "
         f"{s['threads']} torch thread(s). Paper: 512 x 6, 5e4 steps."),
        (f"- Evaluation: {s['n_samples']:,} base points x0 ~ N(0, I) shared by all rows. "
         f"KL(rho_1 || rho_hat_1): `kl_divergence_2d` with the exact checkerboard density, "
         f"{s['kl_bins']}x{s['kl_bins']} cells on [{s['kl_range'][0]}, {s['kl_range'][1]}]^2 plus an overflow "
         f"cell. W2^2: exact OT (POT) between {s['w2_samples']:,}-point subsamples (same rows for every method). "
         f"Coupling L2: E|X^SI_01(x0) - X_01(x0)|^2 over all x0, X^SI = teacher + dopri5 "
         f"(rtol {s['rtol']:g}, {t['dopri5']['nfe']} NFE)."),
        ("- The KL and W2 estimators are biased upwards by finite samples: their floors (the same "
         "estimator on fresh exact checkerboard samples) are given below the goal table. Ratios are to the "
         "teacher's dopri5 KL on the same estimator, as the issue asks."),
        "",
        "## Table 3 (paper layout)",
        "",
        ("One step except FMM N=4 (4 steps, as in the paper). Paper numbers in brackets (the paper's own KL "
         "estimator and sample size; compare ratios). Blur: the sigma of N(0, sigma^2) noise that, added to exact "
         "board samples, gives the same KL on this estimator and sample size (squares are 2 wide)."),
        "",
    ]
    curve = res.get("blur_curve")
    if curve:
        lines[-1:-1] = ["Blur reference (same estimator, same n): " + ", ".join(
            f"sigma {sg:g}: KL {fmt(k)}" for sg, k in zip(curve["sigmas"], curve["kls"])) + ".", ""]
    rows = [["SI (dopri5)", kl_si, _blur(t["dopri5"].get("blur")), "1.00 [1.00]", "[0.020]", t["dopri5"]["w2_target"],
             "[0.026]", 0.0, "[0.0]", 0.0, "[0.000]"]]
    for sp in specs:
        if sp.kind != "flowmap" or sp.key not in mets or not sp.paper:
            continue
        k = sp.table3_steps
        m = mets[sp.key]["steps"][str(k)]
        p = sp.paper
        pr = p["kl"] / 0.020
        rows.append([
            sp.label + ("" if k == 1 else f" ({k} steps)"), m["kl"], _blur(m.get("blur")),
            f"{fmt(m['kl_ratio'], 3)} [{pr:.2f}]",
            f"[{fmt(p['kl'])}]", m["w2_target"], f"[{fmt(p['w2_target'])}]", m["w2_teacher"],
            f"[{fmt(p['w2_teacher'])}]", m["coupling_l2"], f"[{fmt(p['l2'])}]",
        ])
    lines.append(markdown_table(
        ["Method", "KL", "≈ blur", "KL / SI", "paper KL", "W2² target", "paper", "W2² teacher", "paper",
         "L2 coupling", "paper"], rows))
    lines += ["", "## Every method at K = 1, 2, 4, 8 steps", ""]
    flow = [sp for sp in specs if sp.kind == "flowmap" and sp.key in mets]
    for metric, title in (("kl", "KL(rho_1 || rho_hat_1)"), ("kl_ratio", "KL / teacher's dopri5 KL"),
                          ("w2_target", "W2² to the target"), ("w2_teacher", "W2² to the teacher's samples"),
                          ("coupling_l2", "Coupling L2 vs. the dopri5 teacher"),
                          ("outside", "Fraction of samples off the board"), ("blur", "Blur equivalent (sigma)")):
        lines += [f"### {title}", ""]
        body = []
        for sp in flow:
            body.append([sp.label] + [mets[sp.key]["steps"][str(k)][metric] for k in EVAL_STEPS])
        lines += [markdown_table(["Method"] + [f"K={k}" for k in EVAL_STEPS], body), ""]

    lines += ["## Teacher baselines (SI velocity + ODE solver)", ""]
    body = [["dopri5", t["dopri5"]["nfe"], t["dopri5"]["kl"], 1.0, t["dopri5"]["w2_target"], 0.0, 0.0,
             t["dopri5"]["outside"]]]
    for k in EULER_STEPS:
        e = t["euler"][str(k)]
        body.append([f"Euler {k}", k, e["kl"], e["kl_ratio"], e["w2_target"], e["w2_teacher"], e["coupling_l2"],
                     e["outside"]])
    lines += [markdown_table(["Solver", "NFE", "KL", "KL / dopri5", "W2² target", "W2² teacher", "L2 coupling",
                              "off board"], body), ""]

    lines += ["## Goal: one-step KL <= 1.5x and four-step KL <= 1.2x the teacher's", ""]
    g = res["goal"]
    body = []
    for sp in flow:
        r1 = mets[sp.key]["steps"]["1"]["kl_ratio"]
        r4 = mets[sp.key]["steps"]["4"]["kl_ratio"]
        body.append([sp.label, r1, "yes" if r1 is not None and r1 <= 1.5 else "no", r4,
                     "yes" if r4 is not None and r4 <= 1.2 else "no"])
    lines += [markdown_table(["Method", "KL ratio K=1", "<= 1.5", "KL ratio K=4", "<= 1.2"], body), ""]
    lines += [(f"Best one-step map: **{g['best_one_step']}** (ratio {fmt(g['best_one_step_ratio'])}); "
               f"best four-step: **{g['best_four_step']}** (ratio {fmt(g['best_four_step_ratio'])}). "
               f"Goal met: one-step {'yes' if g['one_step_met'] else 'no'}, four-step "
               f"{'yes' if g['four_step_met'] else 'no'}."), ""]
    fl = res["floors"]
    lines += [
        "Estimator floors (fresh checkerboard samples scored like a model): "
        f"KL {fmt(fl['kl'])} with {s['n_samples']:,} samples, W2² {fmt(fl['w2'])} between two "
        f"{s['w2_samples']:,}-point samples. Excess KL over the floor, ratio to the teacher's excess: "
        + ", ".join(
            f"{sp.label} K=1 {fmt(_excess_ratio(mets[sp.key]['steps']['1']['kl'], kl_si, fl['kl']))}"
            for sp in flow if sp.one_step and not sp.control
        )
        + ".",
        "",
    ]

    if res.get("bounds"):
        bs = res["bounds_setup"]
        lines += ["## Props. 3.7 and 3.8: both sides for every map", "",
                  (f"Measured: W2² to the teacher's dopri5 samples and the coupling error E|X^SI_01(x0) - X_01(x0)|² "
                   f"(what the proofs bound; >= W2²). Bounds: e^(1+2∫|C_t|dt) x ∫E|b_t(X_0t(x0)) - ∂_t X_0t(x0)|² dt "
                   f"(3.7) and e x ∫E|∂_s X_s1(I_s) + ∇X_s1(I_s) b_s(I_s)|² ds (3.8), midpoint rule with "
                   f"{bs['n_times']} nodes on {bs['n']:,} points, b = the teacher; C_t = the largest eigenvalue of "
                   f"sym(∇b_t) over samples of I_t (a lower estimate of the sup), ∫|C_t|dt = "
                   f"{fmt(bs['lipschitz_integral'])}, so e^(1+2∫|C_t|) = {fmt(bs['lmd_factor'])}."), ""]
        body = [[METHODS_LABEL.get(k, k), b["w2"], b["coupling"], b["lagrangian_defect"], b["lmd_bound"],
                 "yes" if b["lmd_holds"] else "NO", b["eulerian_defect"], b["emd_bound"],
                 "yes" if b["emd_holds"] else "NO"] for k, b in res["bounds"].items()]
        lines += [markdown_table(["Map", "W2² teacher", "coupling", "L-defect", "3.7 bound", "holds", "E-defect",
                                  "3.8 bound", "holds"], body), ""]

    if res.get("failed"):
        lines += ["## Runs that failed", ""]
        lines += [f"- `{k}`: {v}" for k, v in res["failed"].items()]
        lines.append("")

    if res.get("teacher_sizes"):
        n_sz = res["teacher_sizes"][0]["n"]
        lines += ["## Teacher network size (same steps, batch and schedule; dopri5)", "",
                  (f"Scored on the first {n_sz:,} base points (KL floor at this n: "
                   f"{fmt(res['teacher_sizes'][0]['kl_floor'])})."), ""]
        body = [[f"{r['width']} x {r['depth']}", r["params"], r["kl"], r["outside"], r["w2_target"], r["seconds"],
                 r["ms_per_step"]] for r in res["teacher_sizes"]]
        lines += [markdown_table(["MLP", "params", "KL", "off board", "W2² target", "train s", "ms/step"], body), ""]

    lines += ["## Timing (this machine; other processes shared the 2 cores)", ""]
    body = []
    for key, tr in res["training"].items():
        body.append([key, tr["objective"], tr["steps"], tr["seconds"], tr["ms_per_step"], tr["load_avg"],
                     "reused" if tr["reused"] else ("resumed" if tr["resumed_from"] else "trained")])
    lines += [markdown_table(["Run", "Objective", "Steps", "Seconds", "ms/step", "load avg (1 min)", ""], body), ""]
    ev = res["timing"]["eval_sections"]
    cached = res["timing"].get("eval_cached", 0)
    lines += ["Evaluation: " + ", ".join(f"{k} {v:.0f} s" for k, v in ev.items())
              + (f" ({cached} of the scored rows and teacher samples read from the evaluation cache in the work "
                 "directory: same weights, teacher and settings)" if cached else "") + ".", ""]

    if res.get("bundled"):
        b = res["bundled"]
        cand = METHODS_LABEL.get(g.get("bundled_key"), g.get("bundled_key"))
        if b.get("kept"):  # a better map was already bundled (checkerboard_bundle_train's): not this run's
            what = (f"{b.get('method_label') or b.get('method')}, kept: it records a lower one-step KL against the "
                    f"same teacher than this run's best one-step map trained on both time directions ({cand}); "
                    f"it comes from {b.get('from')}")
            rt = f"round trip of {cand}"
        else:
            what, rt = f"{cand} (the best one-step map trained on both time directions)", "round trip"
        lines += ["## Bundled models", "",
                  (f"- `{b['checkerboard']}`: {what}; try "
                   f"`anystep sample models/checkerboard --steps 1 -n 5000 --out cb.png`; {rt} "
                   f"E|X_10(X_01(x0)) - x0|² = {fmt(g['round_trip'].get('encode_decode'))}, "
                   f"E|X_01(X_10(x1)) - x1|² = {fmt(g['round_trip'].get('decode_encode'))} "
                   f"({g['round_trip'].get('n', 0):,} points)"),
                  f"- `{b['checkerboard-teacher']}`: the SI teacher velocity (`--solver dopri5`)", ""]

    lines += ["## Figures", ""]
    for f in res["figures"]:
        lines.append(f"- [{f}]({f})")
    lines += ["", "## Methods", ""]
    for sp in specs:
        extra = f" (teacher: {sp.teacher}" + (f", warm start: {sp.init_from}" if sp.init_from else "") + ")" \
            if sp.teacher else ""
        lines.append(f"- **{sp.label}** (`{sp.key}`, preset `{sp.preset}`"
                     + (f", objective `{sp.objective}`" if sp.objective else "") + f"): {sp.note}{extra}")
    lines += ["", "## Investigation notes", "", NOTES_BEGIN, (notes or DEFAULT_NOTES).rstrip("\n"), NOTES_END, ""]
    return "\n".join(lines)


def _blur(sigma: float | None) -> str:
    """A blur equivalent for a table cell (JSON writes inf, beyond the largest blur, as null)."""
    if sigma is None:
        return "> 0.3"
    if sigma == 0:
        return "<= floor"
    if sigma == float("inf"):
        return "> 0.3"
    return f"{sigma:.3f}"


def _excess_ratio(kl: float, kl_teacher: float, floor: float) -> float | None:
    den = kl_teacher - floor
    if den <= 0:
        return None
    return (kl - floor) / den

