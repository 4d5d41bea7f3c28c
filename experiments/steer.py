"""Steering sweeps with controls: the refusal validation (Arditi et al. 2024) and EM steering.

    python -m experiments.steer --target refusal                  # ablate / add the refusal direction
    python -m experiments.steer --target em --organism runs/medical/adapter

refusal: the refusal direction (difference of means, harmful vs benign, last prompt token,
fitted on the base model's train split) is (1) ablated at every layer on held-out harmful
requests, which should lower the refusal rate, and (2) added at one layer on held-out benign
requests, which should raise it; each beside random controls of the same structure (one random
vector at every layer for the ablation, as the treatment uses one direction at every layer),
norm, op, strength and prompts, and with a coherence guard (change in log-prob per token of
neutral reference text).

em: the organism's misalignment direction (misaligned vs aligned style-matched answers,
mean over response tokens, fitted on the organism) is added to the *base* model over an
alpha x layer grid (induced misalignment, persona-vector style): judge-free style-matched
score (misaligned - aligned log-prob, usual style) vs the coherence guard, random control
at every cell; the best setting under the coherence floor is reported.

Strengths are given as ratios of the layer's mean residual norm (trait-interp found
coherence collapses beyond ~1.15x).

The steered model is `--model` plus `--adapters` (default: the base model); for em the
direction comes from `--model` plus `--organism`. `--direction FILE` steers with a saved
direction instead of fitting one; it must have been fitted on the steered model (refusal) or on
the organism (em) — same base weights, d_model and depth — or the run stops with one line,
unless `--allow-foreign-direction`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from lab.judge.client import DEFAULT_JUDGE_MODEL, JudgeScheme, llm_judge
from experiments.common import cli
from lab.causal.controls import SteeringOptions
from lab.core.io import out_folder
from lab.directions.contrasts import contrast_cache
from lab.directions.options import AnalysisOptions
from lab.core.config import config_dict
from lab.core.console import console, progress, table
from lab.directions.contrasts import contrast_examples
from lab.directions import Direction, Split, fit_contrast
from lab.directions.norms import prompt_residual_norm
from lab.core.errors import BadInput
from lab.causal.refusal import refusal_logodds_under, refusal_under
from lab.em.judge_free import style_gaps_under
from lab.intervene.logprobs import logprobs_under, neutral_pairs
from lab.core.io import write_json_atomic, write_rows
from lab.reports.plots import scatter
from lab.stats.estimate import format_ci, mean_ci
from lab.intervene.steering import from_direction, random_like


@dataclass
class SteerConfig(SteeringOptions, AnalysisOptions):
    """Steering sweeps (alpha x layer) with random-direction controls and a coherence guard."""

    target: Literal["refusal", "em"] = field(default="refusal", metadata={"help": "what to steer"})
    organism: str = field(default="", metadata={"help": "adapter of the EM organism (target em)"})
    layers: list[int] = field(default_factory=list, metadata={"help": "layers to steer (default: best +- window)"})
    layer_window: int = field(default=2, metadata={"help": "default layers: best-window, best, best+window (0: best)"})
    ratios: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.5],
                                metadata={"help": "alpha as a multiple of the layer's mean residual norm"})
    random_seeds: int = field(default=2, metadata={"help": "random-direction controls per cell"})
    max_new_tokens: int = field(default=32, metadata={"help": "tokens per generated answer (refusal)"})
    coherence_floor: float = field(default=-0.5, metadata={"help": "lowest acceptable neutral log-prob change/token"})
    eval_limit: int = field(default=0, metadata={"help": "held-out prompts/questions to use (0: all)"})
    neutral: int = field(default=16, metadata={"help": "neutral reference texts for the coherence guard"})
    judge_base_url: str = field(default="", metadata={"help": "OpenAI-compatible judge: judged EM per cell (target em)"})
    judge_model: str = field(default=DEFAULT_JUDGE_MODEL, metadata={"help": "judge model name"})
    judge_scheme: JudgeScheme = field(default="auto", metadata={"help": "judge scoring scheme (auto: by model)"})
    select: Literal["auroc", "ablation"] = field(default="auroc", metadata={
        "help": "refusal direction's layer: auroc (best held-out AUROC) or ablation (Arditi et al.: lowest "
                "refusal log-odds when ablated, on train prompts, layers below 80%% depth, coherence floor kept)"})
    select_prompts: int = field(default=12, metadata={"help": "train harmful prompts scored per candidate (select ablation)"})
    direction: str = field(default="", metadata={
        "help": "saved direction file (e.g. from `emlab sweep`) instead of fitting one; it must have been fitted on "
                "the steered model (refusal) or the organism (em), unless --allow-foreign-direction"})


def coherence(model, interventions, baseline: np.ndarray, pairs) -> dict:
    delta = logprobs_under(model, pairs, tuple(interventions)) - baseline
    return mean_ci(delta, 500).to_json()


def default_layers(best: int, n_layers: int, window: int = 2) -> list[int]:
    return sorted({max(0, best - window), best, min(n_layers - 1, best + window)})


def select_by_ablation(model, direction, prompts, n_layers: int, baseline, pairs, floor: float,
                       allow_foreign: bool = False) -> tuple[int, list]:
    """Arditi et al.'s choice of the refusal direction: among candidate layers' directions
    (below 80% depth), the one whose ablation at every layer lowers the refusal log-odds most on
    train prompts, while the neutral-text coherence change stays above `floor`."""
    if not prompts:
        raise BadInput("no train harmful prompts to select the refusal direction on")
    unsteered = float(refusal_logodds_under(model, prompts).mean())
    step = max(1, n_layers // 10)
    rows = []
    for layer in [L for L in direction.layers if L < 0.8 * n_layers and L % step == 0]:
        ablate = from_direction(direction, model, range(n_layers), at=layer, op="ablate", label=f"L{layer}",
                                allow_foreign=allow_foreign)
        odds = float(refusal_logodds_under(model, prompts, (ablate,)).mean())
        coh = float((logprobs_under(model, pairs, (ablate,)) - baseline).mean())
        rows.append({"layer": layer, "logodds_shift": odds - unsteered, "coherence": coh})
    ok = [r for r in rows if r["coherence"] >= floor] or rows
    pick = min(ok, key=lambda r: r["logodds_shift"])
    console.print(table(f"refusal direction selection on {len(prompts)} train prompts (ablation at every layer)",
                        [{k: f"{v:.3f}" if isinstance(v, float) else v for k, v in r.items()} for r in rows]))
    return pick["layer"], rows


def fitted_or_loaded(cfg: SteerConfig, cache, positive: str, negative: str, pooling: str, contrast: str
                     ) -> tuple[Direction, Split]:
    """The difference-of-means direction fitted on `cache`'s train split, or `--direction`'s file,
    with the contrast's split (its held-out examples are what the steering is scored on)."""
    fit = fit_contrast(cache, positive, ["mean_diff"], pooling, cfg.test_fraction, cfg.seed, 200,
                       negative_label=negative, contrast=contrast)
    return (Direction.load(cfg.direction) if cfg.direction else fit.directions["mean_diff"]), fit.split


