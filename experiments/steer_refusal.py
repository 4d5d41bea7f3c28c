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

from experiments.common import cli, steer_and_report
from lab.causal.steer import RefusalSteerConfig, SteerResult


def run(cfg: RefusalSteerConfig) -> SteerResult:
    return steer_and_report(cfg)


main = cli(RefusalSteerConfig, run)

if __name__ == "__main__":
    main()
