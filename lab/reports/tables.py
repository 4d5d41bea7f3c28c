"""Display cells of typed results: the one place a result row becomes strings.

Each result row type has one rendering, `cells(row) -> {column: text}`, used by the console
tables of the verbs and by the HTML report alike; `tables(result) -> [(title, rows)]` gives a
whole result's tables. Numbers stay numbers everywhere else (`lab.stats.Estimate`).
"""

from __future__ import annotations

from functools import singledispatch
from typing import Any

from lab.causal.ablation import AblationResult, AblationRow
from lab.causal.steer import LayerSelection, SteerResult, SteerRow
from lab.diffing.checkpoints import CheckpointScore, TrajectoryResult
from lab.directions.pooling import PoolingBest, PoolingResult
from lab.directions.projection import ProjectionResult, ProjectionRow
from lab.directions.sweep import BestLayer, RandomBaseline, SweepResult
from lab.directions.transfer import TransferPair, TransferResult

Rows = list[dict[str, Any]]


@singledispatch
def cells(row: Any) -> dict[str, Any]:
    raise TypeError(f"no table cells for {type(row).__name__}")


@cells.register
def _(b: BestLayer) -> dict[str, Any]:
    return {"method": b.method, "best layer": b.layer, "AUROC [95% CI]": str(b.auroc), "acc": f"{b.acc:.3f}",
            "sep (SD)": f"{b.sep_sd:.2f}",
            "random @ layer": f"{b.random_at_layer:.3f}" if b.random_at_layer is not None else "",
            "n train/test": f"{b.n_train}/{b.n_test}"}


@cells.register
def _(r: RandomBaseline) -> dict[str, Any]:
    return {"method": "random", "best layer": "mean of all",
            "AUROC [95% CI]": f"{r.mean:.3f} (range {r.low:.2f}-{r.high:.2f})"}


@cells.register
def _(p: PoolingBest) -> dict[str, Any]:
    if p.best is None:
        return {"pooling": p.pooling, "method": p.method, "best layer": "-",
                "AUROC [95% CI]": "n/a: classes have identical features here", "mean AUROC over layers": "n/a"}
    return {"pooling": p.pooling, "method": p.method, "best layer": p.best.layer, "AUROC [95% CI]": str(p.best.auroc),
            "mean AUROC over layers": f"{p.mean_auroc:.3f}"}


@cells.register
def _(t: TransferPair) -> dict[str, Any]:
    return {"direction from": t.source, "scored on": t.target, "best layer": t.best.layer,
            "AUROC [95% CI]": str(t.best.auroc), "random @ layer": f"{t.best.random_at_layer:.3f}",
            "cosine (median over layers)": f"{t.median_cosine:.3f}"}


@cells.register
def _(r: ProjectionRow) -> dict[str, Any]:
    return {"prompts": r.prompts, "model": r.model, "n": r.mean.n, "mean projection [95% CI]": r.mean.format(2)}


@cells.register
def _(r: SteerRow) -> dict[str, Any]:
    row = {"experiment": r.experiment, "condition": r.condition, "layer": r.layer, "ratio": r.ratio}
    if r.refusal is not None:
        row.update({"refusal rate": str(r.refusal), "log-odds Δ": r.logodds_shift.format(2)})
    if r.em_shift is not None:
        row["EM score Δ"] = str(r.em_shift)
    row["coherence Δ"] = r.coherence.format(2)
    if r.judged_em is not None:
        row.update({"judged EM": str(r.judged_em),
                    "judged coherent": "n/a" if r.judged_coherent is None else f"{r.judged_coherent:.0f}"})
    return row


@cells.register
def _(r: LayerSelection) -> dict[str, Any]:
    return {"layer": r.layer, "log-odds Δ": f"{r.logodds_shift:+.3f}", "coherence Δ": f"{r.coherence:+.3f}"}


@cells.register
def _(r: AblationRow) -> dict[str, Any]:
    return {"organism": r.organism, "score": r.score, "condition": r.condition,
            "EM score Δbase [95% CI]": str(r.em_dbase), "change vs unsteered": str(r.change),
            "reduction": f"{r.reduction:.0%}" if r.reduction is not None else "n/a (no EM to remove)"}


@cells.register
def _(r: CheckpointScore) -> dict[str, Any]:
    return {"step": r.step, "score": r.score, "Δbase [95% CI]": str(r.delta)}


def best_layer_rows(methods, best: list[BestLayer], random: RandomBaseline | None) -> Rows:
    """A fit's best-layer table in the order of its methods (the random baseline where "random" is)."""
    by_method = {b.method: b for b in best}
    return [cells(random) if m == "random" else cells(by_method[m]) for m in methods if m != "random" or random]


@singledispatch
def tables(result: Any) -> list[tuple[str, Rows]]:
    """A typed result's tables, (title, rows) each; [] for a result that has none."""
    return []


@tables.register
def _(r: SweepResult) -> list[tuple[str, Rows]]:
    return [(f"layer sweep: {r.contrast} on {r.model}", best_layer_rows(r.config.methods, r.best, r.random))]


@tables.register
def _(r: PoolingResult) -> list[tuple[str, Rows]]:
    return [(f"pooling comparison: {r.contrast}", [cells(p) for p in r.best])]


@tables.register
def _(r: TransferResult) -> list[tuple[str, Rows]]:
    return [(f"direction transfer: {r.contrast} ({r.config.method})", [cells(p) for p in r.pairs])]


@tables.register
def _(r: ProjectionResult) -> list[tuple[str, Rows]]:
    return [(f"{r.contrast} vector ({r.method}, layer {r.layer}): held-out mean projections", [cells(x) for x in r.rows])]


@tables.register
def _(r: SteerResult) -> list[tuple[str, Rows]]:
    out = []
    if r.selection:
        out.append((f"refusal direction selection on {r.config.select_prompts} train prompts (ablation at every layer)",
                    [cells(x) for x in r.selection]))
    return out + [(f"steering ({r.target}); direction's best layer {r.best_layer}", [cells(x) for x in r.rows])]


@tables.register
def _(r: AblationResult) -> list[tuple[str, Rows]]:
    c = r.config
    return [(f"EM ablation (judge-free, style-matched; {c.method} on {c.contrast}, {c.pooling}, layers {c.layers}, "
             f"{c.ablation} ablation, positions {c.positions})", [cells(x) for x in r.rows])]


@tables.register
def _(r: TrajectoryResult) -> list[tuple[str, Rows]]:
    return [(f"EM trajectory: {r.run_name}", [cells(x) for x in r.rows])]
