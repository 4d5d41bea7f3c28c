"""Trait projections (seed 000's table): harmful and benign prompts projected on the refusal
vector, for the base model and an EM organism, with the organism-minus-base difference and CIs.

    python -m experiments.trait_projection --organism runs/medical/adapter

The vector is fitted on the reference model's train split (its best held-out layer); projections
are of held-out prompts only, paired by prompt between the two models. The reference model is
`--model` plus `--adapters` (default: the base model); the organism is `--model` plus `--organism`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


from experiments.common import cli
from lab.core.io import out_folder, write_summary
from lab.directions.contrasts import contrast_cache
from lab.directions.options import AnalysisOptions
from lab.stats.estimate import format_ci
from lab.core.console import console, table
from lab.directions import fit_contrast
from lab.core.errors import BadInput
from lab.core.io import write_rows
from lab.stats.metrics import bootstrap_ci


@dataclass
class TraitProjectionConfig(AnalysisOptions):
    """Mean projection on a trait vector, base vs organism."""

    organism: str = field(default="", metadata={"help": "adapter folder of the EM organism"})
    contrast: str = field(default="refusal", metadata={"help": "trait contrast (refusal or code_mode)"})
    method: str = field(default="mean_diff", metadata={"help": "direction method"})


def _mean(x):
    return x.mean(-1)


def run(cfg: TraitProjectionConfig) -> dict:
    if not cfg.organism:
        raise BadInput("--organism ADAPTER_DIR is required")
    base_cache, contrast = contrast_cache(cfg.view(), cfg.contrast, cfg.cache_dir, cfg.storage, cfg.limit, "reference")
    org_cache, _ = contrast_cache(cfg.view([cfg.organism]), cfg.contrast, cfg.cache_dir, cfg.storage, cfg.limit, "organism")
    fit = fit_contrast(base_cache, contrast.positive, [cfg.method], contrast.pooling, cfg.test_fraction,
                       cfg.seed, 200, negative_label=contrast.negative, contrast=contrast.name)
    direction = fit.directions[cfg.method]
    layer = direction.record.best_layer
    split = fit.split
    rows = []
    proj = {}
    for name, cache in (("base", base_cache), ("organism", org_cache)):
        proj[name] = direction.project(cache.features(layer, contrast.pooling), layer)
    for cls, label in ((1, contrast.positive), (0, contrast.negative)):
        idx = split.rows[split.test[split.y[split.test] == cls]]  # cache rows of the held-out examples
        b, o = proj["base"][idx], proj["organism"][idx]
        for name, values in (("base", b), ("organism", o), ("organism - base", o - b)):
            v, lo, hi = bootstrap_ci(_mean, values, n_boot=cfg.n_boot, seed=cfg.seed)
            rows.append({"prompts": label, "model": name, "mean projection": float(v), "lo": float(lo),
                         "hi": float(hi), "n": int(len(idx)), "layer": layer})
    out = out_folder(cfg.out, f"trait_projection/{contrast.name}")
    write_rows(rows, out / "rows")
    console.print(table(f"{contrast.name} vector ({cfg.method}, layer {layer}): held-out mean projections",
                        [{"prompts": r["prompts"], "model": r["model"], "n": r["n"],
                          "mean projection [95% CI]": format_ci(r["mean projection"], r["lo"], r["hi"], 2)} for r in rows]))
    return write_summary(out, cfg, layer=layer, rows=rows)


main = cli(TraitProjectionConfig, run)


if __name__ == "__main__":
    main()
