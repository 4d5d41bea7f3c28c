"""Training dynamics of rank-1 organisms, against their EM trajectory, and LoRA adapter probing.

    python -m experiments.dynamics --domain medical --recipes mo-rank1 mo-rank1x9 --every 5

Per recipe (`mo-rank1`, one rank-1 down_proj adapter at half depth; `mo-rank1x9`, nine), one
organism is trained with a checkpoint every ~`--every` steps; per checkpoint |B·A|, the local
cosine of the adapter vector, its PCA path and the judge-free EM scores; then L1 probes on the
final adapters' per-token scalars (`lab.diffing.training_dynamics`). A rerun loads no model.
"""

from __future__ import annotations

from experiments.common import cli
from lab.core.console import console, table
from lab.core.io import write_summary
from lab.diffing.training_dynamics import DynamicsConfig, rank1_dynamics
from lab.reports.plots import dynamics_panel
from lab.stats.estimate import format_ci


def run(cfg: DynamicsConfig) -> dict:
    d = rank1_dynamics(cfg)
    for recipe, r in d.runs.items():
        p = d.panels[recipe]
        r["figure"] = str(dynamics_panel(p["steps"], p["norms"], p["local"], p["coords"], p["em"],
                                         d.out / f"{recipe}.png", p["title"]))
        show(recipe, r, cfg.ks)
    for s in d.skipped:
        console.print(f"[yellow]skipped[/]: {s}")
    return write_summary(d.out, cfg, runs=d.runs, skipped=d.skipped, wall_s=d.seconds)


def show(recipe: str, r: dict, ks: list[int]) -> None:
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


main = cli(DynamicsConfig, run)


if __name__ == "__main__":
    main()
