"""EM steering: an organism's misalignment direction added to the *base* model, beside random controls.

The direction (misaligned vs aligned style-matched answers, mean over response tokens, fitted on
the organism, or `--direction`) is added to the steered model (`--model` plus `--adapters`,
default the base) over an alpha x layer grid (induced misalignment, persona-vector style): the
judge-free style-matched score (misaligned - aligned log-prob, usual style) on questions the
direction never saw, vs the coherence guard, random control at every cell; with an LLM judge,
the judged EM rate of sampled answers too.
"""

from __future__ import annotations

import numpy as np

from lab.causal.controls import default_layers
from lab.causal.steer import SteerConfig, SteerResult, SteerRow, fitted_or_loaded, steer_result
from lab.core.console import progress
from lab.core.errors import BadInput
from lab.directions.contrasts import contrast_cache
from lab.directions.norms import prompt_residual_norm
from lab.em.judge_free import style_gaps_under
from lab.intervene.logprobs import coherence_change, logprobs_under, neutral_pairs
from lab.intervene.steering import from_direction, random_like
from lab.judge.client import llm_judge
from lab.stats.estimate import Estimate, mean_ci


def judged_em(cfg: SteerConfig, model, question_ids: set):
    """`f(interventions) -> (judged EM rate, mean coherent score)`: sampled answers under the
    interventions, judged for EM (betley criterion) and coherence, when a judge is configured;
    (None, None) otherwise."""
    from lab.em.answers import evaluate, shipped_questions
    from lab.intervene.generate import GenerationConfig

    judge = llm_judge(cfg.judge_base_url, cfg.judge_model, cfg.judge_scheme)
    if judge is None:
        return lambda interventions: (None, None)
    questions = [q for q in shipped_questions() if q.id in question_ids][: cfg.eval_limit or None]
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=1.0, seed=cfg.seed)

    def score(interventions: tuple) -> tuple[Estimate, float | None]:
        rows, result = evaluate(model, questions, gen, judge, interventions=interventions, n_boot=cfg.n_boot)
        coherent = [r["coherent"] for r in rows if r.get("coherent") is not None]
        return result.em["betley"].estimate, float(np.mean(coherent)) if coherent else None
    return score


def em_addition(cfg: SteerConfig) -> SteerResult:
    """EM steering of the base model with the organism's misalignment direction, by layer x strength."""
    if not cfg.organism:
        raise BadInput("--organism ADAPTER is required for --target em")
    organism = cfg.view([cfg.organism])
    org_cache, _ = contrast_cache(organism, "general_answers", cfg.cache_dir, cfg.storage, cfg.limit, "organism")
    direction, split = fitted_or_loaded(cfg, org_cache, "misaligned", "aligned", "mean_response", "general_answers")
    best = direction.record.best_layer
    unseen = split.held_out_groups()
    model = cfg.view()  # the steered model: the base, or base + --adapters
    base_cache, _ = contrast_cache(model, "general_answers", cfg.cache_dir, cfg.storage, cfg.limit, "steered model")
    foreign = cfg.allow_foreign_direction
    from_direction(direction, model, fitted_on=organism, allow_foreign=foreign)  # provenance before any scoring
    pairs = neutral_pairs(cfg.neutral)
    baseline = logprobs_under(model, pairs)
    unsteered = style_gaps_under(model, (), cfg.eval_limit or None, unseen)  # questions the direction never saw
    rows, answers = [], {}
    judged = judged_em(cfg, model, unseen)
    unsteered_em, unsteered_coherent = judged(())
    layers = cfg.layers or default_layers(best, model.n_layers, cfg.layer_window)
    with progress() as bar:
        task = bar.add_task("steering", total=len(layers) * len(cfg.ratios) * (1 + cfg.random_controls), info="")
        for layer in layers:
            norm = prompt_residual_norm(base_cache, layer)
            for ratio in cfg.ratios:
                add = from_direction(direction, model, [layer], op="add", alpha=ratio * norm, fitted_on=organism,
                                     allow_foreign=foreign, label="misalignment dir")
                for iv in [add] + [random_like(add, s) for s in range(cfg.random_controls)]:
                    gaps = style_gaps_under(model, (iv,), cfg.eval_limit or None, unseen)
                    shift = mean_ci(gaps["usual"] - unsteered["usual"], cfg.n_boot)
                    coh = coherence_change(model, [iv], baseline, pairs)
                    em, coherent = judged((iv,))
                    rows.append(SteerRow("add to base", iv.label, layer, ratio, coh, em_shift=shift, judged_em=em,
                                         judged_coherent=coherent))
                    bar.advance(task)
    return steer_result(cfg, "em", rows, answers, best, {"questions": len(unsteered["ids"])}, model.fingerprint,
                        unsteered_judged_em=unsteered_em, unsteered_judged_coherent=unsteered_coherent)
