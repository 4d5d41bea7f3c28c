"""EM ablation (the Model Organisms table): remove an organism's misalignment direction, its
transferred twin from another organism, and random directions of the same norm; the judge-free,
style-matched EM score of each, paired by question, with CIs.

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
Δbase is clearly above zero, so it is None otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from lab.causal.controls import SteeringOptions
from lab.core.config import OldFlag, parse_pairs
from lab.core.console import progress
from lab.core.errors import BadInput
from lab.core.io import out_folder, write_rows
from lab.core.records import Record
from lab.data.formats import advice_split
from lab.directions import fit_contrast
from lab.directions.contrasts import CONTRASTS, contrast_cache
from lab.directions.options import AnalysisOptions
from lab.em.judge_free import in_domain_gaps, style_gaps_under
from lab.intervene.steering import Intervention, direction_vectors, random_vectors_like
from lab.stats.estimate import Estimate, mean_ci


@dataclass
class AblationConfig(SteeringOptions, AnalysisOptions):
    """Organisms' EM scores with misalignment directions ablated (own, transferred, random controls)."""

    OLD_FLAGS = {"--random-seeds": OldFlag("--random-controls")}

    organisms: list[str] = field(default_factory=list, metadata={"help": "NAME=ADAPTER_DIR pairs"})
    layers: Literal["all", "best"] = field(default="all", metadata={"help": "every layer, or the direction's best layer"})
    random_controls: int = field(default=3, metadata={"help": "random-direction controls"})
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


@dataclass(frozen=True)
class AblationRow(Record):
    """One organism's EM score under one condition: its Δbase, and its change from the unsteered organism."""

    organism: str
    condition: str  # "unsteered", "ablate own", "ablate transferred from X", "ablate random N"
    score: str  # "usual", "terse" or "in-domain"
    em_dbase: Estimate
    change: Estimate
    reduction: float | None  # 1 - Δbase / unsteered Δbase, where the unsteered Δbase CI is above 0

    def to_row(self, reduction: bool = True) -> dict:
        """The flat table row (`rows.json` / `.csv` are written without `reduction`)."""
        row = {"organism": self.organism, "condition": self.condition, "score": self.score,
               "em_dbase": self.em_dbase.value, "em_dbase_lo": self.em_dbase.lo, "em_dbase_hi": self.em_dbase.hi,
               "change": self.change.value, "change_lo": self.change.lo, "change_hi": self.change.hi,
               "n": self.em_dbase.n}
        return {**row, "reduction": self.reduction} if reduction else row


@dataclass(frozen=True)
class AblationResult(Record):
    config: AblationConfig
    rows: list[AblationRow]
    out: str


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


def ablate_em(cfg: AblationConfig) -> AblationResult:
    """Every organism's EM scores with its own, the other organisms' and random directions ablated;
    write the rows under `<out>/ablation/`."""
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
        task = bar.add_task("ablation", total=len(scored) * (1 + len(fitted) + cfg.random_controls), info="")
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
                                                          f"random {s}")) for s in range(cfg.random_controls)]
            unsteered = None
            for label, ivs in conditions:
                scores = em_scores(model, ivs, cfg, held_out, unseen)
                unsteered = unsteered or scores
                for score, values in scores.items():
                    rows.append(AblationRow(name, label, score, mean_ci(values - base_scores[name][score], cfg.n_boot,
                                                                        cfg.seed),
                                            mean_ci(values - unsteered[score], cfg.n_boot, cfg.seed), None))
                bar.advance(task)
            del model
    out = out_folder(cfg.out, "ablation")
    write_rows([r.to_row(reduction=False) for r in rows], out / "rows")
    return AblationResult(cfg, [_with_reduction(r, rows) for r in rows], str(out))


def _with_reduction(r: AblationRow, rows: list[AblationRow]) -> AblationRow:
    base = next(x for x in rows if x.organism == r.organism and x.score == r.score and x.condition == "unsteered")
    em_present = base.em_dbase.lo > 0
    return replace(r, reduction=(1 - r.em_dbase.value / base.em_dbase.value) if em_present else None)
