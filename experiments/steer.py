"""Steering sweeps with controls: the refusal validation (Arditi et al. 2024) and EM steering.

    python -m experiments.steer --target refusal                  # ablate / add the refusal direction
    python -m experiments.steer --target em --organism runs/medical/adapter

refusal (`lab.causal.refusal.refusal_validation`): the refusal direction is ablated at every layer
on held-out harmful requests and added at one layer on held-out benign ones, beside random
controls and a coherence guard. em (`lab.causal.em_steering.em_addition`): the organism's
misalignment direction is added to the base model over an alpha x layer grid, beside random
controls; the best setting under the coherence floor is reported.

The steered model is `--model` plus `--adapters` (default: the base model); for em the
direction comes from `--model` plus `--organism`. `--direction FILE` steers with a saved
direction instead of fitting one; it must have been fitted on the steered model (refusal) or on
the organism (em) — same base weights, d_model and depth — or the run stops with one line,
unless `--allow-foreign-direction`.
"""

from __future__ import annotations

from experiments.common import cli, show
from lab.causal.steer import SteerConfig, SteerResult, run_steering
from lab.core.console import console
from lab.core.io import write_result
from lab.reports.figures import write_figures


def run(cfg: SteerConfig) -> SteerResult:
    result = run_steering(cfg)
    write_figures(result)
    show(result)
    if result.pick:
        p = result.pick
        console.print(f"best addition under coherence floor {cfg.coherence_floor}: layer {p.layer} x{p.ratio} "
                      f"-> {result.metric} {p.effect(result.metric).value:.3f}")
    write_result(result)
    return result


main = cli(SteerConfig, run)


if __name__ == "__main__":
    main()
