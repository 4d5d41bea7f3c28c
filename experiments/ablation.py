"""EM ablation (the Model Organisms table): remove an organism's misalignment direction, its
transferred twin from another organism, and random directions of the same norm; report the
judge-free, style-matched EM score of each, paired by question, with CIs.

    python -m experiments.ablation --organisms medical=runs/medical/adapter financial=runs/financial/adapter

EM score = misaligned - aligned reference log-prob (usual and terse styles), as organism minus
base (Δbase). Reduction = 1 - Δbase(ablated) / Δbase(unsteered); it is only meaningful when
the unsteered Δbase is clearly above zero, which the table states.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from experiments.common import cli, save_summary, Common, contrast_cache, handle_for, out_dir
from experiments.transfer import parse_organisms
from lab.console import console, fmt_ci, progress, table
from lab.directions import sweep_and_fit
from lab.evaluation import style_gaps_under
from lab.io import write_rows
from lab.plots import bars_with_ci
from lab.scores import ci_row
from lab.steering import Intervention, random_like


@dataclass
class AblationConfig(Common):
    """Ablate misalignment directions from EM organisms, with transferred and random controls."""

    organisms: list[str] = field(default_factory=list, metadata={"help": "NAME=ADAPTER_DIR pairs"})
    layers: str = field(default="all", metadata={"help": "'all' or 'best' (the direction's best layer)"})
    random_seeds: int = field(default=3, metadata={"help": "random-direction controls"})
    eval_limit: int = field(default=0, metadata={"help": "general questions to score (0: all 48)"})
    score: list[str] = field(default_factory=list, metadata={"help": "organisms to ablate (default: all)"})


def misalignment_direction(cfg: AblationConfig, adapter: str, name: str):
    cache, _ = contrast_cache(handle_for(cfg, [adapter]), "general_answers", cfg, name)
    _, fitted = sweep_and_fit(cache, "misaligned", ["mean_diff"], "mean_response", cfg.test_fraction, cfg.seed, 200,
                              negative_label="aligned", contrast="general_answers")
    return fitted["mean_diff"]


def run(cfg: AblationConfig) -> dict:
    organisms = parse_organisms(cfg.organisms)
    directions = {name: misalignment_direction(cfg, adapters[0], name) for name, adapters in organisms.items()}
    base = handle_for(cfg, []).model
    base_gaps = style_gaps_under(base, (), cfg.eval_limit or None)
    rows = []
    with progress() as bar:
        scored = {n: a for n, a in organisms.items() if not cfg.score or n in cfg.score}
        task = bar.add_task("ablation", total=len(scored) * (1 + len(directions) + cfg.random_seeds), info="")
        for name, adapters in scored.items():
            model = handle_for(cfg, adapters).model
            n_layers = model.n_layers
            conditions = [("unsteered", ())]
            for src, d in directions.items():
                best = d.metrics["best_layer"]
                layers = range(n_layers) if cfg.layers == "all" else [best]
                iv = Intervention({L: d.at(best) for L in layers}, op="ablate",
                                  label=f"ablate {'own' if src == name else 'transferred from ' + src}")
                conditions.append((iv.label, (iv,)))
            own = next(c for c in conditions if c[0] == "ablate own")[1][0]
            conditions += [(f"ablate random {s}", (random_like(own, s),)) for s in range(cfg.random_seeds)]
            unsteered = None
            for label, ivs in conditions:
                gaps = style_gaps_under(model, ivs, cfg.eval_limit or None)
                unsteered = unsteered or gaps
                for style in ("usual", "terse"):
                    delta = ci_row("Δbase", gaps[style] - base_gaps[style], cfg.n_boot, cfg.seed)
                    change = ci_row("vs unsteered", gaps[style] - unsteered[style], cfg.n_boot, cfg.seed)
                    rows.append({"organism": name, "condition": label, "style": style, "em_dbase": delta["value"],
                                 "em_dbase_lo": delta["lo"], "em_dbase_hi": delta["hi"],
                                 "change": change["value"], "change_lo": change["lo"], "change_hi": change["hi"],
                                 "n": delta["n"]})
                bar.advance(task)
            del model
    out = out_dir(cfg, "ablation")
    write_rows(rows, out / "rows")
    shown = []
    for r in rows:
        base_row = next(x for x in rows if x["organism"] == r["organism"] and x["style"] == r["style"]
                        and x["condition"] == "unsteered")
        em_present = base_row["em_dbase_lo"] > 0
        reduction = (1 - r["em_dbase"] / base_row["em_dbase"]) if em_present else None
        r["reduction"] = reduction
        shown.append({"organism": r["organism"], "style": r["style"], "condition": r["condition"],
                      "EM score Δbase [95% CI]": fmt_ci(r["em_dbase"], r["em_dbase_lo"], r["em_dbase_hi"]),
                      "change vs unsteered": fmt_ci(r["change"], r["change_lo"], r["change_hi"]),
                      "reduction": f"{reduction:.0%}" if reduction is not None else "n/a (no EM to remove)"})
    usual = [r for r in rows if r["style"] == "usual"]
    bars_with_ci([f"{r['organism']}: {r['condition']}" for r in usual], [r["em_dbase"] for r in usual],
                 [r["em_dbase_lo"] for r in usual], [r["em_dbase_hi"] for r in usual], out / "ablation.png",
                 "style-matched EM score (usual style), organism - base", "Δ log-prob (misaligned - aligned)")
    console.print(table("EM ablation (judge-free, style-matched)", shown))
    return save_summary(cfg, out, rows=rows)


main = cli(AblationConfig, run)


if __name__ == "__main__":
    main()
