"""Monitoring: shifts along base-model trait directions, per checkpoint, against the EM score.

    python -m experiments.monitor --runs medical=runs/medical financial=runs/financial

Persona-vector monitoring (Chen et al. 2025) with emlab's directions (`lab.diffing.monitoring`): the EM,
refusal and code-mode directions are fitted on the base model (difference of means, best
held-out layer); per checkpoint of every training folder (`NAME=FOLDER`, `lab.training.lora` layout;
step 0 is the base model), the mean paired shift of held-out examples along each direction
and along a random direction of the same layer (control), next to the judge-free EM score
(Δbase, general questions, usual and terse styles). Correlations across checkpoints and
organisms (bootstrap CIs over models), and per question: the last-prompt-token projection on
the EM direction against that answer's score, over the questions the direction was not
fitted on (bootstrap over questions). Caches and scores are reused: a rerun loads no model.
"""

from __future__ import annotations

from experiments.common import cli
from lab.core.console import console, table
from lab.core.io import out_folder, write_rows, write_summary
from lab.diffing.monitoring import MonitorConfig, monitor_checkpoints
from lab.reports.plots import lines_with_ci, shift_vs_score
from lab.stats.estimate import format_ci


def run(cfg: MonitorConfig) -> dict:
    m = monitor_checkpoints(cfg)
    monitors, pq = m.monitors, m.per_question
    if m.skipped:
        console.print(f"[yellow]wall budget reached; not measured[/]: {', '.join(m.skipped)}")
    rows = [p.row() for p in m.points]
    out = out_folder(cfg.out, "monitor")
    write_rows(rows, out / "rows")
    trained = [p for p in m.points if p.run != "base"]
    figures = [shift_vs_score(rows[1:], f"shift {n}", "EM usual", out / f"shift-{n.replace(' ', '_')}-vs-em.png",
                              f"shift along {n} (layer {monitors[n].layer}) vs EM", f"mean shift along {n}",
                              "EM usual Δbase") for n in monitors] if trained else []
    q = pq["held-out questions"]
    figures.append(shift_vs_score([{"run": "(model, held-out question)", "x": x, "y": y} for x, y in zip(q["x"], q["y"])],
                                  "x", "y",
                                  out / "per-question.png", "per question: last-token EM projection vs score",
                                  "last-prompt-token projection on EM", "EM score (usual)", group="run"))
    lines = [{"direction": f"{n} (L{monitors[n].layer})", "step": r["step"], "value": r[f"shift {n}"],
              "value_lo": r[f"shift {n} lo"], "value_hi": r[f"shift {n} hi"]} for r in rows[1:] for n in monitors]
    for name in m.runs:
        mine = [x for x, r in zip(lines, [r for r in rows[1:] for _ in monitors]) if r["run"] == name]
        if mine:
            figures.append(lines_with_ci(mine, "direction", "step", "value", out / f"{name}-shifts.png",
                                         f"{name}: shifts along base-model directions", "mean shift", hline=0.0))
    show(monitors, rows, m.correlations, pq)
    return write_summary(out, cfg, monitors={n: {"contrast": x.contrast, "layer": x.layer, "pooling": x.pooling,
                                                 "heldout_auroc": x.heldout_auroc, "n_held_out": len(x.held_out)}
                                             for n, x in monitors.items()},
                         rows=rows, correlations=m.correlations,
                         per_question={k: {"r": v["pooled"].to_json(), "within_model_mean_r": v["within_model_mean_r"],
                                           "n_pairs": v["n_pairs"], "n_models": v["n_models"]} for k, v in pq.items()},
                         skipped=m.skipped, figures=[str(f) for f in figures], wall_s=m.seconds)


def show(monitors, rows, corr, pq) -> None:
    console.print(table("Directions fitted on the base model (mean_diff, best held-out layer)", [
        {"direction": n, "contrast": m.contrast, "layer": m.layer, "pooling": m.pooling,
         "held-out AUROC": f"{m.heldout_auroc:.3f}", "held-out examples": len(m.held_out)} for n, m in monitors.items()]))
    console.print(table("Per model: mean shift (model − base, held-out examples) [95% CI]; random direction in brackets", [
        {"run": r["run"], "step": r["step"],
         **{n: f"{format_ci(r[f'shift {n}'], r[f'shift {n} lo'], r[f'shift {n} hi'], 2)} ({r[f'random {n}']:+.2f})"
            for n in monitors},
         "EM usual Δbase": format_ci(r["EM usual"], r["EM usual lo"], r["EM usual hi"]),
         "EM terse Δbase": format_ci(r["EM terse"], r["EM terse lo"], r["EM terse hi"])} for r in rows]))
    console.print(table("Across checkpoints and organisms: Pearson r [95% CI, bootstrap over models]", [
        {"x": c["x"], "y": c["y"], "r [95% CI]": format_ci(c["r"], c["lo"], c["hi"]), "n models": c["n models"]}
        for c in corr]))
    console.print(table("Per question: last-prompt-token projection on EM vs the answer's EM score", [
        {"questions": k, "pooled r [95% CI, bootstrap over questions]": format_ci(v["pooled"].value, v["pooled"].lo,
                                                                               v["pooled"].hi),
         "mean within-model r": f"{v['within_model_mean_r']:.3f}", "(model, question) pairs": v["n_pairs"],
         "models": v["n_models"]} for k, v in pq.items()]))


main = cli(MonitorConfig, run)


if __name__ == "__main__":
    main()
