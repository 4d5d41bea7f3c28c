"""EM ablation (the Model Organisms table): remove an organism's misalignment direction, its
transferred twin from another organism, and random directions of the same norm; report the
judge-free, style-matched EM score of each, paired by question, with CIs.

    python -m experiments.ablation --organisms medical=runs/medical/adapter financial=runs/financial/adapter

Each random control has the ablated direction's structure: the direction at every layer is one
vector, so each control is one random vector at every layer (with `--layers best`, one layer).
`--adapters` is refused: the models are `--model` (the base) and `--organisms`.

EM score = misaligned - aligned reference log-prob, as organism minus base (Δbase), paired by
question: on the general questions (usual and terse styles) and, for organisms of a shipped
domain, on that domain's held-out advice questions ("in-domain", where the organisms' shift is
largest). The direction comes from `--contrast` (general_answers, or own_domain: the organism's
own bad-vs-good advice answers, held-out questions excluded), `--method` and `--pooling`.
General questions are scored only where no direction was fitted on their reference answers.
`--ablation zero` removes the projection (Arditi; Model Organisms); `--ablation mean` sets it to
the aligned answers' mean projection, because aligned text sits below zero on a difference-of-
means direction, so zeroing moves it *toward* misaligned. `--positions prompt` edits the
question's tokens only: editing the scored answer's own tokens also changes what the model reads
*in* the answer (a teacher-forcing confound).
Reduction = 1 - Δbase(ablated) / Δbase(unsteered); it is only meaningful when the unsteered
Δbase is clearly above zero, which the table states.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from experiments.common import cli
from lab.causal.controls import SteeringOptions
from lab.core.config import parse_pairs
from lab.core.io import out_folder, write_summary
from lab.directions.contrasts import contrast_cache
from lab.directions.options import AnalysisOptions
from lab.core.console import console, progress, table
from lab.directions.contrasts import CONTRASTS
from lab.data.formats import advice_split
from lab.directions import fit_contrast
from lab.core.errors import BadInput
from lab.em.judge_free import in_domain_gaps, style_gaps_under
from lab.core.io import write_rows
from lab.reports.plots import bars_with_ci
from lab.stats.estimate import format_ci, mean_ci
from lab.intervene.steering import Intervention, direction_vectors, random_vectors_like


@dataclass
class AblationConfig(SteeringOptions, AnalysisOptions):
    """Ablate misalignment directions from EM organisms, with transferred and random controls."""

    organisms: list[str] = field(default_factory=list, metadata={"help": "NAME=ADAPTER_DIR pairs"})
    layers: Literal["all", "best"] = field(default="all", metadata={"help": "every layer, or the direction's best layer"})
    random_seeds: int = field(default=3, metadata={"help": "random-direction controls"})
    eval_limit: int = field(default=0, metadata={"help": "questions per score (0: all)"})
    score: list[str] = field(default_factory=list, metadata={"help": "organisms to ablate (default: all)"})
    contrast: Literal["general_answers", "own_domain"] = field(default="general_answers", metadata={
        "help": "answers the direction is fitted on"})
    method: str = field(default="mean_diff", metadata={"help": "direction method (mean_diff, probe, ...)"})
    pooling: str = field(default="mean_response", metadata={"help": "direction pooling (mean_response, last, ...)"})
    ablation: Literal["zero", "mean"] = field(default="zero", metadata={
        "help": "zero: remove the projection; mean: set it to the aligned answers' mean projection at each layer"})
    positions: str = field(default="all", metadata={
        "help": "all, or prompt: ablate on the question's tokens only, so the scored answer tokens are not edited"})


def contrast_of(cfg: AblationConfig, name: str) -> str:
    if cfg.contrast == "general_answers":
        return "general_answers"
    if f"{name}_answers" not in CONTRASTS:
        raise BadInput(f"--contrast own_domain needs a shipped domain organism, not {name!r}")
    return f"{name}_answers"


def misalignment_direction(cfg: AblationConfig, adapter: str, name: str):
    """(direction, the cache it was fitted on, general question ids it never saw; None: all)."""
    contrast = contrast_of(cfg, name)
    held = {e.id for e in advice_split(name, seed=cfg.seed)[1]} if contrast != "general_answers" else set()
    cache, _ = contrast_cache(cfg.view([adapter]), contrast, cfg.cache_dir, cfg.storage, cfg.limit, name,
                              keep=lambda e: e.meta.get("group") not in held)
    fit = fit_contrast(cache, "misaligned", [cfg.method], cfg.pooling, cfg.test_fraction, cfg.seed, 200,
                       negative_label="aligned", contrast=contrast)
    unseen = fit.split.held_out_groups() if contrast == "general_answers" else None
    return fit.directions[cfg.method], cache, unseen


def removal(vectors: dict, cfg: AblationConfig, cache, label: str) -> tuple[Intervention, ...]:
    """The edit that removes a direction: zero its projection, or (mean) set it at each layer to
    the aligned answers' mean projection in `cache` (the scored organism's), since aligned text
    does not sit at zero on a difference-of-means direction."""
    if cfg.ablation == "zero":
        return (Intervention(vectors, op="ablate", positions=cfg.positions, label=label),)
    aligned = cache.label_array("aligned").astype(bool)
    edits = []
    for layer, v in vectors.items():
        unit = (v.float() / v.float().norm()).numpy()
        level = float((cache.features(layer, cfg.pooling)[aligned] @ unit).mean())
        edits.append(Intervention({layer: v}, op="ablate_add", alpha=level, positions=cfg.positions, label=label))
    return tuple(edits)


def held_out_of(name: str, cfg: AblationConfig) -> list:
    """The organism's held-out in-domain advice questions ([] if it is not a shipped domain)."""
    if f"{name}_answers" not in CONTRASTS:
        return []
    return advice_split(name, seed=cfg.seed)[1][: cfg.eval_limit or None]


