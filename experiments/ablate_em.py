"""EM ablation (the Model Organisms table): remove an organism's misalignment direction, its
transferred twin from another organism, and random directions of the same norm; report the
judge-free, style-matched EM score of each, paired by question, with CIs (`lab.causal.ablation`).

    emlab ablate-em --organisms medical=runs/medical/adapter financial=runs/financial/adapter
"""

from __future__ import annotations

from experiments.common import cli, show
from lab.causal.ablation import AblationConfig, AblationResult, ablate_em
from lab.core.io import write_result
from lab.reports.figures import write_figures


def run(cfg: AblationConfig) -> AblationResult:
    result = ablate_em(cfg)
    write_figures(result)
    show(result)
    write_result(result)
    return result


main = cli(AblationConfig, run)


if __name__ == "__main__":
    main()
