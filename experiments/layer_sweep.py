"""Layer sweep: every layer x every direction method on one contrast, held-out metrics with CIs.

    python -m experiments.layer_sweep --contrast refusal
    python -m experiments.layer_sweep --contrast medical_answers --adapters runs/medical/adapter
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from experiments.common import cli
from lab.directions.sweep import best_layers
from lab.core.io import out_folder
from lab.directions.contrasts import contrast_cache
from lab.directions.options import AnalysisOptions
from lab.core.config import config_dict
from lab.core.console import console, table
from lab.directions import DEFAULT_METHODS, fit_contrast
from lab.core.io import write_json_atomic, write_rows
from lab.reports.plots import lines_with_ci


@dataclass
class LayerSweepConfig(AnalysisOptions):
    """Layer sweep of direction methods on a contrast."""

    contrast: str = field(default="refusal", metadata={"help": "refusal, code_mode, medical_answers, ..."})
    pooling: str = field(default="", metadata={"help": "feature pooling (default: the contrast's)"})
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS), metadata={"help": "methods"})
    sklearn_check: bool = field(default=True, metadata={"help": "compare the probe with sklearn per layer"})


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


def run(cfg: LayerSweepConfig) -> dict:
    handle = cfg.view()
    cache, contrast = contrast_cache(handle, cfg.contrast, cfg.cache_dir, cfg.storage, cfg.limit)
    pooling = cfg.pooling or contrast.pooling
    fit = fit_contrast(cache, contrast.positive, cfg.methods, pooling, cfg.test_fraction, cfg.seed,
                       cfg.n_boot, negative_label=contrast.negative, contrast=contrast.name)
    rows, directions = fit.rows, fit.directions
    out = out_folder(cfg.out, f"layer_sweep/{contrast.name}-{pooling}")
    check = {}
    if cfg.sklearn_check and "probe" in cfg.methods:
        split = fit.split
        ref = sklearn_probe_auroc(fit.features.cpu().numpy(), split.y, split.train, split.test)
        ours = [r["auroc"] for r in rows if r["method"] == "probe"]
        for r in rows:
            if r["method"] == "probe":
                r["sklearn_auroc"] = ref[fit.layers.index(r["layer"])]
        check = {"max_abs_auroc_diff_vs_sklearn": float(np.max(np.abs(np.array(ours) - np.array(ref))))}
    write_rows(rows, out / "rows")
    for method, direction in directions.items():
        direction.save(out / f"direction-{method}.safetensors")
    best = best_layers(rows, cfg.methods)
    lines_with_ci(rows, "method", "layer", "auroc", out / "auroc_by_layer.png",
                  f"{contrast.description}: held-out AUROC ({pooling})", "AUROC", hline=0.5)
    console.print(table(f"layer sweep: {contrast.name} on {cache.attrs['model_name']}", best))
    if check:
        console.print(f"probe vs sklearn, max |AUROC diff| over layers: {check['max_abs_auroc_diff_vs_sklearn']:.4f}")
    summary = {"config": config_dict(cfg), "best": best, "cache": str(cache.path), "out": str(out), **check}
    write_json_atomic(out / "summary.json", summary)
    return summary


main = cli(LayerSweepConfig, run)


if __name__ == "__main__":
    main()
