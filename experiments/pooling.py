"""Pooling comparison: last token vs mean over prompt vs mean over response vs first-k response tokens.

    python -m experiments.pooling --contrast medical_answers
    python -m experiments.pooling --contrast refusal      # prompt-only: last vs mean_prompt

For answer contrasts the last *prompt* token precedes the answer, so it cannot tell paired
aligned/misaligned answers apart: its AUROC ~0.5 is the built-in sanity check.
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
from lab.reports.plots import lines_with_ci

PROMPT_ONLY = ("last", "mean_prompt")
WITH_ANSWER = ("last", "mean_prompt", "mean_response", "first_k")


@dataclass
class PoolingConfig(AnalysisOptions):
    """Compare feature poolings per layer on one contrast."""

    contrast: str = field(default="medical_answers", metadata={"help": "contrast name"})
    methods: list[str] = field(default_factory=lambda: ["probe", "mean_diff"], metadata={"help": "methods"})
    first_k: int = field(default=8, metadata={"help": "k for first_k pooling"})


def run(cfg: PoolingConfig) -> dict:
    cache, contrast = contrast_cache(cfg.view(), cfg.contrast, cfg.cache_dir, cfg.storage, cfg.limit)
    poolings = WITH_ANSWER if contrast.pooling == "mean_response" else PROMPT_ONLY
    rows, degenerate = [], {}
    for pooling in poolings:
        try:
            found = fit_contrast(cache, contrast.positive, cfg.methods + ["random"], pooling, cfg.test_fraction,
                                 cfg.seed, cfg.n_boot, negative_label=contrast.negative).rows
        except BadInput as exc:  # e.g. the last prompt token of paired answers: identical features
            degenerate[pooling] = str(exc)
            continue
        rows.extend({**r, "series": f"{pooling}/{r['method']}"} for r in found)
    out = out_folder(cfg.out, f"pooling/{contrast.name}")
    write_rows(rows, out / "rows")
    summary_rows = []
    for pooling in poolings:
        for method in cfg.methods:
            if pooling in degenerate:
                summary_rows.append({"pooling": pooling, "method": method, "best layer": "-",
                                     "AUROC [95% CI]": "n/a: classes have identical features here",
                                     "mean AUROC over layers": "n/a"})
                continue
            mine = [r for r in rows if r["pooling"] == pooling and r["method"] == method]
            top = max(mine, key=lambda r: r["auroc"])
            summary_rows.append({"pooling": pooling, "method": method, "best layer": top["layer"],
                                 "AUROC [95% CI]": format_ci(top["auroc"], top["auroc_lo"], top["auroc_hi"]),
                                 "mean AUROC over layers": f"{sum(r['auroc'] for r in mine) / len(mine):.3f}"})
    lines_with_ci([r for r in rows if r["method"] == cfg.methods[0]], "pooling", "layer", "auroc",
                  out / "auroc_by_pooling.png", f"{contrast.description}: {cfg.methods[0]} AUROC by pooling",
                  "AUROC", hline=0.5)
    console.print(table(f"pooling comparison: {contrast.name}", summary_rows))
    return write_summary(out, cfg, rows=summary_rows, degenerate=degenerate)


main = cli(PoolingConfig, run)


if __name__ == "__main__":
    main()
