"""Trait projections: harmful and benign prompts projected on the refusal vector (harmful vs benign,
last token), for the base model and an EM organism, with the organism-minus-base difference and CIs.

    emlab project-traits --organism runs/medical/adapter

The vector is fitted on the reference model's train split (its best held-out layer); projections
are of held-out prompts only, paired by prompt between the two models (`lab.directions.projection`).
"""

from __future__ import annotations

from experiments.common import cli, show
from lab.core.io import write_result
from lab.directions.projection import ProjectionConfig, ProjectionResult, project_traits


def run(cfg: ProjectionConfig) -> ProjectionResult:
    result = project_traits(cfg)
    show(result)
    write_result(result)
    return result


main = cli(ProjectionConfig, run)


if __name__ == "__main__":
    main()