def refusal_run(cfg: SteerConfig) -> dict:
    handle = cfg.view()  # the base model, or base + --adapters
    cache, contrast = contrast_cache(handle, "refusal", cfg.cache_dir, cfg.storage, cfg.limit, "steered model")
    direction, split = fitted_or_loaded(cfg, cache, "harmful", "benign", "last", "refusal")
    best = direction.record.best_layer
    model = handle
    foreign = cfg.allow_foreign_direction
    from_direction(direction, model, allow_foreign=foreign)  # fail on provenance before any generation
    test_ids = set(split.test_ids)
    examples = [e for e in contrast_examples("refusal") if e.id in test_ids]
    harmful = [e for e in examples if e.label == "harmful"][: cfg.eval_limit or None]
    benign = [e for e in examples if e.label == "benign"][: cfg.eval_limit or None]
    pairs = neutral_pairs(cfg.neutral)
    baseline = logprobs_under(model, pairs)
    rows, answers = [], {}

    unsteered_odds = {}

    def record(kind: str, prompts, interventions, layer, ratio, label):
        r, gen = refusal_under(model, prompts, tuple(interventions), cfg.max_new_tokens, label, cfg.n_boot)
        coh = coherence(model, interventions, baseline, pairs) if interventions else {"value": 0.0, "lo": 0.0, "hi": 0.0}
        odds = refusal_logodds_under(model, prompts, tuple(interventions))
        unsteered_odds.setdefault(kind, odds)
        shift = mean_ci(odds - unsteered_odds[kind], cfg.n_boot).to_json()
        rows.append({"experiment": kind, "condition": label, "layer": layer, "ratio": ratio, "refusal": r.value,
                     "refusal_lo": r.lo, "refusal_hi": r.hi, "n": r.n, "logodds_shift": shift["value"],
                     "logodds_shift_lo": shift["lo"], "logodds_shift_hi": shift["hi"], "coherence": coh["value"],
                     "coherence_lo": coh["lo"], "coherence_hi": coh["hi"]})
        answers[f"{kind}:{label}:L{layer}:x{ratio}"] = gen

    selection = []
    if cfg.select == "ablation":
        train_ids = set(split.train_ids)
        val = [e for e in contrast_examples("refusal") if e.id in train_ids and e.label == "harmful"][: cfg.select_prompts]
        best, selection = select_by_ablation(model, direction, val, handle.n_layers, baseline, pairs, cfg.coherence_floor,
                                             foreign)
    with progress() as bar:
        cells = 2 + (1 + cfg.random_seeds) * (1 + len(cfg.layers or default_layers(best, handle.n_layers, cfg.layer_window)) * len(cfg.ratios))
        task = bar.add_task("steering", total=cells, info="")
        step = lambda: bar.advance(task)  # noqa: E731
        record("ablate on harmful", harmful, [], None, 0.0, "unsteered"); step()
        ablate = from_direction(direction, model, range(handle.n_layers), at=best, op="ablate", label="refusal dir",
                                allow_foreign=foreign)  # one vector at every layer; so are its random controls
        record("ablate on harmful", harmful, [ablate], "all", 0.0, "refusal dir"); step()
        for seed in range(cfg.random_seeds):
            record("ablate on harmful", harmful, [random_like(ablate, seed)], "all", 0.0, f"random {seed}"); step()
        record("add on benign", benign, [], None, 0.0, "unsteered")
        for layer in cfg.layers or default_layers(best, handle.n_layers, cfg.layer_window):
            norm = prompt_residual_norm(cache, layer)
            for ratio in cfg.ratios:
                add = from_direction(direction, model, [layer], op="add", alpha=ratio * norm, label="refusal dir",
                                     allow_foreign=foreign)
                record("add on benign", benign, [add], layer, ratio, "refusal dir"); step()
                for seed in range(cfg.random_seeds):
                    record("add on benign", benign, [random_like(add, seed)], layer, ratio, f"random {seed}"); step()
    return finish(cfg, "refusal", rows, answers, best, {"harmful": len(harmful), "benign": len(benign)},
                  selection=selection, model=handle.fingerprint)


