"""Pooling comparison: last token vs mean over prompt vs mean over response vs first-k response tokens.

    result = compare_poolings(PoolingConfig(contrast="medical_answers"))
    result.best          # PoolingBest per (pooling, method): best layer and AUROC, or why it is undefined

For answer contrasts the last *prompt* token precedes the answer, so it cannot tell paired
aligned/misaligned answers apart: its features are identical, recorded in `degenerate`
(the built-in sanity check).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lab.core.errors import BadInput
from lab.core.io import out_folder, write_rows
from lab.core.records import Record
from lab.directions.contrasts import contrast_cache
from lab.directions.fit import fit_contrast
from lab.directions.options import AnalysisOptions
from lab.directions.sweep import BestLayer, LayerScore, best_layer

PROMPT_ONLY = ("last", "mean_prompt")
WITH_ANSWER = ("last", "mean_prompt", "mean_response", "first_k")


@dataclass
class PoolingConfig(AnalysisOptions):
    """Held-out AUROC by layer per pooling (last, mean prompt, mean response, first-k) on a contrast."""

    contrast: str = field(default="medical_answers", metadata={"help": "contrast name"})
    methods: list[str] = field(default_factory=lambda: ["probe", "mean_diff"], metadata={"help": "methods"})
    first_k: int = field(default=8, metadata={"help": "k for first_k pooling"})


@dataclass(frozen=True)
class PoolingBest(Record):
    """One method under one pooling: its best layer and the mean AUROC over layers; both None where
    the pooling gives the two classes identical features (`degenerate` says why)."""

    pooling: str
    method: str
    best: BestLayer | None
    mean_auroc: float | None


@dataclass(frozen=True)
class PoolingResult(Record):
    config: PoolingConfig
    contrast: str
    poolings: tuple[str, ...]
    scores: list[LayerScore]  # every (pooling, method, layer), the random direction included
    best: list[PoolingBest]
    degenerate: dict[str, str]  # pooling -> why no direction could be fitted
    out: str


def compare_poolings(cfg: PoolingConfig) -> PoolingResult:
    """Fit the methods (and a random direction) under every pooling the contrast allows; write the
    rows under `<out>/pooling/<contrast>/`."""
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
    scores = [LayerScore.from_row(r) for r in rows]
    best = []
    for pooling in poolings:
        for method in cfg.methods:
            if pooling in degenerate:
                best.append(PoolingBest(pooling, method, None, None))
                continue
            mine = [s for s in scores if s.pooling == pooling]
            aurocs = [s.auroc.value for s in mine if s.method == method]
            best.append(PoolingBest(pooling, method, best_layer(mine, method), sum(aurocs) / len(aurocs)))
    return PoolingResult(cfg, contrast.name, poolings, scores, best, degenerate, str(out))
