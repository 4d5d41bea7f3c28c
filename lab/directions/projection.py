"""Trait projections: harmful and benign prompts projected on the refusal vector, for the base model
and an EM organism, with the organism-minus-base difference and CIs.

The vector is fitted on the reference model's train split (its best held-out layer); projections
are of held-out prompts only, paired by prompt between the two models. The reference model is
`--model` plus `--adapters` (default: the base model); the organism is `--model` plus `--organism`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lab.core.errors import BadInput
from lab.core.io import out_folder, write_rows
from lab.core.records import Record
from lab.directions.contrasts import contrast_cache
from lab.directions.fit import fit_contrast
from lab.directions.options import AnalysisOptions
from lab.stats.estimate import Estimate
from lab.stats.metrics import bootstrap_ci


@dataclass
class ProjectionConfig(AnalysisOptions):
    """Mean projections of held-out prompts on a trait vector, base vs organism, with CIs."""

    organism: str = field(default="", metadata={"help": "adapter folder of the EM organism"})
    contrast: str = field(default="refusal", metadata={"help": "trait contrast (refusal or code_mode)"})
    method: str = field(default="mean_diff", metadata={"help": "direction method"})


@dataclass(frozen=True)
class ProjectionRow(Record):
    """Mean projection of one class's held-out prompts on one model ("base", "organism" or
    "organism - base", paired by prompt), with its bootstrap CI."""

    prompts: str
    model: str
    mean: Estimate
    layer: int

    def to_row(self) -> dict:
        """The flat table row (`rows.json` / `.csv`)."""
        return {"prompts": self.prompts, "model": self.model, "mean projection": self.mean.value, "lo": self.mean.lo,
                "hi": self.mean.hi, "n": self.mean.n, "layer": self.layer}


@dataclass(frozen=True)
class ProjectionResult(Record):
    config: ProjectionConfig
    contrast: str
    method: str
    layer: int
    rows: list[ProjectionRow]
    out: str


def _mean(x):
    return x.mean(-1)


def project_traits(cfg: ProjectionConfig) -> ProjectionResult:
    """Held-out mean projections of each class on the trait vector, for the reference model and the
    organism; write the rows under `<out>/trait_projection/<contrast>/`."""
    if not cfg.organism:
        raise BadInput("--organism ADAPTER_DIR is required")
    base_cache, contrast = contrast_cache(cfg.view(), cfg.contrast, cfg.cache_dir, cfg.storage, cfg.limit, "reference")
    org_cache, _ = contrast_cache(cfg.view([cfg.organism]), cfg.contrast, cfg.cache_dir, cfg.storage, cfg.limit,
                                  "organism")
    fit = fit_contrast(base_cache, contrast.positive, [cfg.method], contrast.pooling, cfg.test_fraction,
                       cfg.seed, 200, negative_label=contrast.negative, contrast=contrast.name)
    direction = fit.directions[cfg.method]
    layer = direction.record.best_layer
    split = fit.split
    proj = {name: direction.project(cache.features(layer, contrast.pooling), layer)
            for name, cache in (("base", base_cache), ("organism", org_cache))}
    rows = []
    for cls, label in ((1, contrast.positive), (0, contrast.negative)):
        idx = split.rows[split.test[split.y[split.test] == cls]]  # cache rows of the held-out examples
        b, o = proj["base"][idx], proj["organism"][idx]
        for name, values in (("base", b), ("organism", o), ("organism - base", o - b)):
            v, lo, hi = bootstrap_ci(_mean, values, n_boot=cfg.n_boot, seed=cfg.seed)
            rows.append(ProjectionRow(label, name, Estimate(float(v), float(lo), float(hi), int(len(idx))), layer))
    out = out_folder(cfg.out, f"trait_projection/{contrast.name}")
    write_rows([r.to_row() for r in rows], out / "rows")
    return ProjectionResult(cfg, contrast.name, cfg.method, layer, rows, str(out))
