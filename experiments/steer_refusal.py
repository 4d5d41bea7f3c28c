"""`emlab steer-refusal`: the refusal validation (Arditi et al. 2024) with matched random controls.

    emlab steer-refusal                                   # ablate / add the refusal direction
    emlab steer-refusal --select ablation                 # pick the layer by ablation, as the paper does

The refusal direction (`lab.causal.refusal.refusal_validation`) is ablated at every layer on
held-out harmful requests and added at one layer on held-out benign ones, beside random
controls and a coherence guard. The steered model is `--model` plus `--adapters` (default: the
base model). `--direction FILE` steers with a saved direction instead of fitting one; it must
have been fitted on the steered model (same base weights, d_model and depth) or the run stops
with one line, unless `--allow-foreign-direction`.
"""

from __future__ import annotations

from experiments.common import cli, show
from lab.causal.steer import RefusalSteerConfig, SteerResult, run_steering
from lab.core.console import console
from lab.core.io import write_result
from lab.reports.figures import write_figures


def run(cfg: RefusalSteerConfig) -> SteerResult:
    result = run_steering(cfg)
    write_figures(result)
    show(result)
    if result.pick:
        p = result.pick
        console.print(f"best addition under coherence floor {cfg.coherence_floor}: layer {p.layer} x{p.ratio} "
                      f"-> {result.metric} {p.effect(result.metric).value:.3f}")
    write_result(result)
    return result


main = cli(RefusalSteerConfig, run)

if __name__ == "__main__":
    main()