def em_run(cfg: SteerConfig) -> dict:
    if not cfg.organism:
        raise BadInput("--organism ADAPTER is required for --target em")
    organism = cfg.view([cfg.organism])
    org_cache, _ = contrast_cache(organism, "general_answers", cfg.cache_dir, cfg.storage, cfg.limit, "organism")
    direction, split = fitted_or_loaded(cfg, org_cache, "misaligned", "aligned", "mean_response", "general_answers")
    best = direction.record.best_layer
    unseen = split.held_out_groups()
    base_handle = cfg.view()  # the steered model: the base, or base + --adapters
    base_cache, _ = contrast_cache(base_handle, "general_answers", cfg.cache_dir, cfg.storage, cfg.limit, "steered model")
    model = base_handle
    foreign = cfg.allow_foreign_direction
    from_direction(direction, model, fitted_on=organism, allow_foreign=foreign)  # provenance before any scoring
    pairs = neutral_pairs(cfg.neutral)
    baseline = logprobs_under(model, pairs)
    unsteered = style_gaps_under(model, (), cfg.eval_limit or None, unseen)  # questions the direction never saw
    rows, answers = [], {}
    judged = judged_em(cfg, model, unseen)
    unsteered_judged = judged(())
    layers = cfg.layers or default_layers(best, base_handle.n_layers, cfg.layer_window)
    with progress() as bar:
        task = bar.add_task("steering", total=len(layers) * len(cfg.ratios) * (1 + cfg.random_seeds), info="")
        for layer in layers:
            norm = prompt_residual_norm(base_cache, layer)
            for ratio in cfg.ratios:
                add = from_direction(direction, model, [layer], op="add", alpha=ratio * norm, fitted_on=organism,
                                     allow_foreign=foreign, label="misalignment dir")
                for iv in [add] + [random_like(add, s) for s in range(cfg.random_seeds)]:
                    gaps = style_gaps_under(model, (iv,), cfg.eval_limit or None, unseen)
                    shift = mean_ci(gaps["usual"] - unsteered["usual"], cfg.n_boot).to_json()
                    coh = coherence(model, [iv], baseline, pairs)
                    rows.append({"experiment": "add to base", "condition": iv.label, "layer": layer, "ratio": ratio,
                                 "em_shift": shift["value"], "em_shift_lo": shift["lo"], "em_shift_hi": shift["hi"],
                                 "coherence": coh["value"], "coherence_lo": coh["lo"], "coherence_hi": coh["hi"],
                                 **judged((iv,))})
                    bar.advance(task)
    return finish(cfg, "em", rows, answers, best, {"questions": len(unsteered["ids"])},
                  unsteered_judged=unsteered_judged, model=base_handle.fingerprint)


