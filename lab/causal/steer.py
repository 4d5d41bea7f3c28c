"""Steering sweeps with controls: the shared config, rows and result of the refusal validation
(`lab.causal.refusal.refusal_validation`) and EM steering (`lab.causal.em_steering.em_addition`).

Strengths are given as ratios of the layer's mean residual norm (`prompt_residual_norm`;
trait-interp found coherence collapses beyond ~1.15x). Every steered cell sits beside random
directions of the same structure, norm, op, strength and prompts, and a coherence guard (the
change in log-prob per token of neutral reference text). The best addition under the
coherence floor is the result's `pick`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lab.core.config import OldFlag
from lab.causal.controls import SteeringOptions
from lab.core.io import out_folder, write_json_atomic, write_rows
from lab.core.records import Record
from lab.directions import Direction, Split, fit_contrast
from lab.directions.options import AnalysisOptions
from lab.judge.client import DEFAULT_JUDGE_MODEL, JudgeScheme
from lab.stats.estimate import Estimate


@dataclass
class SteerConfig(SteeringOptions, AnalysisOptions):
    """Steering sweeps (alpha x layer) with random-direction controls and a coherence guard."""

    OLD_FLAGS = {"--random-seeds": OldFlag("--random-controls")}

    target: Literal["refusal", "em"] = field(default="refusal", metadata={"help": "what to steer"})
    organism: str = field(default="", metadata={"help": "adapter of the EM organism (target em)"})
    layers: list[int] = field(default_factory=list, metadata={"help": "layers to steer (default: best +- window)"})
    layer_window: int = field(default=2, metadata={"help": "default layers: best-window, best, best+window (0: best)"})
    ratios: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.5],
                                metadata={"help": "alpha as a multiple of the layer's mean residual norm"})
    random_controls: int = field(default=2, metadata={"help": "random-direction controls per cell"})
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
        "help": "saved direction file (e.g. from `emlab sweep-layers`) instead of fitting one; it must have been fitted on "
                "the steered model (refusal) or the organism (em), unless --allow-foreign-direction"})


@dataclass
class RefusalSteerConfig(SteerConfig):
    """Refusal rates and log-odds with the refusal direction ablated and added, beside matched random controls.

    `emlab steer-refusal`: the refusal validation (Arditi et al. 2024) of `lab.causal.refusal`."""

    HIDDEN = ("target", "organism", "judge_base_url", "judge_model", "judge_scheme")  # not options of this verb


@dataclass
class EmSteerConfig(SteerConfig):
    """The EM-score shift of a base model with an organism's misalignment direction added, by layer x strength, beside random controls.

    `emlab steer-em`: EM steering (`lab.causal.em_steering`); the direction comes from `--model`
    plus `--organism` (an adapter folder), and is added to `--model` plus `--adapters`."""

    target: Literal["refusal", "em"] = field(default="em", metadata={"help": "what to steer"})
    HIDDEN = ("target", "select", "select_prompts")  # not options of this verb


@dataclass(frozen=True)
class SteerRow(Record):
    """One steering cell: an intervention (or none, or a random control) on a set of prompts.

    `layer`: None unsteered, "all" for an edit at every layer, else the layer steered. Refusal
    rows carry `refusal` and `logodds_shift`; EM rows `em_shift` (and, with a judge, `judged_em`).
    """

    experiment: str
    condition: str
    layer: int | str | None
    ratio: float
    coherence: Estimate  # neutral-text log-prob change per token (0 with no edit)
    refusal: Estimate | None = None  # refusal rate of greedy answers
    logodds_shift: Estimate | None = None  # refusal - compliance log-odds, minus the unsteered prompts'
    em_shift: Estimate | None = None  # usual-style EM score minus the unsteered model's
    judged_em: Estimate | None = None  # betley EM rate of sampled answers (with an LLM judge)
    judged_coherent: float | None = None

    def effect(self, metric: str) -> Estimate:
        return getattr(self, metric)

    def to_row(self) -> dict:
        """The flat table row (`rows.json` / `.csv`)."""
        row = {"experiment": self.experiment, "condition": self.condition, "layer": self.layer, "ratio": self.ratio}
        if self.refusal is not None:
            row.update(refusal=self.refusal.value, refusal_lo=self.refusal.lo, refusal_hi=self.refusal.hi,
                       n=self.refusal.n)
            row.update(_flat("logodds_shift", self.logodds_shift))
        if self.em_shift is not None:
            row.update(_flat("em_shift", self.em_shift))
        row.update(_flat("coherence", self.coherence))
        if self.judged_em is not None:
            row.update(_flat("judged_em", self.judged_em), judged_coherent=self.judged_coherent,
                       judged_n=self.judged_em.n)
        return row


def _flat(name: str, e: Estimate) -> dict:
    return {name: e.value, f"{name}_lo": e.lo, f"{name}_hi": e.hi}


@dataclass(frozen=True)
class LayerSelection(Record):
    """One candidate layer of the refusal direction (select ablation): its ablation's effect on train prompts."""

    layer: int
    logodds_shift: float
    coherence: float


@dataclass(frozen=True)
class SteerResult(Record):
    config: SteerConfig
    target: str  # "refusal" or "em"
    best_layer: int  # the direction's layer
    rows: list[SteerRow]
    pick: SteerRow | None  # the strongest addition whose coherence change stays above the floor
    counts: dict[str, int]  # prompts / questions scored
    model: str  # fingerprint of the steered model
    out: str
    selection: list[LayerSelection] = field(default_factory=list)  # refusal, select ablation
    unsteered_judged_em: Estimate | None = None  # em with a judge: the unsteered model's judged EM rate
    unsteered_judged_coherent: float | None = None

    @property
    def metric(self) -> str:
        return "refusal" if self.target == "refusal" else "em_shift"


def fitted_or_loaded(cfg: SteerConfig, cache, positive: str, negative: str, pooling: str, contrast: str
                     ) -> tuple[Direction, Split]:
    """The difference-of-means direction fitted on `cache`'s train split, or `--direction`'s file,
    with the contrast's split (its held-out examples are what the steering is scored on)."""
    fit = fit_contrast(cache, positive, ["mean_diff"], pooling, cfg.test_fraction, cfg.seed, 200,
                       negative_label=negative, contrast=contrast)
    return (Direction.load(cfg.direction) if cfg.direction else fit.directions["mean_diff"]), fit.split


def steer_result(cfg: SteerConfig, target: str, rows: list[SteerRow], answers: dict, best: int, counts: dict,
                 model: str, **extra) -> SteerResult:
    """Pick the best addition under the coherence floor; write rows.json/.csv and answers.json under
    `<out>/steer/<target>/`."""
    out = out_folder(cfg.out, f"steer/{target}")
    write_rows([r.to_row() for r in rows], out / "rows")
    write_json_atomic(out / "answers.json", answers)
    metric = "refusal" if target == "refusal" else "em_shift"
    steered = [r for r in rows if r.condition not in ("unsteered",) and not r.condition.startswith("random")]
    ok = [r for r in steered if r.experiment.startswith("add") and r.coherence.value >= cfg.coherence_floor]
    pick = max(ok, key=lambda r: r.effect(metric).value) if ok else None
    return SteerResult(cfg, target, best, rows, pick, counts, model, str(out), **extra)


def run_steering(cfg: SteerConfig) -> SteerResult:
    """The refusal validation or EM steering, by `cfg.target`."""
    from lab.causal.em_steering import em_addition
    from lab.causal.refusal import refusal_validation

    return refusal_validation(cfg) if cfg.target == "refusal" else em_addition(cfg)
