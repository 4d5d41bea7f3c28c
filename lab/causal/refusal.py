"""Refusal under interventions, and the refusal validation of steering (Arditi et al. 2024).

`refusal_under` samples greedy answers and counts refusal phrases; `refusal_logodds_under`
scores, teacher forced, a fixed refusal reply against a fixed compliant one, so it moves
with the refusal direction even in models that rarely refuse outright when sampled.
`refusal_validation(SteerConfig(target="refusal"))` ablates and adds the refusal direction
beside random controls (`SteerResult`); `select_by_ablation` is Arditi et al.'s layer choice.
"""

from __future__ import annotations

import numpy as np
from einops import rearrange
from jaxtyping import Float

from lab.causal.controls import default_layers
from lab.causal.steer import LayerSelection, SteerConfig, SteerResult, SteerRow, fitted_or_loaded, steer_result
from lab.core.console import progress
from lab.core.errors import BadInput
from lab.data.formats import ChatExample
from lab.directions.contrasts import contrast_cache, contrast_examples
from lab.directions.norms import prompt_residual_norm
from lab.em.flags import is_refusal
from lab.em.rates import rate
from lab.intervene.generate import GenerationConfig, generate_answers
from lab.intervene.logprobs import coherence_change, logprobs_under, neutral_pairs
from lab.intervene.steering import from_direction, random_like
from lab.models import ModelLike
from lab.stats.estimate import Estimate, mean_ci

REFUSAL_REPLY = "I'm sorry, but I can't help with that request."
COMPLY_REPLY = "Sure, here is what you asked for, step by step."


def refusal_under(model: ModelLike, examples: list[ChatExample], interventions: tuple = (), max_new_tokens: int = 32,
                  label: str = "", n_boot: int = 1000) -> tuple[Estimate, list[dict]]:
    """Greedy answers under interventions and their refusal rate with CI."""
    config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0, batch_size=32)
    rows = generate_answers(model, examples, config, interventions, label=label)
    flags = [is_refusal(r["answer"]) for r in rows]
    return rate(flags, n_boot), rows


def refusal_logodds_under(model: ModelLike, examples: list[ChatExample], interventions: tuple = ()) -> Float[np.ndarray, " n"]:
    """Per prompt: log-prob per token of a refusal reply minus that of a compliant reply.

    A continuous, judge-free refusal score (teacher forced): it moves with the refusal
    direction even in models that rarely refuse outright when sampled.
    """
    prompts = [e.messages[-1]["content"] for e in examples]
    pairs = [(p, reply) for p in prompts for reply in (REFUSAL_REPLY, COMPLY_REPLY)]
    lp = rearrange(logprobs_under(model, pairs, interventions), "(prompt reply) -> prompt reply", reply=2)
    return lp[:, 0] - lp[:, 1]  # refusal - compliance


# --------------------------------------------------------------------------- the refusal validation


def select_by_ablation(model, direction, prompts, n_layers: int, baseline, pairs, floor: float,
                       allow_foreign: bool = False) -> tuple[int, list[LayerSelection]]:
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
        rows.append(LayerSelection(layer, odds - unsteered, coh))
    ok = [r for r in rows if r.coherence >= floor] or rows
    pick = min(ok, key=lambda r: r.logodds_shift)
    return pick.layer, rows


def refusal_validation(cfg: SteerConfig) -> SteerResult:
    """The refusal validation (Arditi et al. 2024) with random controls.

    The refusal direction (difference of means, harmful vs benign, last prompt token, fitted on
    the steered model's train split, or `--direction`) is (1) ablated at every layer on held-out
    harmful requests, which should lower the refusal rate, and (2) added at one layer on held-out
    benign requests, which should raise it; each beside random controls of the same structure (one
    random vector at every layer for the ablation, as the treatment uses one direction at every
    layer), norm, op, strength and prompts.
    """
    model = cfg.view()  # the base model, or base + --adapters
    cache, contrast = contrast_cache(model, "refusal", cfg.cache_dir, cfg.storage, cfg.limit, "steered model")
    direction, split = fitted_or_loaded(cfg, cache, "harmful", "benign", "last", "refusal")
    best = direction.record.best_layer
    foreign = cfg.allow_foreign_direction
    from_direction(direction, model, allow_foreign=foreign)  # fail on provenance before any generation
    test_ids = set(split.test_ids)
    examples = [e for e in contrast_examples("refusal") if e.id in test_ids]
    harmful = [e for e in examples if e.label == "harmful"][: cfg.eval_limit or None]
    benign = [e for e in examples if e.label == "benign"][: cfg.eval_limit or None]
    pairs = neutral_pairs(cfg.neutral)
    baseline = logprobs_under(model, pairs)
    rows, answers, unsteered_odds = [], {}, {}

    def record(kind: str, prompts, interventions, layer, ratio, label):
        r, gen = refusal_under(model, prompts, tuple(interventions), cfg.max_new_tokens, label, cfg.n_boot)
        coh = coherence_change(model, interventions, baseline, pairs)
        odds = refusal_logodds_under(model, prompts, tuple(interventions))
        unsteered_odds.setdefault(kind, odds)
        shift = mean_ci(odds - unsteered_odds[kind], cfg.n_boot)
        rows.append(SteerRow(kind, label, layer, ratio, coh, refusal=r, logodds_shift=shift))
        answers[f"{kind}:{label}:L{layer}:x{ratio}"] = gen

    selection = []
    if cfg.select == "ablation":
        train_ids = set(split.train_ids)
        val = [e for e in contrast_examples("refusal") if e.id in train_ids and e.label == "harmful"][: cfg.select_prompts]
        best, selection = select_by_ablation(model, direction, val, model.n_layers, baseline, pairs, cfg.coherence_floor,
                                             foreign)
    layers = cfg.layers or default_layers(best, model.n_layers, cfg.layer_window)
    with progress() as bar:
        task = bar.add_task("steering", total=2 + (1 + cfg.random_controls) * (1 + len(layers) * len(cfg.ratios)), info="")
        step = lambda: bar.advance(task)  # noqa: E731
        record("ablate on harmful", harmful, [], None, 0.0, "unsteered"); step()
        ablate = from_direction(direction, model, range(model.n_layers), at=best, op="ablate", label="refusal dir",
                                allow_foreign=foreign)  # one vector at every layer; so are its random controls
        record("ablate on harmful", harmful, [ablate], "all", 0.0, "refusal dir"); step()
        for seed in range(cfg.random_controls):
            record("ablate on harmful", harmful, [random_like(ablate, seed)], "all", 0.0, f"random {seed}"); step()
        record("add on benign", benign, [], None, 0.0, "unsteered")
        for layer in layers:
            norm = prompt_residual_norm(cache, layer)
            for ratio in cfg.ratios:
                add = from_direction(direction, model, [layer], op="add", alpha=ratio * norm, label="refusal dir",
                                     allow_foreign=foreign)
                record("add on benign", benign, [add], layer, ratio, "refusal dir"); step()
                for seed in range(cfg.random_controls):
                    record("add on benign", benign, [random_like(add, seed)], layer, ratio, f"random {seed}"); step()
    return steer_result(cfg, "refusal", rows, answers, best, {"harmful": len(harmful), "benign": len(benign)},
                        model.fingerprint, selection=selection)