def judged_em(cfg: SteerConfig, model, question_ids: set):
    """`f(interventions) -> row fields`: sampled answers under the interventions, judged for EM
    (betley criterion) and coherence, when a judge is configured; {} otherwise."""
    from lab.em.answers import evaluate, shipped_questions
    from lab.intervene.generate import GenerationConfig

    judge = llm_judge(cfg.judge_base_url, cfg.judge_model, cfg.judge_scheme)
    if judge is None:
        return lambda interventions: {}
    questions = [q for q in shipped_questions() if q.id in question_ids][: cfg.eval_limit or None]
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=1.0, seed=cfg.seed)

    def score(interventions: tuple) -> dict:
        rows, summary = evaluate(model, questions, gen, judge, interventions=interventions, n_boot=cfg.n_boot)
        em = summary["em"]["betley"].estimate
        coherent = [r["coherent"] for r in rows if r.get("coherent") is not None]
        return {"judged_em": em.value, "judged_em_lo": em.lo, "judged_em_hi": em.hi,
                "judged_coherent": float(np.mean(coherent)) if coherent else None, "judged_n": em.n}
    return score


def finish(cfg: SteerConfig, target: str, rows: list[dict], answers: dict, best: int, counts: dict,
           **extra) -> dict:
    out = out_folder(cfg.out, f"steer/{target}")
    write_rows(rows, out / "rows")
    write_json_atomic(out / "answers.json", answers)
    metric = "refusal" if target == "refusal" else "em_shift"
    steered = [r for r in rows if r["condition"] not in ("unsteered",) and not r["condition"].startswith("random")]
    scatter([r["coherence"] for r in rows], [r[metric] for r in rows],
            [f"{r['condition'][:6]} L{r['layer']} x{r['ratio']}" for r in rows], out / "tradeoff.png",
            f"{target} steering: effect vs coherence", "neutral log-prob change per token (coherence)", metric)
    ok = [r for r in steered if r["experiment"].startswith("add") and r["coherence"] >= cfg.coherence_floor]
    pick = max(ok, key=lambda r: r[metric]) if ok else None
    shown = [{"experiment": r["experiment"], "condition": r["condition"], "layer": r["layer"], "ratio": r["ratio"],
              metric: format_ci(r[metric], r[f"{metric}_lo"], r[f"{metric}_hi"]),
              **({"log-odds Δ": format_ci(r["logodds_shift"], r["logodds_shift_lo"], r["logodds_shift_hi"], 2)}
                 if "logodds_shift" in r else {}),
              "coherence Δ": format_ci(r["coherence"], r["coherence_lo"], r["coherence_hi"], 2),
              **({"judged EM": format_ci(r["judged_em"], r["judged_em_lo"], r["judged_em_hi"]),
                  "judged coherent": "n/a" if r["judged_coherent"] is None else f"{r['judged_coherent']:.0f}"}
                 if "judged_em" in r else {})} for r in rows]
    console.print(table(f"steering ({target}); direction's best layer {best}", shown))
    if pick:
        console.print(f"best addition under coherence floor {cfg.coherence_floor}: layer {pick['layer']} x{pick['ratio']} "
                      f"-> {metric} {pick[metric]:.3f}")
    summary = {"config": config_dict(cfg), "target": target, "best_layer": best, "rows": rows, "pick": pick,
               "counts": counts, **extra, "out": str(out)}
    write_json_atomic(out / "summary.json", summary)
    return summary


def run(cfg: SteerConfig) -> dict:
    return refusal_run(cfg) if cfg.target == "refusal" else em_run(cfg)


main = cli(SteerConfig, run)


if __name__ == "__main__":
    main()
