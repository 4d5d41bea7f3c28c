"""Layer sweep: every layer x every direction method on one contrast, held-out metrics with CIs.

    emlab sweep-layers --contrast refusal
    emlab sweep-layers --contrast medical_answers --adapters runs/medical/adapter

Writes under `<out>/layer_sweep/<contrast>-<pooling>/`: rows.json / .csv, one direction file per
method, auroc_by_layer.png and summary.json (`lab.directions.sweep.SweepResult`).
"""

from __future__ import annotations

from experiments.common import cli, show
from lab.core.console import console
from lab.core.io import write_result
from lab.directions.sweep import SweepConfig, SweepResult, sweep_layers
from lab.reports.figures import write_figures


def run(cfg: SweepConfig) -> SweepResult:
    result = sweep_layers(cfg)
    write_figures(result)
    show(result)
    if result.sklearn_max_diff is not None:
        console.print(f"probe vs sklearn, max |AUROC diff| over layers: {result.sklearn_max_diff:.4f}")
    write_result(result)
    return result


main = cli(SweepConfig, run)


if __name__ == "__main__":
    main()
