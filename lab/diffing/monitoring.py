"""Monitoring a fine-tune along base-model trait directions (Chen et al. 2025, "Persona vectors").

Three directions are fitted on the *base* model, as the study fits them (difference of means,
best held-out layer, the contrast's own pooling):

    EM         misaligned vs aligned style-matched answers to general questions (mean over response tokens)
    refusal    harmful vs benign requests (last prompt token)
    code mode  code vs prose requests (last prompt token)

Per model (a checkpoint of a trajectory), the *shift* along a direction is the mean over the
contrast's held-out examples of proj(h_model) − proj(h_base), paired by example, with a
bootstrap CI, beside the shift along a random unit direction at the same layer (the control:
a fine-tune moves activations in every direction somewhat). Its EM score is judge-free
(`lab.diffing.checkpoints.em_score`: misaligned − aligned answer log-prob per general
question, usual and terse styles). Across models, `correlation_ci` gives Pearson r between
shift and EM score; per question, the last-prompt-token projection on the EM direction is
set against that question's score (bootstrap over questions, so a question seen by many
checkpoints counts once).

Everything a model contributes is cached: residuals of the contrasts at the direction's
layer (HDF5, `lab.cache`) and the EM scores (JSON keyed by the model fingerprint), so a rerun
reads files and loads no model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from jaxtyping import Float

from lab.cache import ActivationCache
from lab.core.budget import WallBudget
from lab.core.config import OldFlag, parse_pairs
from lab.directions.options import AnalysisOptions
from lab.training.checkpoints import evenly, run_checkpoints
from lab.directions.contrasts import CONTRASTS, contrast_examples, ensure_cache
from lab.core.errors import BadInput
from lab.stats.estimate import Estimate, mean_ci
from lab.diffing.checkpoints import EmScore, em_score
from lab.models import LazyModel

# (monitor name, contrast): the pooling is the contrast's own
MONITORED: tuple[tuple[str, str], ...] = (("EM", "general_answers"), ("refusal", "refusal"), ("code mode", "code_mode"))


@dataclass
class Monitor:
    """One base-model direction: its unit vector at its best held-out layer, the held-out rows
    (cache rows of the contrast) its shifts are measured on, and a random control of the same layer."""

    name: str
    contrast: str
    pooling: str
    layer: int
    vector: Float[np.ndarray, " d"]
    random: Float[np.ndarray, " d"]
    held_out: np.ndarray  # cache rows never fitted on
    heldout_auroc: float
    limit: int | None = None

    @property
    def hook(self) -> str:
        return f"blocks.{self.layer}.hook_resid_post"


@dataclass
class Shift:
    """A model's mean paired shift along a monitor (and along its random control)."""

    monitor: str
    layer: int
    shift: Estimate
    random: Estimate


def unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return (v / np.linalg.norm(v)).astype(np.float32)


def fit_monitors(base: LazyModel, cache_dir: str | Path, storage: str = "float32", limit: int | None = None,
                 test_fraction: float = 0.25, seed: int = 0, layer_from: int | None = None) -> dict[str, Monitor]:
    """The three monitored directions, fitted on the base model's cached contrasts (train split), each at
    its best held-out layer at or above `layer_from` (None: half depth). Why not any layer: refusal and
    code mode separate perfectly from layer 1 on, so an unrestricted argmax picks an early layer that a
    mid-depth adapter (the rank-1 organisms write at half depth) cannot move at all."""
    from lab.directions import fit_contrast

    out = {}
    for name, contrast_name in MONITORED:
        c = CONTRASTS[contrast_name]
        cache = ensure_cache(base, contrast_examples(contrast_name, limit), cache_dir, storage_dtype=storage)
        fit = fit_contrast(cache, c.positive, ["mean_diff"], c.pooling, test_fraction, seed, 200,
                           negative_label=c.negative, contrast=c.name)
        d = fit.directions["mean_diff"]
        start = base.n_layers // 2 if layer_from is None else layer_from
        aurocs = {L: a for L, a in zip(d.record.layers, d.record.heldout_auroc) if L >= start}
        if not aurocs:
            raise BadInput(f"layer_from {start} is past the model's last layer ({base.n_layers - 1})")
        layer = max(aurocs, key=lambda L: aurocs[L])
        rng = np.random.default_rng([seed, layer, len(out)])
        out[name] = Monitor(name, contrast_name, c.pooling, layer, d.at(layer).numpy().astype(np.float32),
                            unit(rng.standard_normal(cache.d_model)), np.sort(fit.split.rows[fit.split.test]),
                            float(aurocs[layer]), limit)
    return out


