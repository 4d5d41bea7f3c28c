"""The figures of each typed result, drawn into the result's own folder under fixed names.

`write_figures(result) -> [paths]`: analyses return data and write data files; their PNGs are
report output, drawn here (`auroc_by_layer.png`, `auroc_by_pooling.png`, `cosine_by_layer.png`,
`tradeoff.png`, `ablation.png`, `trajectory.png`). Verbs call it, and so does the study inside
each stage, so every stage leaves the same files a verb does.
"""

from __future__ import annotations

from functools import singledispatch
from pathlib import Path
from typing import Any

import numpy as np

from lab.causal.ablation import AblationResult
from lab.causal.steer import SteerResult
from lab.diffing.checkpoints import TrajectoryResult
from lab.directions.contrasts import CONTRASTS
from lab.directions.pooling import PoolingResult
from lab.directions.sweep import SweepResult
from lab.directions.transfer import TransferResult
from lab.reports import plots


@singledispatch
def write_figures(result: Any) -> list[Path]:
    """No figures for this result type."""
    return []


@write_figures.register
def _(r: SweepResult) -> list[Path]:
    rows = [s.to_row() for s in r.scores]
    return [plots.lines_with_ci(rows, "method", "layer", "auroc", Path(r.out) / "auroc_by_layer.png",
                                f"{CONTRASTS[r.contrast].description}: held-out AUROC ({r.pooling})", "AUROC", hline=0.5)]


@write_figures.register
def _(r: PoolingResult) -> list[Path]:
    method = r.config.methods[0]
    rows = [s.to_row() for s in r.scores if s.method == method]
    return [plots.lines_with_ci(rows, "pooling", "layer", "auroc", Path(r.out) / "auroc_by_pooling.png",
                                f"{CONTRASTS[r.contrast].description}: {method} AUROC by pooling", "AUROC", hline=0.5)]


@write_figures.register
def _(r: TransferResult) -> list[Path]:
    matrix = np.array(list(r.cosines.values()))
    return [plots.heatmap(matrix, list(r.cosines), [str(L) for L in r.layers], Path(r.out) / "cosine_by_layer.png",
                          f"cosine of {r.config.method} {r.contrast} directions across models")]


@write_figures.register
def _(r: SteerResult) -> list[Path]:
    metric = r.metric
    return [plots.scatter([x.coherence.value for x in r.rows], [x.effect(metric).value for x in r.rows],
                          [f"{x.condition[:6]} L{x.layer} x{x.ratio}" for x in r.rows], Path(r.out) / "tradeoff.png",
                          f"{r.target} steering: effect vs coherence", "neutral log-prob change per token (coherence)",
                          metric)]


@write_figures.register
def _(r: AblationResult) -> list[Path]:
    shown = [x for x in r.rows if x.score in ("usual", "in-domain")]
    return [plots.bars_with_ci([f"{x.organism} {x.score}: {x.condition}" for x in shown],
                               [x.em_dbase.value for x in shown], [x.em_dbase.lo for x in shown],
                               [x.em_dbase.hi for x in shown], Path(r.out) / "ablation.png",
                               "EM score under ablation, organism - base", "Δ log-prob (misaligned - aligned)")]


@write_figures.register
def _(r: TrajectoryResult) -> list[Path]:
    return [plots.lines_with_ci([x.to_row() for x in r.rows], "score", "step", "value", Path(r.out) / "trajectory.png",
                                f"{r.run_name}: EM scores across training (Δbase)", "Δ log-prob (misaligned - aligned)",
                                hline=0.0)]
