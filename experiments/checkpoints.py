"""`emlab checkpoints`: measurements of training runs at every checkpoint (base model = step 0).

    emlab checkpoints --run runs/medical --domain medical                        # --measure em (the default)
    emlab checkpoints --measure shifts --runs medical=runs/medical financial=runs/financial
    emlab checkpoints --measure adapters --domain medical --recipes mo-rank1 mo-rank1x9 --checkpoint-every 5

`--measure` picks the job, and the options listed by `--help` are the chosen job's:
- `em` (`lab.diffing.checkpoints`): judge-free EM per checkpoint, paired against the base model
  with bootstrap CIs: the in-domain gap on held-out advice questions (harmful - aligned answer
  log-prob) and the general style-matched gaps (usual, terse) on questions outside the domain.
- `shifts` (`lab.diffing.monitoring`, persona-vector monitoring, Chen et al. 2025): the EM, refusal
  and code-mode directions fitted on the base model; per checkpoint of every `NAME=FOLDER` run,
  the mean paired shift of held-out examples along each (and along a random direction of the
  same layer), next to the judge-free EM score; correlations across checkpoints and organisms,
  and per question. Caches and scores are reused: a rerun loads no model.
- `adapters` (`lab.diffing.training_dynamics`): trains rank-1 organisms (`mo-rank1`, one rank-1
  down_proj adapter at half depth; `mo-rank1x9`, nine) with a checkpoint every ~`--checkpoint-every` steps;
  per checkpoint |B·A|, the local cosine of the adapter vector, its PCA path and the judge-free EM
  scores; then L1 probes on the final adapters' per-token scalars. A rerun loads no model.
"""

from __future__ import annotations

from experiments.common import routed, show
from experiments.verbs import VERBS
from lab.core.console import console, progress, table
from lab.core.io import out_folder, write_result, write_rows, write_summary
from lab.diffing.checkpoints import TrajectoryConfig, TrajectoryResult, trajectory
from lab.diffing.monitoring import MonitorConfig, monitor_checkpoints
from lab.diffing.training_dynamics import DynamicsConfig, rank1_dynamics
from lab.reports.figures import write_figures
from lab.reports.plots import dynamics_panel, lines_with_ci, shift_vs_score
from lab.stats.estimate import format_ci

def run_em(cfg: TrajectoryConfig) -> TrajectoryResult:
    with progress() as bar:
        task = bar.add_task("checkpoints", total=None, info="")
        result = trajectory(cfg, on_step=lambda: bar.advance(task))
    write_figures(result)
    show(result)
    write_result(result)
    return result


def run_shifts(cfg: MonitorConfig) -> dict:
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
    show_shifts(monitors, rows, m.correlations, pq)
    return write_summary(out, cfg, monitors={n: {"contrast": x.contrast, "layer": x.layer, "pooling": x.pooling,
                                                 "heldout_auroc": x.heldout_auroc, "n_held_out": len(x.held_out)}
                                             for n, x in monitors.items()},
                         rows=rows, correlations=m.correlations,
                         per_question={k: {"r": v["pooled"].to_json(), "within_model_mean_r": v["within_model_mean_r"],
                                           "n_pairs": v["n_pairs"], "n_models": v["n_models"]} for k, v in pq.items()},
                         skipped=m.skipped, figures=[str(f) for f in figures], wall_s=m.seconds)


def show_shifts(monitors, rows, corr, pq) -> None:
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


def run_adapters(cfg: DynamicsConfig) -> dict:
    d = rank1_dynamics(cfg)
    for recipe, r in d.runs.items():
        p = d.panels[recipe]
        r["figure"] = str(dynamics_panel(p["steps"], p["norms"], p["local"], p["coords"], p["em"],
                                         d.out / f"{recipe}.png", p["title"]))
        show_adapters(recipe, r, cfg.step_gaps)
    for s in d.skipped:
        console.print(f"[yellow]skipped[/]: {s}")
    return write_summary(d.out, cfg, runs=d.runs, skipped=d.skipped, wall_s=d.seconds)


def show_adapters(recipe: str, r: dict, ks: list[int]) -> None:
    console.print(table(f"{recipe}: adapter dynamics vs EM (layers {r['layers']})", [
        {"step": row["step"], "|B·A|": f"{row['norm']:.3f}",
         **{f"cos k={k}": "" if row[f"cos k={k}"] is None else f"{row[f'cos k={k}']:.3f}" for k in ks},
         "PC1, PC2": f"{row['pc1']:.2f}, {row['pc2']:.2f}",
         "EM usual Δbase [95% CI]": format_ci(row["EM usual"], row["EM usual lo"], row["EM usual hi"]) if "EM usual" in row else "",
         "EM in-domain Δbase [95% CI]": format_ci(row["EM in-domain"], row["EM in-domain lo"], row["EM in-domain hi"])
         if "EM in-domain" in row else ""}
        for row in r["rows"]]))
    tr = ", ".join(f"k={k}: step {t[0]} (cos {t[1]:.3f})" for k, t in r["transition"].items() if t)
    console.print(f"{recipe}: most abrupt rotation (vs checkpoints from step {r['settled_from']} on) {tr}; "
                  f"EM first above 0 at step {r['em_rise_step']}; "
                  f"PCA explained {', '.join(f'{x:.2f}' for x in r['pca_explained'])}")
    if r["probes"]:
        console.print(table(f"{recipe}: L1 probes on per-token adapter scalars (held out by question)", [
            {"task": p["task"], "features": p["features"], "AUROC [95% CI]": format_ci(p["auroc"], p["auroc_lo"], p["auroc_hi"]),
             "carriers (layer, by |w|)": " ".join(map(str, p["carriers"])) or "none",
             "weights": " ".join(f"L{L}:{w:+.2f}" for L, w in zip(p["layers"], p["coef"])),
             "single-adapter AUROC": " ".join(f"{a:.2f}" for a in p["single_auroc"]),
             "tokens train/test": f"{p['n_train_tokens']}/{p['n_test_tokens']}"} for p in r["probes"]]))


DESCRIPTION = VERBS["checkpoints"].help  # the routed verb's own first line
main = routed("--measure", {"em": (TrajectoryConfig, run_em), "shifts": (MonitorConfig, run_shifts),
                            "adapters": (DynamicsConfig, run_adapters)}, DESCRIPTION, __name__)

if __name__ == "__main__":
    main()