def monitor_cache(handle: LazyModel, monitor: Monitor, cache_dir: str | Path, storage: str = "float32"
                  ) -> ActivationCache:
    """The model's residuals on the monitor's contrast, at the monitor's layer only (found by key, else built)."""
    return ensure_cache(handle, contrast_examples(monitor.contrast, monitor.limit), cache_dir,
                        hooks=[monitor.hook], storage_dtype=storage)


def shift(base: ActivationCache, model: ActivationCache, monitor: Monitor, n_boot: int = 1000, seed: int = 0) -> Shift:
    """Mean over held-out examples of proj(model) − proj(base), paired by example (and the random control)."""
    if base.ids != model.ids:
        raise BadInput(f"{monitor.name}: base and model caches hold different examples")
    rows = monitor.held_out
    diff = (model.features(monitor.layer, monitor.pooling, rows).astype(np.float64)
            - base.features(monitor.layer, monitor.pooling, rows).astype(np.float64))
    return Shift(monitor.name, monitor.layer, mean_ci(diff @ monitor.vector, n_boot, seed),
                 mean_ci(diff @ monitor.random, n_boot, seed))


def last_token_projection(cache: ActivationCache, monitor: Monitor) -> dict[str, float]:
    """Per question (group): the last-prompt-token projection on the monitor (answer contrasts
    hold two answers per question; causal attention makes their prompt tokens identical)."""
    groups = cache.groups
    if groups is None:
        raise BadInput(f"{monitor.contrast}: per-question projection needs a paired answer contrast")
    X = cache.features(monitor.layer, "last")
    out: dict[str, float] = {}
    for g, x in zip(groups, X):
        out.setdefault(g, float(x.astype(np.float64) @ monitor.vector))
    return out


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def correlation_ci(x: Sequence[float], y: Sequence[float], groups: Sequence[str] | None = None, n_boot: int = 1000,
                   seed: int = 0) -> Estimate:
    """Pearson r with a percentile bootstrap CI; with `groups`, whole groups are resampled
    (a question scored under many checkpoints is one unit, not many)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) != len(y):
        raise BadInput(f"correlation of {len(x)} against {len(y)} values")
    r = pearson(x, y)
    if np.isnan(r):
        return Estimate(float("nan"), float("nan"), float("nan"), len(x))
    labels = np.asarray(groups if groups is not None else np.arange(len(x)).astype(str))
    units = np.unique(labels)
    members = [np.flatnonzero(labels == u) for u in units]
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(units), len(units))])
        rb = pearson(x[idx], y[idx])
        if not np.isnan(rb):
            reps.append(rb)
    lo, hi = np.percentile(reps, [2.5, 97.5]) if reps else (float("nan"), float("nan"))
    return Estimate(r, float(lo), float(hi), len(units))


@dataclass
class ModelPoint:
    """One monitored model: a checkpoint of a run (step 0: the base model)."""

    run: str
    step: int
    shifts: dict[str, Shift]
    em_usual: Estimate  # Δbase, paired by question
    em_terse: Estimate
    projections: dict[str, float] = field(default_factory=dict)  # question -> last-token projection on EM
    scores: dict[str, float] = field(default_factory=dict)  # question -> usual-style EM score (raw)

    def row(self) -> dict:
        out = {"run": self.run, "step": self.step}
        for name, s in self.shifts.items():
            out.update({f"shift {name}": s.shift.value, f"shift {name} lo": s.shift.lo, f"shift {name} hi": s.shift.hi,
                        f"random {name}": s.random.value, f"random {name} lo": s.random.lo,
                        f"random {name} hi": s.random.hi, f"layer {name}": s.layer})
        for style, e in (("usual", self.em_usual), ("terse", self.em_terse)):
            out.update({f"EM {style}": e.value, f"EM {style} lo": e.lo, f"EM {style} hi": e.hi})
        return out


def measure(handle: LazyModel, base_em: EmScore, monitors: dict[str, Monitor], base_caches: dict[str, ActivationCache],
            cache_dir: str | Path, run: str, step: int, storage: str = "float32", eval_limit: int | None = None,
            n_boot: int = 1000, seed: int = 0) -> ModelPoint:
    """Shifts, EM score (Δbase) and per-question projections of one model (cached pieces reused)."""
    shifts, caches = {}, {}
    for name, m in monitors.items():
        caches[name] = monitor_cache(handle, m, cache_dir, storage)
        shifts[name] = shift(base_caches[name], caches[name], m, n_boot, seed)
    em = em_score(handle, cache_dir, eval_limit)
    if em.ids != base_em.ids:
        raise BadInput("EM scores of the model and the base model cover different questions")
    proj = last_token_projection(caches["EM"], monitors["EM"])
    return ModelPoint(run, step, shifts, mean_ci(em.usual - base_em.usual, n_boot, seed),
                      mean_ci(em.terse - base_em.terse, n_boot, seed), proj, dict(zip(em.ids, em.usual.tolist())))


def correlations(points: Sequence[ModelPoint], monitors: dict[str, Monitor], n_boot: int = 1000, seed: int = 0
                 ) -> list[dict]:
    """Across models: r(shift along each monitor, EM Δbase), beside r for its random control."""
    rows = []
    for style in ("usual", "terse"):
        y = [getattr(p, f"em_{style}").value for p in points]
        for name in monitors:
            for kind in ("shift", "random"):
                x = [getattr(p.shifts[name], kind).value for p in points]
                r = correlation_ci(x, y, None, n_boot, seed)
                rows.append({"x": f"{'shift' if kind == 'shift' else 'random-direction shift'} along {name}",
                             "y": f"EM {style} Δbase", "r": r.value, "lo": r.lo, "hi": r.hi, "n models": r.n})
    return rows


def per_question(points: Sequence[ModelPoint], held_out: set[str] | None, n_boot: int = 1000, seed: int = 0) -> dict:
    """r(last-prompt-token EM projection, the answer's EM score) over (model, question) pairs,
    resampling questions; `held_out`: only the questions the EM direction was not fitted on."""
    xs, ys, gs = [], [], []
    for p in points:
        for q, v in p.projections.items():
            if q in p.scores and (held_out is None or q in held_out):
                xs.append(v), ys.append(p.scores[q]), gs.append(q)
    pooled = correlation_ci(xs, ys, gs, n_boot, seed)
    # within model: does the projection rank questions the way the scores do? (mean r over models)
    within = [pearson([p.projections[q] for q in qs], [p.scores[q] for q in qs])
              for p in points for qs in [[q for q in p.projections if q in p.scores and (held_out is None or q in held_out)]]]
    within = [r for r in within if not np.isnan(r)]
    return {"pooled": pooled, "within_model_mean_r": float(np.mean(within)) if within else float("nan"),
            "n_pairs": len(xs), "n_models": len(points), "x": xs, "y": ys, "groups": gs}


# --------------------------------------------------------------------------- the monitor verb's run


@dataclass
class MonitorConfig(AnalysisOptions):
    """Shift along EM / refusal / code-mode directions per checkpoint, against the EM score."""

    OLD_FLAGS = {"--budget-min": OldFlag("--wall-budget-s", scale=60)}

    runs: list[str] = field(default_factory=list, metadata={"help": "training folders: NAME=FOLDER (checkpoints/step-*)"})
    max_checkpoints: int = field(default=0, metadata={"help": "per run, at most N checkpoints, evenly spaced (0: all)"})
    eval_limit: int = field(default=0, metadata={"help": "general questions per EM score (0: all 48)"})
    layer_from: int = field(default=-1, metadata={
        "help": "each direction at its best held-out layer at or above this one (-1: half depth)"})
    wall_budget_s: float = field(default=0.0, metadata={"help": "measure no new checkpoint past this many seconds "
                                                                "(0: none)"})


def parse_runs(specs: list[str]) -> dict[str, Path]:
    if not specs:
        raise BadInput("--runs NAME=FOLDER is required (a lab.training.lora folder with checkpoints/step-*)")
    runs = {name: Path(folder) for name, folder in parse_pairs("--runs", specs, "FOLDER").items()}
    for folder in runs.values():
        run_checkpoints(folder)  # a folder without checkpoints fails here, before any work
    return runs


@dataclass
class MonitorRun:
    """What `monitor_checkpoints` measured: the directions, one point per model, and their correlations."""

    runs: dict[str, Path]
    monitors: dict[str, Monitor]
    points: list[ModelPoint]
    correlations: list[dict]
    per_question: dict[str, dict]  # "held-out questions" / "all questions" -> `per_question`
    skipped: list[str]
    seconds: float


def monitor_checkpoints(cfg: MonitorConfig) -> MonitorRun:
    """Fit the monitored directions on the base model, then measure the base model and every
    (evenly spaced) checkpoint of every run; caches and scores are reused, so a rerun loads no model."""
    from lab.core.console import progress

    cfg.refuse_adapters("--model (step 0) and the checkpoints under --runs")
    runs = parse_runs(cfg.runs)
    budget = WallBudget(cfg.wall_budget_s)
    limit = cfg.limit or None
    base = cfg.view([])
    monitors = fit_monitors(base, cfg.cache_dir, cfg.storage, limit, cfg.test_fraction, cfg.seed,
                            None if cfg.layer_from < 0 else cfg.layer_from)
    base_caches = {n: ensure_cache(base, contrast_examples(m.contrast, limit), cfg.cache_dir, storage_dtype=cfg.storage)
                   for n, m in monitors.items()}
    base_em = em_score(base, cfg.cache_dir, cfg.eval_limit or None)
    args = dict(storage=cfg.storage, eval_limit=cfg.eval_limit or None, n_boot=cfg.n_boot, seed=cfg.seed)
    points = [measure(base, base_em, monitors, base_caches, cfg.cache_dir, "base", 0, **args)]
    todo = [(name, step, ck) for name, folder in runs.items()
            for step, ck in evenly(run_checkpoints(folder), cfg.max_checkpoints)]
    with progress() as bar:
        task = bar.add_task("checkpoints", total=len(todo), info="")
        for name, step, ck in todo:
            if budget.spent():
                budget.skipped.append(f"{name} step {step}")
                continue
            bar.update(task, info=f"{name} step {step}")
            points.append(measure(cfg.view([str(ck)]), base_em, monitors, base_caches, cfg.cache_dir, name, step,
                                  **args))
            bar.advance(task)
    trained = [p for p in points if p.run != "base"]
    unseen = {base_caches["EM"].groups[i] for i in monitors["EM"].held_out}
    pq = {"held-out questions": per_question(points, unseen, cfg.n_boot, cfg.seed),
          "all questions": per_question(points, None, cfg.n_boot, cfg.seed)}
    return MonitorRun(runs, monitors, points, correlations(trained, monitors, cfg.n_boot, cfg.seed), pq,
                      budget.skipped, budget.elapsed())
