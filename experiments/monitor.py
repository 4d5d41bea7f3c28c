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

import time
from dataclasses import dataclass, field
from pathlib import Path

from experiments.common import cli
from lab.core.config import parse_pairs
from lab.core.io import out_folder, write_summary
from lab.directions.options import AnalysisOptions
from lab.stats.estimate import format_ci
from lab.core.console import console, progress, table
from lab.directions.contrasts import contrast_examples, ensure_cache
from lab.diffing.dynamics import evenly, run_checkpoints
from lab.core.errors import BadInput
from lab.core.io import write_rows
from lab.diffing.monitoring import correlations, em_score, fit_monitors, measure, per_question
from lab.reports.plots import lines_with_ci, shift_vs_score


@dataclass
class MonitorConfig(AnalysisOptions):
    """Shift along EM / refusal / code-mode directions per checkpoint, against the EM score."""


    runs: list[str] = field(default_factory=list, metadata={"help": "training folders: NAME=FOLDER (checkpoints/step-*)"})
    max_checkpoints: int = field(default=0, metadata={"help": "per run, at most N checkpoints, evenly spaced (0: all)"})
    eval_limit: int = field(default=0, metadata={"help": "general questions per EM score (0: all 48)"})
    layer_from: int = field(default=-1, metadata={
        "help": "each direction at its best held-out layer at or above this one (-1: half depth)"})
    budget_min: float = field(default=0.0, metadata={"help": "wall budget: measure no new checkpoint past it (0: none)"})


def parse_runs(specs: list[str]) -> dict[str, Path]:
    if not specs:
        raise BadInput("--runs NAME=FOLDER is required (a lab.training.lora folder with checkpoints/step-*)")
    runs = {name: Path(folder) for name, folder in parse_pairs("--runs", specs, "FOLDER").items()}
    for folder in runs.values():
        run_checkpoints(folder)  # a folder without checkpoints fails here, before any work
    return runs


def run(cfg: MonitorConfig) -> dict:
    cfg.refuse_adapters("--model (step 0) and the checkpoints under --runs")
    runs = parse_runs(cfg.runs)
    start = time.monotonic()
    limit = cfg.limit or None
    base = cfg.view([])
    with console.status("fitting the EM, refusal and code-mode directions on the base model ..."):
        monitors = fit_monitors(base, cfg.cache_dir, cfg.storage, limit, cfg.test_fraction, cfg.seed,
                                None if cfg.layer_from < 0 else cfg.layer_from)
    base_caches = {n: ensure_cache(base, contrast_examples(m.contrast, limit), cfg.cache_dir, storage_dtype=cfg.storage)
                   for n, m in monitors.items()}
    base_em = em_score(base, cfg.cache_dir, cfg.eval_limit or None)
    args = dict(storage=cfg.storage, eval_limit=cfg.eval_limit or None, n_boot=cfg.n_boot, seed=cfg.seed)
    points = [measure(base, base_em, monitors, base_caches, cfg.cache_dir, "base", 0, **args)]
    todo = [(name, step, ck) for name, folder in runs.items()
            for step, ck in evenly(run_checkpoints(folder), cfg.max_checkpoints)]
    skipped = []
    with progress() as bar:
        task = bar.add_task("checkpoints", total=len(todo), info="")
        for name, step, ck in todo:
            if cfg.budget_min > 0 and time.monotonic() - start > 60 * cfg.budget_min:
                skipped.append(f"{name} step {step}")
                continue
            bar.update(task, info=f"{name} step {step}")
            points.append(measure(cfg.view([str(ck)]), base_em, monitors, base_caches, cfg.cache_dir, name, step,
                                  **args))
            bar.advance(task)
    if skipped:
        console.print(f"[yellow]wall budget reached; not measured[/]: {', '.join(skipped)}")
    trained = [p for p in points if p.run != "base"]
    corr = correlations(trained, monitors, cfg.n_boot, cfg.seed)
    em = monitors["EM"]
    unseen = {base_caches["EM"].groups[i] for i in em.held_out}
    pq = {"held-out questions": per_question(points, unseen, cfg.n_boot, cfg.seed),
          "all questions": per_question(points, None, cfg.n_boot, cfg.seed)}
    rows = [p.row() for p in points]
    out = out_folder(cfg.out, "monitor")
    write_rows(rows, out / "rows")
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
    for name in runs:
        mine = [x for x, r in zip(lines, [r for r in rows[1:] for _ in monitors]) if r["run"] == name]
        if mine:
            figures.append(lines_with_ci(mine, "direction", "step", "value", out / f"{name}-shifts.png",
                                         f"{name}: shifts along base-model directions", "mean shift", hline=0.0))
    show(monitors, rows, corr, pq)
    return write_summary(out, cfg, monitors={n: {"contrast": m.contrast, "layer": m.layer, "pooling": m.pooling,
                                                 "heldout_auroc": m.heldout_auroc, "n_held_out": len(m.held_out)}
                                             for n, m in monitors.items()},
                        rows=rows, correlations=corr,
                        per_question={k: {"r": v["pooled"].to_json(), "within_model_mean_r": v["within_model_mean_r"],
                                          "n_pairs": v["n_pairs"], "n_models": v["n_models"]} for k, v in pq.items()},
                        skipped=skipped, figures=[str(f) for f in figures], wall_s=time.monotonic() - start)


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
