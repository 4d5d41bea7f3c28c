"""`emlab steer-em`: an organism's misalignment direction added to its base model, beside random controls.

    emlab steer-em --organism runs/medical/adapter
    emlab steer-em --organism runs/medical/adapter --judge-base-url http://127.0.0.1:8765/v1   # judged EM per cell

EM steering (`lab.causal.em_steering.em_addition`): the organism's misalignment direction
(difference of means, misaligned vs aligned answers, fitted on `--model` plus `--organism`) is
added to `--model` plus `--adapters` over a strength x layer grid, beside random controls of the
same norm and a coherence guard; the best setting under the coherence floor is reported.
`--direction FILE` steers with a saved direction, which must have been fitted on the organism
(same base weights, d_model and depth), unless `--allow-foreign-direction`.
"""

from __future__ import annotations

from experiments.common import cli, steer_and_report
from lab.causal.steer import EmSteerConfig, SteerResult


def run(cfg: EmSteerConfig) -> SteerResult:
    return steer_and_report(cfg)


main = cli(EmSteerConfig, run)

if __name__ == "__main__":
    main()
