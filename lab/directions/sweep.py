"""The layer sweep: every direction method at every layer of a contrast, scored held out, best layers picked.

    result = sweep_layers(SweepConfig(contrast="refusal"))
    result.best                # BestLayer per method: its best held-out layer, AUROC with CI, random there
    result.random              # RandomBaseline: the random direction's mean AUROC over layers (and its range)
    result.scores              # LayerScore per (method, layer): the whole sweep

`best_layer(scores, method)` is the one best-layer pick (sweeps, poolings, transfers): the
highest held-out AUROC, beside the random direction's AUROC at that same layer. The random
direction's own row is its mean over layers: its maximum over 30 noisy layers would be a
selection-biased number, not a baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from lab.core.io import out_folder, write_rows
from lab.core.records import Record
from lab.directions.contrasts import contrast_cache
from lab.directions.fit import fit_contrast
from lab.directions.options import AnalysisOptions
from lab.directions.solvers import DEFAULT_METHODS
from lab.stats.estimate import Estimate


@dataclass
class SweepConfig(AnalysisOptions):
    """Held-out AUROC by layer for every direction method on a contrast, with the direction files."""

    contrast: str = field(default="refusal", metadata={"help": "refusal, code_mode, medical_answers, ..."})
    pooling: str = field(default="", metadata={"help": "feature pooling (default: the contrast's)"})
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS), metadata={"help": "methods"})
    sklearn_check: bool = field(default=True, metadata={"help": "compare the probe with sklearn per layer"})


@dataclass(frozen=True)
class LayerScore(Record):
    """One direction method at one layer, scored on held-out examples (CIs: stratified bootstrap)."""

    method: str
    layer: int
    pooling: str
    auroc: Estimate
    acc: Estimate
    sep_sd: Estimate  # Cohen's d of the projections
    sep_raw: float  # difference of the class means of the projections
    n_train: int
    sklearn_auroc: float | None = None  # the sklearn reference probe's held-out AUROC (probe rows of a sweep)

    @property
    def n_test(self) -> int:
        return self.auroc.n

    @classmethod
    def from_row(cls, r: dict) -> "LayerScore":
        """From a `fit_contrast` row (`auroc`, `auroc_lo`, ... `n_train`, `n_test`)."""
        est = lambda k: Estimate(r[k], r[f"{k}_lo"], r[f"{k}_hi"], r["n_test"])  # noqa: E731
        return cls(r["method"], r["layer"], r["pooling"], est("auroc"), est("acc"), est("sep_sd"), r["sep_raw"],
                   r["n_train"], r.get("sklearn_auroc"))

    def to_row(self) -> dict:
        """The flat table row (`rows.json` / `.csv`, for pandas): the fit's row, key for key."""
        row = {"method": self.method, "layer": self.layer, "pooling": self.pooling}
        for name in ("auroc", "acc", "sep_sd"):
            e = getattr(self, name)
            row.update({name: e.value, f"{name}_lo": e.lo, f"{name}_hi": e.hi})
        row.update(sep_raw=self.sep_raw, n_train=self.n_train, n_test=self.n_test)
        if self.sklearn_auroc is not None:
            row["sklearn_auroc"] = self.sklearn_auroc
        return row


@dataclass(frozen=True)
class BestLayer(Record):
    """A method at its best held-out layer, beside the random direction at that same layer."""

    method: str
    layer: int
    auroc: Estimate
    acc: float
    sep_sd: float
    random_at_layer: float | None  # the random direction's AUROC at `layer` (None: no random row there)
    n_train: int

    @property
    def n_test(self) -> int:
        return self.auroc.n


@dataclass(frozen=True)
class RandomBaseline(Record):
    """The random direction's held-out AUROC over layers: its mean and range (not a CI)."""

    mean: float
    low: float
    high: float


def best_layer(scores: Sequence[LayerScore], method: str) -> BestLayer:
    """`method`'s highest held-out AUROC over layers (the first such layer on a tie), with the random
    direction's AUROC at that layer where `scores` hold one."""
    mine = [s for s in scores if s.method == method]
    top = max(mine, key=lambda s: s.auroc.value)
    ctrl = next((s for s in scores if s.method == "random" and s.layer == top.layer), None)
    return BestLayer(method, top.layer, top.auroc, top.acc.value, top.sep_sd.value,
                     ctrl.auroc.value if ctrl is not None else None, top.n_train)


def random_baseline(scores: Sequence[LayerScore]) -> RandomBaseline:
    aurocs = np.array([s.auroc.value for s in scores if s.method == "random"])
    return RandomBaseline(float(aurocs.mean()), float(aurocs.min()), float(aurocs.max()))


def best_layers(scores: Sequence[LayerScore], methods: Sequence[str]) -> tuple[list[BestLayer], RandomBaseline | None]:
    """Every non-random method at its best layer, and the random baseline (None without a random method)."""
    best = [best_layer(scores, m) for m in methods if m != "random"]
    return best, (random_baseline(scores) if "random" in methods else None)


@dataclass(frozen=True)
class SweepResult(Record):
    """A layer sweep: the whole grid, each method's best layer and the random baseline, and its files."""

    config: SweepConfig
    contrast: str
    pooling: str
    model: str  # the cached model's name
    scores: list[LayerScore]
    best: list[BestLayer]
    random: RandomBaseline | None
    sklearn_max_diff: float | None  # max |AUROC(probe) - AUROC(sklearn)| over layers (None: not checked)
    cache: str
    out: str


def sklearn_probe_auroc(X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> list[float]:
    """Reference: a standardized sklearn LogisticRegression per layer, held-out AUROC."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    scores = []
    for layer_X in X:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        clf.fit(layer_X[train], y[train])
        scores.append(float(roc_auc_score(y[test], clf.decision_function(layer_X[test]))))
    return scores


def sweep_layers(cfg: SweepConfig) -> SweepResult:
    """Fit every method at every layer on the contrast's train split, score held out; write the rows
    (`rows.json` / `.csv`) and each method's direction file under `<out>/layer_sweep/<contrast>-<pooling>/`."""
    cache, contrast = contrast_cache(cfg.view(), cfg.contrast, cfg.cache_dir, cfg.storage, cfg.limit)
    pooling = cfg.pooling or contrast.pooling
    fit = fit_contrast(cache, contrast.positive, cfg.methods, pooling, cfg.test_fraction, cfg.seed,
                       cfg.n_boot, negative_label=contrast.negative, contrast=contrast.name)
    rows = fit.rows
    out = out_folder(cfg.out, f"layer_sweep/{contrast.name}-{pooling}")
    check = None
    if cfg.sklearn_check and "probe" in cfg.methods:
        split = fit.split
        ref = sklearn_probe_auroc(fit.features.cpu().numpy(), split.y, split.train, split.test)
        ours = [r["auroc"] for r in rows if r["method"] == "probe"]
        for r in rows:
            if r["method"] == "probe":
                r["sklearn_auroc"] = ref[fit.layers.index(r["layer"])]
        check = float(np.max(np.abs(np.array(ours) - np.array(ref))))
    write_rows(rows, out / "rows")
    for method, direction in fit.directions.items():
        direction.save(out / f"direction-{method}.safetensors")
    scores = [LayerScore.from_row(r) for r in rows]
    best, random = best_layers(scores, cfg.methods)
    return SweepResult(cfg, contrast.name, pooling, cache.attrs["model_name"], scores, best, random, check,
                       str(cache.path), str(out))


def direction_file(result: SweepResult, method: str) -> Path:
    """The saved direction of one method of a sweep."""
    return Path(result.out) / f"direction-{method}.safetensors"