def em_scores(model, interventions: tuple, cfg: AblationConfig, held_out: list, unseen: set | None) -> dict:
    gaps = style_gaps_under(model, interventions, cfg.eval_limit or None, unseen)
    scores = {"usual": gaps["usual"], "terse": gaps["terse"]}
    if held_out:
        scores["in-domain"] = in_domain_gaps(model, held_out, interventions)
    return scores


def run(cfg: AblationConfig) -> dict:
    cfg.refuse_adapters("--model (the base) and --organisms")
    organisms = {n: [a] for n, a in parse_pairs("--organisms", cfg.organisms, "ADAPTER_DIR").items()}
    for name in organisms:  # fail on a bad --contrast before any model runs
        contrast_of(cfg, name)
    fitted = {name: misalignment_direction(cfg, adapters[0], name) for name, adapters in organisms.items()}
    unseen_sets = [u for _, _, u in fitted.values() if u is not None]
    unseen = set.intersection(*unseen_sets) if unseen_sets else None  # general questions no direction saw
    base = cfg.view([])
    rows = []
    with progress() as bar:
        scored = {n: a for n, a in organisms.items() if not cfg.score or n in cfg.score}
        task = bar.add_task("ablation", total=len(scored) * (1 + len(fitted) + cfg.random_seeds), info="")
        base_general = em_scores(base, (), cfg, [], unseen)  # shared by every organism
        base_scores = {}
        for name, adapters in scored.items():
            held_out = held_out_of(name, cfg)
            base_scores[name] = {**base_general, **({"in-domain": in_domain_gaps(base, held_out)} if held_out else {})}
            model = cfg.view(adapters)
            own_cache = fitted[name][1]
            layers = range(model.n_layers) if cfg.layers == "all" else [fitted[name][0].record.best_layer]
            conditions, removed = [("unsteered", ())], {}
            for src, (d, _, _) in fitted.items():
                best = d.record.best_layer
                label = f"ablate {'own' if src == name else 'transferred from ' + src}"
                chosen = layers if cfg.layers == "all" else [best]
                removed[src] = direction_vectors(d, model, chosen, at=best, fitted_on=cfg.view(organisms[src]),
                                                 allow_foreign=cfg.allow_foreign_direction)
                conditions.append((label, removal(removed[src], cfg, own_cache, label)))
            # controls with the own direction's structure: one random vector at every layer, like it
            conditions += [(f"ablate random {s}", removal(random_vectors_like(removed[name], s), cfg, own_cache,
                                                          f"random {s}")) for s in range(cfg.random_seeds)]
            unsteered = None
            for label, ivs in conditions:
                scores = em_scores(model, ivs, cfg, held_out, unseen)
                unsteered = unsteered or scores
                for score, values in scores.items():
                    delta = mean_ci(values - base_scores[name][score], cfg.n_boot, cfg.seed).to_json()
                    change = mean_ci(values - unsteered[score], cfg.n_boot, cfg.seed).to_json()
                    rows.append({"organism": name, "condition": label, "score": score, "em_dbase": delta["value"],
                                 "em_dbase_lo": delta["lo"], "em_dbase_hi": delta["hi"],
                                 "change": change["value"], "change_lo": change["lo"], "change_hi": change["hi"],
                                 "n": delta["n"]})
                bar.advance(task)
            del model
    out = out_folder(cfg.out, "ablation")
    write_rows(rows, out / "rows")
    shown = []
    for r in rows:
        base_row = next(x for x in rows if x["organism"] == r["organism"] and x["score"] == r["score"]
                        and x["condition"] == "unsteered")
        em_present = base_row["em_dbase_lo"] > 0
        reduction = (1 - r["em_dbase"] / base_row["em_dbase"]) if em_present else None
        r["reduction"] = reduction
        shown.append({"organism": r["organism"], "score": r["score"], "condition": r["condition"],
                      "EM score Δbase [95% CI]": format_ci(r["em_dbase"], r["em_dbase_lo"], r["em_dbase_hi"]),
                      "change vs unsteered": format_ci(r["change"], r["change_lo"], r["change_hi"]),
                      "reduction": f"{reduction:.0%}" if reduction is not None else "n/a (no EM to remove)"})
    shown_rows = [r for r in rows if r["score"] in ("usual", "in-domain")]
    bars_with_ci([f"{r['organism']} {r['score']}: {r['condition']}" for r in shown_rows],
                 [r["em_dbase"] for r in shown_rows], [r["em_dbase_lo"] for r in shown_rows],
                 [r["em_dbase_hi"] for r in shown_rows], out / "ablation.png",
                 "EM score under ablation, organism - base", "Δ log-prob (misaligned - aligned)")
    console.print(table(f"EM ablation (judge-free, style-matched; {cfg.method} on {cfg.contrast}, {cfg.pooling}, "
                        f"layers {cfg.layers}, {cfg.ablation} ablation, positions {cfg.positions})", shown))
    return write_summary(out, cfg, rows=rows)


main = cli(AblationConfig, run)


if __name__ == "__main__":
    main()
